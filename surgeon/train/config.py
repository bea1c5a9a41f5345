"""Typed settings of the shared training recipe (healing and Sorted Fine-Tuning use both)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UsageError

METHODS = ("lora", "full")
QUANTS = ("nf4", "none")


@dataclass(frozen=True)
class ModelSetup:
    """How the model is made trainable.

    ``method="lora"`` freezes the base and adds LoRA adapters (alpha defaults to the rank, the
    paper's choice) on ``target_modules`` (default: the family's FFN projections); ``"full"``
    trains every weight. ``quant="nf4"`` loads the frozen base in 4-bit NF4 (QLoRA).
    """

    method: str = "lora"
    quant: str = "nf4"
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    gradient_checkpointing: bool = False
    seed: int = 0  # LoRA's initialization (surgeon.train.model.lora_init_value)

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"unknown --method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.quant not in QUANTS:
            raise UsageError(f"unknown --quant {self.quant!r}", f"use one of {', '.join(QUANTS)}")
        if self.method == "full" and self.quant != "none":
            raise UsageError("--method full cannot train 4-bit weights",
                             "drop --quant nf4 (full fine-tuning trains the float weights), or use --method lora")
        if self.method == "lora" and self.rank < 1:
            raise UsageError(f"--rank must be at least 1 (got {self.rank})", "the paper used ranks 2-64; the default is 8")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1) (got {self.dropout})", "the paper used 0.05")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)


@dataclass(frozen=True)
class TrainConfig:
    """The optimization loop: AdamW, warm-up + cosine, gradient accumulation, checkpoints.

    One optimizer step sees ``batch_size * grad_accum * num_processes`` sequences.
    """

    steps: int = 1000
    lr: float = 3e-4
    warmup: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # the HF Trainer default the paper ran with
    save_every: int = 0  # 0: no intermediate checkpoints

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1 (got {v})",
                                 f"give a positive --{name.replace('_', '-')}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive (got {self.lr})", "the paper's peak LR is 3e-4")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0 (got {self.warmup})", "use e.g. --warmup 100")
        if self.save_every < 0:
            raise UsageError(f"--save-every must be >= 0 (got {self.save_every})", "0 disables checkpoints")

    def to_dict(self) -> dict:
        return asdict(self)

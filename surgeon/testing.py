"""Tiny, deterministic checkpoints of several families, and the helpers tests share.

``make_tiny_checkpoint("llama", path)`` writes a complete Hugging Face folder (config, safetensors,
a small byte-level BPE tokenizer with a chat template) built offline in well under a second.
:func:`load_model`, :func:`logits`, :func:`copy_checkpoint`, :func:`edit_config` and
:func:`tree_digest` are the ground-truth helpers the tests compare surgeon's outputs with;
:func:`write_gguf` converts a checkpoint into a GGUF file (as llama.cpp lays it out) for import-gguf;
:func:`run_cli` runs the command line in-process; :func:`options_from_command_line` parses a
``surgeon ...`` line into the options objects the CLI builds; :func:`reference_reader` loads the
format's standard-library reference reader. (``tests/conftest.py`` holds only fixtures.)
"""

from __future__ import annotations

from pathlib import Path

TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")

_CORPUS_WORDS = (
    "the of and to in is was for on that with as by it at from his an were are which this be or "
    "had not but first one their its new after who they have has her she two been other when there "
    "all during into school time may years more most only over city some world would where later up "
    "such used many can state about national out known university united then made river music "
    "between team war since while under three season film both these government also through game "
    "model layer prune heal sorted exit token budget residual stream angular distance"
).split()

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def corpus(n_sentences: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English sentences (for tokenizers and tiny training runs)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n_sentences):
        words = [rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(6, 18))]
        out.append(" ".join(words).capitalize() + ".")
    return out


def make_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on :func:`corpus` (deterministic, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(family: str, num_layers: int = 6, vocab_size: int = 512, **overrides):
    """A small config of ``family`` (GQA: 4 query heads over 2 KV heads, head_dim 16)."""
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.05,
        tie_word_embeddings=False,
    )
    extra: dict = {}
    if family == "qwen2":
        # Sliding window on the deeper half: exercises layer_types and max_window_layers.
        extra = dict(use_sliding_window=True, sliding_window=16, max_window_layers=num_layers // 2)
    elif family == "qwen3":
        extra = dict(tie_word_embeddings=True)
    elif family == "mistral":
        extra = dict(sliding_window=32)
    elif family == "gemma2":
        extra = dict(sliding_window=16, query_pre_attn_scalar=16, tie_word_embeddings=True)
    elif family == "gemma3_text":
        types = ["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(num_layers)]
        extra = dict(sliding_window=16, query_pre_attn_scalar=16, layer_types=types, tie_word_embeddings=True)
    elif family == "phi3":
        extra = dict(original_max_position_embeddings=512)
        common.pop("head_dim")
    elif family != "llama":
        raise ValueError(f"no tiny config for {family!r}; choose from {TINY_FAMILIES}")
    common.update(extra)
    common.update(overrides)
    return AutoConfig.for_model(family, **common)


def make_tiny_checkpoint(
    family: str,
    path: str | Path,
    num_layers: int = 6,
    seed: int = 0,
    dtype: str = "float32",
    max_shard_size: str | int | None = None,
    **overrides,
) -> Path:
    """Write a tiny random ``family`` checkpoint (deterministic for a given seed) to ``path``."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tok = make_tiny_tokenizer()
    cfg = tiny_config(family, num_layers=num_layers, vocab_size=len(tok), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    tok.save_pretrained(path)
    return path


GGUF_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}  # model_type -> GGUF


def write_gguf(checkpoint, path, qtype: str = "Q8_0", *, name: str = "tiny") -> Path:
    """Convert a Llama / Mistral / Qwen2 / Qwen3 checkpoint folder into a GGUF file laid out as llama.cpp's
    converter lays it out (tensor names, Llama's q/k row permutation, metadata, byte-level BPE tokenizer),
    one tensor at a time: 2-D weights in ``qtype`` (a type gguf-py quantizes: F16, BF16, Q8_0, Q4_0,
    Q4_1, Q5_0, Q5_1; F16 where the rows do not fill its blocks), the rest in F32. Returns ``path``."""
    import gguf
    import numpy as np

    from .io.checkpoint import Checkpoint

    ckpt = Checkpoint.open(checkpoint)
    cfg = ckpt.config
    arch = GGUF_ARCHS[cfg["model_type"]]
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     cfg["num_hidden_layers"])

    def stored(shape: tuple[int, ...]) -> gguf.GGMLQuantizationType:
        if len(shape) < 2:
            return gguf.GGMLQuantizationType.F32
        want = gguf.GGMLQuantizationType[qtype]
        return want if shape[-1] % gguf.GGML_QUANT_SIZES[want][0] == 0 else gguf.GGMLQuantizationType.F16

    def encoded(hf_name: str, qt: gguf.GGMLQuantizationType) -> np.ndarray:
        t = ckpt.get_tensor(hf_name)
        if arch == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):  # llama.cpp's permute()
            n = heads if ".q_proj." in hf_name else kv_heads
            t = t.reshape(n, 2, t.shape[0] // n // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
        if qt in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            return t.float().numpy().astype(np.float32 if qt == gguf.GGMLQuantizationType.F32 else np.float16)
        out = np.empty(gguf.quant_shape_to_byte_shape(t.shape, qt), dtype=np.uint8)
        step = max(1, (1 << 22) // t.shape[-1])  # quantized a block of rows at a time
        for r in range(0, t.shape[0], step):
            out[r:r + step] = gguf.quants.quantize(t[r:r + step].float().numpy(), qt)
        return out

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    w.add_vocab_size(cfg["vocab_size"])
    _add_gguf_tokenizer(w, ckpt.path, pre="qwen2" if arch.startswith("qwen") else "default")
    plan = []
    for hf_name, info in ckpt.tensors.items():
        qt = stored(tuple(info.shape))
        plan.append((hf_name, qt))
        block, size = gguf.GGML_QUANT_SIZES[qt]
        w.add_tensor_info(names.get_name(hf_name, try_suffixes=(".weight", ".bias")), info.shape,
                          np.dtype(np.float32), info.numel * size // block, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for hf_name, qt in plan:  # one tensor in memory at a time
        w.write_tensor_data(encoded(hf_name, qt))
    w.close()
    return Path(path)


def _add_gguf_tokenizer(w, folder: Path, pre: str) -> None:
    """The folder's byte-level BPE tokenizer (tokenizer.json) as GGUF ``gpt2`` tokenizer metadata."""
    import json

    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = dict(data["model"]["vocab"])
    special = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    vocab.update(special)
    tokens = [""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special.values() else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                     ("pad_token", w.add_pad_token_id)):
        if tok_cfg.get(key) in vocab:
            add(vocab[tok_cfg[key]])
    template = tok_cfg.get("chat_template")
    if template is None and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        w.add_chat_template(template)


# --------------------------------------------------------------------------------------------- helpers
def load_model(path, dtype: str = "fp32"):
    """A checkpoint folder loaded by stock transformers (float32 by default), in eval mode."""
    from transformers import AutoModelForCausalLM

    from .units import torch_dtype

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype)).eval()


def logits(model, ids):
    """``model``'s logits for ``ids`` (a list of token-id lists, or a tensor), without autograd."""
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits


def copy_checkpoint(src, dst) -> Path:
    """A copy of the folder ``src`` at ``dst`` (returned)."""
    import shutil

    shutil.copytree(src, dst)
    return Path(dst)


def edit_config(folder, **changes) -> Path:
    """Update keys of ``folder/config.json`` in place (returns the folder)."""
    import json

    p = Path(folder) / "config.json"
    cfg = json.loads(p.read_text())
    cfg.update(changes)
    p.write_text(json.dumps(cfg))
    return Path(folder)


def tree_digest(folder) -> str:
    """sha256 over every file's relative path and bytes: equal digests = an untouched folder."""
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def load_weights(folder) -> dict:
    """Every tensor of a checkpoint folder, single file or shards (``{name: tensor}``)."""
    from safetensors.torch import load_file

    out: dict = {}
    for p in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(p)))
    return out


def run_cli(*args: str):
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from .cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# the library calls the CLI commands make with the options they built (surgeon/cli/*.py)
CALLS = ["analyze.run", "eval.run", "eval.run_harness", "extract.run", "fix_gguf.run", "generate.run", "heal.run",
         "heal.prune_and_heal", "import_gguf.run", "inspect.run", "manifest.run", "manifest.validate", "manifest.show",
         "prune.run", "soft.run", "sort_width.run", "sweep.run", "view.run", "demo.run"]


class Ran(BaseException):  # not an Exception: the CLI's last-line-of-defence handler lets it through
    def __init__(self, options):
        super().__init__(options)
        self.options = options


def options_from_command_line(line: str, monkeypatch) -> tuple:
    """The options objects the CLI builds from the ``surgeon ...`` command ``line`` and passes to the
    library (every library call a command makes is patched with ``monkeypatch`` to capture them)."""
    import importlib
    import shlex

    import pytest

    from .cli import main

    def capture(*args, **kwargs):
        raise Ran(tuple(a for a in [*args, *kwargs.values()] if type(a).__module__.startswith("surgeon.commands.")))

    for call in CALLS:
        module, attr = call.split(".")
        monkeypatch.setattr(importlib.import_module(f"surgeon.commands.{module}"), attr, capture)
    monkeypatch.setattr("surgeon.commands.demo.ensure_demo_model", lambda: Path("unused"))
    words = shlex.split(line)
    assert words[0] == "surgeon"
    with pytest.raises(Ran) as ran:
        main.main(words[1:], prog_name="surgeon", standalone_mode=False)
    return ran.value.options


def reference_reader():
    """``formats/sorted-manifest/reference_reader.py`` (the spec's standard-library reader), as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "formats" / "sorted-manifest" / "reference_reader.py"
    spec = importlib.util.spec_from_file_location("reference_reader", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

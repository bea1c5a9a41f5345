"""lm-evaluation-harness tasks on each exit of a checkpoint (for ``surgeon eval --tasks``).

The harness is optional: it is imported only here, and a missing package or missing task data
(no hub access) is a :class:`~surgeon.errors.DataError` that says how to get them. Each exit is
evaluated by handing the harness the *same* loaded model with its layer list swapped for the exit's
(:meth:`SortedModel.as_exit`), so no sub-model is copied or written to disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import DataError, UsageError

log = logging.getLogger(__name__)

INSTALL_HINT = ("install it with `pip install lm-eval` and make the task data reachable (Hugging Face hub access, "
                "or a filled HF_DATASETS_CACHE with HF_DATASETS_OFFLINE=1)")


def _import_harness():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise DataError("lm-evaluation-harness (lm_eval) is not installed", INSTALL_HINT) from None
    return lm_eval, HFLM


def run_tasks(path: str | Path, exits: list, tasks: list[str] | str, limit: int | None = None,
              batch_size: int = 1, dtype: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Run harness ``tasks`` on each exit of ``path``; returns ``{"exits": {exit: harness results}, ...}``.

    ``exits``: layer counts, manifest names, exit specs, or None for the full model. ``limit``: examples per task
    (None = all). Raises DataError when lm_eval or a task's data is unavailable.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise UsageError("no tasks given", "name lm-evaluation-harness tasks, e.g. --tasks hellaswag,arc_easy")
    lm_eval, HFLM = _import_harness()
    from ..runtime.sorted_model import SortedModel

    sm = SortedModel.from_pretrained(path, dtype=dtype, device=device, require_tokenizer=True)
    for e in exits:  # resolve every exit before the first (slow) run
        sm.layers_of(e)
    out: dict[str, Any] = {}
    for e in exits:
        key = "full" if e is None else str(getattr(e, "name", None) or getattr(e, "depth", None) or e)
        with sm.as_exit(e) as model:
            lm = HFLM(pretrained=model, tokenizer=sm.tokenizer, batch_size=batch_size)
            try:
                res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit)
            except (ConnectionError, FileNotFoundError, OSError) as err:
                raise DataError(f"task data for {','.join(tasks)} is unavailable ({err.__class__.__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''})", INSTALL_HINT) from None
            except Exception as err:  # noqa: BLE001 - the harness wraps hub errors in many types
                if any(w in str(err).lower() for w in ("offline", "connection", "hub", "not found", "couldn't reach")):
                    raise DataError(f"task data for {','.join(tasks)} is unavailable: {str(err).splitlines()[0]}",
                                    INSTALL_HINT) from None
                raise
        out[key] = res.get("results", res) if isinstance(res, dict) else res
        log.info("exit %s: %s", key, out[key])
    return {"model": str(path), "tasks": list(tasks), "limit": limit, "exits": out}

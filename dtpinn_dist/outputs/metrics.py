"""Run outputs: the ``metrics.json`` of a training run (settings, counters, history)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..atomic import atomic_write
from .rundir import OutputExistsError, default_out_dir

__all__ = ["OutputExistsError", "default_out_dir", "prepare_out_dir", "write_metrics",
           "read_metrics", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("settings", "ranks", "steps", "evals", "train_time_s", "eval_time_s",
                 "final_rel_l2", "best_rel_l2", "history")


def prepare_out_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``out``; refuse when it already holds metrics.json unless ``overwrite``."""
    out = Path(out)
    if (out / "metrics.json").exists() and not overwrite:
        raise OutputExistsError(f"{out / 'metrics.json'} already exists; choose another --out or "
                                "pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _clean(obj):
    """JSON-safe copy: NaN/inf -> None, numpy/torch scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: str | os.PathLike, doc: dict, what: str = "metrics") -> Path:
    """``doc`` as JSON (NaN/inf -> null, numpy/torch scalars -> numbers), written atomically."""
    text = json.dumps(_clean(doc), indent=1)
    with atomic_write(path, "w", what=what) as fh:
        fh.write(text)
    return Path(path)


def write_metrics(out: str | os.PathLike, settings: dict, result, ranks: int = 1,
                  overwrite: bool = False) -> Path:
    """Write ``out/metrics.json`` from a :class:`~dtpinn_dist.train.trainer.TrainResult`.

    Written atomically (:func:`~dtpinn_dist.atomic.atomic_write`: temp file, fsync, rename) so
    a crash or a full disk never leaves a half file, nor a ``*.tmp``.
    """
    path = prepare_out_dir(out, overwrite=overwrite) / "metrics.json"
    doc = {"settings": settings, "ranks": int(ranks), **result.summary(),
           "history": result.history}
    return write_json(path, doc)


def read_metrics(path: str | os.PathLike) -> dict:
    """Load a metrics.json (a directory or the file) and check the required keys."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    with open(p) as fh:
        doc = json.load(fh)
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ValueError(f"{p} lacks keys {missing}")
    return doc

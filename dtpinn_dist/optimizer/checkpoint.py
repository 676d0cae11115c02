"""Checkpoint files of a training run: what they hold, how they are written and read.

A checkpoint is one ``torch.save`` file of plain data (tensors, lists, dicts, numbers, strings;
no pickled objects), read back with ``torch.load(..., weights_only=True)`` only, so opening a
checkpoint never runs code::

    {"format": "dtpinn_dist checkpoint", "version": 1,
     "state": Trainer.state_dict(),      # network, optimizer state (L-BFGS history, LM damping),
                                         # RNG, counters, schedule phase, restore point, history,
                                         # and the run's fingerprint
     "meta": {...}}                      # the caller's own data (the CLI: its argument list)

The **fingerprint** names what the run trains on: the problem's declaration, a hash of the
cloud's training nodes, RBF-FD order, method, dtype, rank count and the network's shape. A
checkpoint whose fingerprint differs from the run it is loaded into is refused with one message
naming every difference (:func:`compare`): continuing on other data would not be the same run,
and a different rank count changes the order of the reductions.

Writing is atomic (:func:`dtpinn_dist.atomic.atomic_write`: a temporary file beside it, flushed to
disk, then renamed over the old checkpoint): a run killed while writing keeps its previous
checkpoint, and a failed write (full disk) leaves no temporary file. Under MPI rank 0 writes (all ranks hold
the same state: they are in lockstep) and every rank learns whether it worked; rank 0 reads and
broadcasts, so ranks need no shared filesystem and never disagree.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch

from ..atomic import OutputError, atomic_write
from ..resources import one_line

__all__ = ["CHECKPOINT_FILE", "FORMAT", "VERSION", "CheckpointError", "CheckpointMismatch",
           "checkpoint_file", "fingerprint", "compare", "save", "load", "read", "check_state",
           "check_shapes"]

FORMAT = "dtpinn_dist checkpoint"
VERSION = 1
#: A checkpoint's file name inside a run folder.
CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written (missing, damaged, not a checkpoint, disk full)."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint is from a different run (problem, cloud, rank count, network, ...)."""


def checkpoint_file(path) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` when ``path`` is a directory (a run folder)."""
    p = Path(path)
    return p / CHECKPOINT_FILE if p.is_dir() else p


def _plain(obj):
    """JSON-shaped copy (tuples -> lists, odd objects -> str): compares the same when saved and
    when recomputed, and loads with ``weights_only=True``."""
    return json.loads(json.dumps(obj, default=str))


def fingerprint(disc, model) -> dict:
    """What a run trains on, as plain data (see module docstring).

    Parameters
    ----------
    disc : Discretization
    model : torch.nn.Module
    """
    info = disc.info
    config = model.config() if callable(getattr(model, "config", None)) else {}
    network = {"type": type(model).__name__, **config,
               "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}
    return _plain({
        "problem": disc.problem.describe(),
        "cloud": {"hash": info.get("cloud_hash"), "n_interior": info.get("n_interior"),
                  "n_boundary": info.get("n_boundary")},
        "ranks": disc.comm.size, "order": disc.order, "method": disc.method,
        "dtype": info.get("dtype"), "network": network})


_WHAT = {"problem": "problem", "cloud": "point cloud", "ranks": "rank count",
         "order": "RBF-FD order", "method": "method", "dtype": "dtype", "network": "network"}


def compare(saved: dict, now: dict) -> list[str]:
    """The differences between two fingerprints, each as ``"what: A in the checkpoint, B now"``
    (empty when they match)."""
    out = []
    for key, what in _WHAT.items():
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if key == "cloud":
            def size(c):
                c = c or {}
                return (f"{c.get('n_interior')}+{c.get('n_boundary')} nodes, hash "
                        f"{c.get('hash')}")
            out.append(f"{what}: {size(a)} in the checkpoint, {size(b)} now")
        elif isinstance(a, dict) and isinstance(b, dict):
            keys = [k for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)]
            if key == "network" and len(keys) > 1:
                keys.remove("shapes")  # width, depth, ... already say it
            for k in keys:
                if k == "shapes":
                    out.append(f"{what}: parameter shapes differ")
                else:
                    out.append(f"{what} {k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now")
        else:
            out.append(f"{what}: {a!r} in the checkpoint, {b!r} now")
    return out


def _int(v, lo=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _real(v, finite=True):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    return ok and (not finite or (v == v and abs(v) != float("inf")))


#: The fields of Trainer.state_dict() a checkpoint must hold: name -> (test, what it must be).
_FIELDS = {
    "model": (lambda v: isinstance(v, dict) and all(isinstance(t, torch.Tensor)
                                                    for t in v.values()), "a dict of tensors"),
    "optimizer": (lambda v: isinstance(v, dict), "a dict"),
    "optimizer_name": (lambda v: isinstance(v, str), "a string"),
    "optimizer_phase": (_int, "an integer >= 0"), "phase": (_int, "an integer >= 0"),
    "phase_start": (_int, "an integer >= 0"), "step": (_int, "an integer >= 0"),
    "evals": (_int, "an integer >= 0"),
    "train_time_s": (lambda v: _real(v) and v >= 0, "a finite number >= 0"),
    "eval_time_s": (lambda v: _real(v) and v >= 0, "a finite number >= 0"),
    "last_loss": (lambda v: _real(v, finite=False), "a number"),
    "restore_point": (lambda v: v is None or (isinstance(v, dict) and isinstance(
        v.get("params"), torch.Tensor) and isinstance(v.get("where"), (dict, type(None)))),
                      "None or {params: tensor, where: dict or None}"),
    "rng": (lambda v: isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor)
            and v["torch"].dtype == torch.uint8
            and v["torch"].shape == torch.get_rng_state().shape, "{torch: torch's RNG state}"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v),
                "a list of dicts"),
    "fingerprint": (lambda v: isinstance(v, dict), "a dict"),
}


#: Fields an older state may lack (Trainer.load_state_dict has a default for each).
_OPTIONAL = {"fingerprint", "rng", "restore_point", "last_loss", "optimizer_phase", "phase_start",
             "optimizer_name"}


def _bad(source, field, what, v):
    shown = f"shape {list(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)[:60]
    raise CheckpointError(f"{source} is damaged or not from this program: {field} is {shown}, "
                          f"but must be {what}; resume from another checkpoint or start a new "
                          "run")


def check_state(state, source: str = "the checkpoint") -> None:
    """Every field of a checkpoint's state (:data:`_FIELDS`) has the type and range it must,
    else one :class:`CheckpointError` line naming the field. Run on what :func:`read` returns,
    before anything is loaded from it (then :func:`check_shapes`)."""
    def bad(field, what, v):
        _bad(source, field, what, v)

    if not isinstance(state, dict):
        bad("the state", "a dict", state)
    for field, (ok, what) in _FIELDS.items():
        if field not in state and field in _OPTIONAL:  # older states: load_state_dict's default
            continue
        v = state.get(field)
        if field not in state or not ok(v):
            bad(field, what, v)
    if state.get("phase_start", 0) > state["step"]:
        bad("phase_start", f"at most step ({state['step']})", state["phase_start"])


def check_shapes(state, model, source: str = "the checkpoint") -> None:
    """The tensors of a checked state (:func:`check_state`) fit ``model``: the network's shapes,
    and the restore point and the L-BFGS / Adam vectors its parameter count; else one
    :class:`CheckpointError` line naming the tensor."""
    def bad(field, what, v):
        _bad(source, field, what, v)

    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    for k, t in state["model"].items():
        if shapes.get(k) != tuple(t.shape):
            bad(f"model[{k!r}]", f"of shape {list(shapes.get(k, ()))} (this run's network)", t)
    if set(state["model"]) != set(shapes):
        bad("model", f"the tensors {sorted(shapes)}", sorted(state["model"]))
    n = sum(t.numel() for t in model.parameters())
    rp = state["restore_point"]
    if rp is not None and rp["params"].shape != (n,):
        bad("restore_point params", f"a vector of the network's {n} parameters", rp["params"])
    params = list(model.parameters())
    for i, st in (state["optimizer"].get("state") or {}).items():
        for key, v in (st.items() if isinstance(st, dict) else ()):
            vecs = v if isinstance(v, list) else [v]
            for t in vecs:
                if not isinstance(t, torch.Tensor) or t.numel() <= 1:
                    continue
                want = (n,) if key in ("d", "prev_flat_grad", "old_dirs", "old_stps") else (
                    tuple(params[i].shape) if key in ("exp_avg", "exp_avg_sq")
                    and isinstance(i, int) and i < len(params) else None)
                if want is not None and tuple(t.shape) != want:
                    bad(f"optimizer state {key}", f"of shape {list(want)}", t)


def save(path, state: dict, comm, meta: dict | None = None) -> Path:
    """Write a checkpoint atomically (rank 0 writes; collective: every rank returns or raises).

    Parameters
    ----------
    path : path-like
        The file (or a run folder: ``path/checkpoint.pt``).
    state : dict
        :meth:`~dtpinn_dist.optimizer.trainer.Trainer.state_dict`.
    comm : SerialComm or MPIComm
    meta : dict, optional
        Plain data of the caller's, returned by :func:`load` as ``doc["meta"]``.

    Raises
    ------
    CheckpointError
        On every rank, when rank 0 cannot write (the message names the file and the reason).
    """
    path = checkpoint_file(path)
    err = None
    if comm.rank == 0:
        doc = {"format": FORMAT, "version": VERSION, "state": state, "meta": _plain(meta or {})}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "wb", what="checkpoint") as fh:
                torch.save(doc, fh)
        except OSError as exc:  # the folder cannot be made
            err = f"cannot write checkpoint {path}: {exc.strerror or exc}"
        except OutputError as exc:  # atomic_write's one line: the file, the cause, the fix
            err = str(exc)
    err = comm.bcast(err)
    if err:
        raise CheckpointError(err)
    return path


def read(path, mmap: bool = False) -> dict:
    """Read a checkpoint file in this process (``weights_only=True``); ``mmap``: map its tensors
    instead of reading them (cheap when only ``meta`` is wanted). :class:`CheckpointError` when
    it is missing, damaged or not a checkpoint. :func:`load` is the collective form."""
    path = checkpoint_file(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path} (nothing to resume): give the run folder "
                              f"of a run that wrote one, or its {CHECKPOINT_FILE}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file, so not a checkpoint")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError,
            zipfile.BadZipFile) as exc:
        why = one_line(exc)
        raise CheckpointError(f"cannot read checkpoint {path}: it is damaged or not a checkpoint "
                              f"({why})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise CheckpointError(f"{path} is not a dtpinn_dist checkpoint")
    if int(doc.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} is a version {doc.get('version')} checkpoint; this "
                              f"dtpinn_dist reads version {VERSION} and older: upgrade it")
    return doc


def load(path, comm) -> dict:
    """Read a checkpoint (rank 0 reads with ``weights_only=True``, every rank gets its data).

    Collective. Returns ``{"format", "version", "state", "meta"}``; raises
    :class:`CheckpointError` on every rank when the file is missing, damaged or not a
    checkpoint.
    """
    path = checkpoint_file(path)
    doc = err = None
    if comm.rank == 0:
        try:
            doc = read(path)
        except CheckpointError as exc:
            err = str(exc)
    if comm.size > 1:
        doc, err = comm.bcast((doc, err))
    if err:
        raise CheckpointError(err)
    return doc

"""The trained network on disk: ``model.pt`` (the ``state_dict``, plain tensors) and
``model.json`` (the architecture and what the inputs mean), read back without unpickling code.

``model.pt`` is read with ``torch.load(..., weights_only=True)`` (tensors and plain containers
only); ``model.json`` is plain JSON. Together they rebuild the
:class:`~dtpinn_dist.model.MLP` exactly (same bits), on any machine.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..resources import one_line, regular_file
from ..model.mlp import ACTIVATIONS, MLP

__all__ = ["MODEL_FORMAT", "save_model", "load_model", "model_description", "ModelFileError"]

#: Version tag of model.json (bumped when its meaning changes).
MODEL_FORMAT = "dtpinn-model/1"
#: Beside model.pt when the run imposed Dirichlet conditions exactly (problem.lift)
LIFT_FILE = "lift.npz"


class ModelFileError(ValueError):
    """A saved model cannot be read: one line naming the file and the fix."""


def model_description(model, disc=None) -> dict:
    """What model.json holds: the architecture, and (with the discretisation) the input axes,
    the time interval and the problem's declaration."""
    if not hasattr(model, "config"):
        raise ValueError(f"{type(model).__name__} has no config(); only the library's MLP can "
                         "be saved with its architecture")
    doc = {"format": MODEL_FORMAT, "class": type(model).__name__,
           "architecture": model.config()}
    if disc is not None:
        axes = ["x", "y", "z"][:disc.dim]
        doc.update({"dim": int(disc.dim), "time_dependent": bool(disc.time_dependent),
                    "inputs": axes + (["t"] if disc.time_dependent else []),
                    "time": list(disc.problem.time) if disc.time_dependent else None,
                    "method": disc.method, "order": int(disc.order),
                    "problem": disc.problem.describe()})
    return doc


def save_model(folder, model, disc=None) -> tuple[Path, Path]:
    """Write ``folder/model.pt`` and ``folder/model.json`` (each atomically); returns both
    paths."""
    folder = Path(folder)
    doc = model_description(model, disc)
    pt, js = folder / "model.pt", folder / "model.json"
    with atomic_write(pt, "wb", what="model") as fh:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, fh)
    lift = getattr(disc, "lift", None)
    if lift is not None:  # exact Dirichlet conditions: G and phi at the nodes, for predict
        doc["lift"] = {"file": LIFT_FILE, "order": int(lift.order), "n": int(len(lift.G))}
        with atomic_write(folder / LIFT_FILE, "wb", what="exact-condition lifting") as fh:
            np.savez(fh, nodes=lift.nodes, G=lift.G, phi=lift.phi)
    with atomic_write(js, "w", what="model description") as fh:
        json.dump(doc, fh, indent=1)
    return pt, js


def _load_lift(folder: Path, spec, js):
    """The :class:`~dtpinn_dist.problem.lift.Lift` a model.json names (exact Dirichlet
    conditions), checked: plain arrays, matching shapes, finite values."""
    from ..geometry.io import read_npz
    from ..problem.lift import Lift

    if not isinstance(spec, dict) or spec.get("file") != LIFT_FILE or not isinstance(
            spec.get("order"), int) or isinstance(spec.get("order"), bool):
        raise ModelFileError(f"{js}: 'lift' is not a valid table; rewrite the run")
    try:
        _, a = read_npz(folder / LIFT_FILE, "rewrite the run", what="exact-condition lifting")
    except ValueError as exc:
        raise ModelFileError(one_line(exc)) from None
    nodes, G, phi = (a.get(k) for k in ("nodes", "G", "phi"))
    ok = all(isinstance(v, np.ndarray) and v.dtype == np.float64 for v in (nodes, G, phi)) \
        and nodes.ndim == 2 and G.shape == phi.shape == (len(nodes),) \
        and all(bool(np.isfinite(v).all()) for v in (nodes, G, phi))
    if not ok:
        raise ModelFileError(f"{folder / LIFT_FILE} does not hold finite float64 nodes, G and "
                             "phi of matching sizes; the file is damaged")
    return Lift(nodes=nodes, G=G, phi=phi, order=spec["order"])


def _regular(path: Path, what: str) -> Path:
    return regular_file(path, what, "give a run folder written by python -m dtpinn_dist.train",
                        ModelFileError)


def _check_architecture(arch, path) -> dict:
    need = {"in_dim": int, "width": int, "depth": int, "out_dim": int, "activation": str,
            "dtype": str}
    if not isinstance(arch, dict):
        raise ModelFileError(f"{path}: 'architecture' is not a table; rewrite the run")
    for k, t in need.items():
        v = arch.get(k)
        if not isinstance(v, t) or isinstance(v, bool) or (t is int and not 1 <= v <= 100000):
            raise ModelFileError(f"{path}: architecture {k} = {v!r} is not a valid "
                                 f"{t.__name__}; the file is damaged or not from this library")
    if arch["activation"] not in ACTIVATIONS or arch["dtype"] not in ("float64", "float32"):
        raise ModelFileError(f"{path}: unknown activation {arch['activation']!r} or dtype "
                             f"{arch['dtype']!r}")
    return arch


def load_model(folder) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network saved by :func:`save_model`; returns ``(model, description)``.

    Raises
    ------
    ModelFileError
        A missing, damaged or foreign ``model.json`` / ``model.pt`` (one line).
    """
    folder = Path(folder)
    js = _regular(folder / "model.json", "model description")
    pt = _regular(folder / "model.pt", "model file")
    try:
        with open(js, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read {js} as JSON ({str(exc).splitlines()[0]}); the file "
                             "is damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{js} is not a model description of this library (format "
                             f"{doc.get('format') if isinstance(doc, dict) else None!r}, "
                             f"expected {MODEL_FORMAT!r})")
    arch = _check_architecture(doc.get("architecture"), js)
    if os.path.getsize(pt) > 64 * (arch["width"] ** 2 * arch["depth"] + 10 * arch["width"]) \
            + (1 << 20):
        raise ModelFileError(f"{pt} is far larger than a {arch['depth']} x {arch['width']} "
                             "network; the file does not belong to this model.json")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        msg = one_line(exc)
        raise ModelFileError(f"cannot read {pt} ({msg}); the file is damaged or truncated, "
                             "or not a weights-only state_dict") from None
    try:
        model = MLP(arch["in_dim"], arch["width"], arch["depth"], arch["out_dim"],
                    dtype=arch["dtype"], activation=arch["activation"],
                    input_box=arch.get("input_box"))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{js}: {one_line(exc)}; the file is damaged or not from this "
                             "library") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in
                                              state.values()):
        raise ModelFileError(f"{pt} does not hold a state_dict of tensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelFileError(f"{pt} does not match the architecture in {js} ({first})") from None
    if not all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters()):
        raise ModelFileError(f"{pt} holds non-finite weights")
    model.eval()
    if "lift" in doc:
        from ..problem.lift import LiftedNetwork
        model = LiftedNetwork(model, _load_lift(folder, doc["lift"], js))
    return model, doc

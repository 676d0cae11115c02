"""Evaluate a saved run's network at new points: :func:`load_run` and :class:`SavedRun`.

>>> run = load_run("runs/disk")                  # a folder written by python -m dtpinn_dist.train
>>> u = run.predict([[0.1, 0.2], [0.3, -0.4]])   # steady problem: (n, d) points
>>> u = run.predict(points, t=0.5)               # time-dependent: at time t ...
>>> u = run.predict(points_and_times)            # ... or (n, d + 1) with t as the last column

Nothing is unpickled: ``model.pt`` is read with ``torch.load(weights_only=True)``, ``model.json``
as JSON, point files with ``np.load(allow_pickle=False)`` or as CSV text.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..resources import ResourceError, check_memory, npz_declared, one_line, regular_file
from .model_io import ModelFileError, load_model

__all__ = ["load_run", "SavedRun", "read_points", "PointsError"]


class PointsError(ValueError):
    """Points to predict at are unusable: one line naming the file or the shape and the fix."""


class SavedRun:
    """A trained network read back from a run folder.

    Attributes
    ----------
    path : Path
    model : torch.nn.Module
    info : dict
        model.json: ``architecture``, ``dim``, ``time_dependent``, ``inputs``, ``time``,
        ``problem`` (the declaration), ``method``, ``order``.
    """

    def __init__(self, path, model, info):
        self.path, self.model, self.info = Path(path), model, info
        arch = info["architecture"]
        self.time_dependent = bool(info.get("time_dependent", False))
        self.dim = int(info.get("dim", arch["in_dim"] - (1 if self.time_dependent else 0)))
        if self.dim + (1 if self.time_dependent else 0) != arch["in_dim"]:
            raise ModelFileError(f"{self.path / 'model.json'}: dim {self.dim} and "
                                 f"time_dependent {self.time_dependent} do not match the "
                                 f"network's {arch['in_dim']} inputs")
        self.dtype = next(model.parameters()).dtype

    @property
    def inputs(self) -> list[str]:
        return list(self.info.get("inputs") or [])

    def _inputs(self, points, t) -> np.ndarray:
        P = np.asarray(points, dtype=np.float64)
        if P.ndim == 1 and self.dim == 1:
            P = P[:, None]
        if P.ndim != 2:
            raise PointsError(f"points must be an (n, {self.dim}) array, got shape {P.shape}")
        d = self.dim
        if self.time_dependent:
            if t is None:
                if P.shape[1] != d + 1:
                    raise PointsError(
                        f"this model is time-dependent: give points of shape (n, {d}) and a "
                        f"time t (--t), or (n, {d + 1}) with t as the last column; got "
                        f"{P.shape}")
            else:
                if P.shape[1] != d:
                    raise PointsError(f"points must have {d} columns when t is given, got "
                                      f"shape {P.shape}")
                t = float(t)
                if not math.isfinite(t):
                    raise PointsError(f"t = {t} is not a finite time")
                P = np.hstack([P, np.full((len(P), 1), t)])
        else:
            if t is not None:
                raise PointsError("t is for time-dependent models; this one is steady: drop t "
                                  "(--t)")
            if P.shape[1] != d:
                raise PointsError(f"points must have {d} columns for this {d}-D model, got "
                                  f"shape {P.shape}")
        if not np.all(np.isfinite(P)):
            bad = int(np.argwhere(~np.isfinite(P))[0, 0])
            raise PointsError(f"point {bad} is not finite ({P[bad].tolist()}); give finite "
                              "coordinates")
        return P

    def predict(self, points, t=None, batch: int = 65536) -> np.ndarray:
        """The network at ``points`` (at time ``t`` when time-dependent), float64 ``(n,)``."""
        P = self._inputs(points, t)
        out = np.empty(len(P), dtype=np.float64)
        with torch.no_grad():
            for s in range(0, len(P), batch):
                X = torch.as_tensor(P[s:s + batch], dtype=self.dtype)
                out[s:s + batch] = self.model(X).reshape(-1).double().numpy()
        return out

    def __repr__(self):
        a = self.info["architecture"]
        return (f"SavedRun({str(self.path)!r}, {a['depth']}x{a['width']} {a['activation']} "
                f"{a['dtype']}, inputs {self.inputs})")


def load_run(path) -> SavedRun:
    """Read the network of a run folder (``model.pt`` + ``model.json``).

    Raises
    ------
    ModelFileError
        Missing, damaged or foreign files (one line).
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelFileError(f"run folder {p} does not exist or is not a folder; give the --out "
                             "folder of a python -m dtpinn_dist.train run")
    model, info = load_model(p)
    return SavedRun(p, model, info)


def _regular(path: Path) -> Path:
    return regular_file(path, "points file", "give a .npz or .csv file", PointsError)


def read_points(path) -> np.ndarray:
    """Points from ``.npz`` (the array ``points``, or its only array) or ``.csv`` (one point a
    row, comma-separated; a first line of column names is skipped)."""
    import zipfile
    import zlib

    p = _regular(Path(path))
    suf = p.suffix.lower()
    check_memory(4 * os.path.getsize(p), f"reading {p}", fix="use a smaller points file")
    if suf == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                # what the headers declare, before numpy allocates it
                declared = sum(b for _, _, b in npz_declared(z.zip).values())
                check_memory(2 * declared, f"reading {p} (its arrays as declared in the file)",
                             fix="use a smaller points file")
                names = list(z.files)
                key = "points" if "points" in names else (names[0] if len(names) == 1 else None)
                if key is None:
                    raise PointsError(f"{p} holds arrays {names} but none is called 'points'; "
                                      "save the points as np.savez(file, points=P)")
                arr = z[key]
        except (PointsError, ResourceError):
            raise
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            msg = one_line(exc)
            raise PointsError(f"cannot read {p} as .npz ({msg}): the file is truncated, "
                              "corrupt, pickled or not a .npz") from None
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype,
                                                                    np.complexfloating):
            raise PointsError(f"{p}: array {key!r} has dtype {arr.dtype}; store float "
                              "coordinates")
        return np.asarray(arr, dtype=np.float64)
    if suf in (".csv", ".txt"):
        try:
            with open(p, encoding="utf-8") as fh:
                first = fh.readline()
            try:
                [float(v) for v in first.strip().split(",") if v.strip()]
                skip = 0
            except ValueError:
                skip = 1  # a header line of names
            arr = np.loadtxt(p, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            msg = one_line(exc)
            raise PointsError(f"cannot read {p} as CSV ({msg}); write one point per line, "
                              "coordinates separated by commas") from None
        return arr
    raise PointsError(f"unknown points file kind {suf!r} for {p}; use .npz (array 'points') or "
                      ".csv")

"""The trained solution and its pointwise error at the test points (``solution.npz``).

``solution.npz`` (plain arrays, read with ``np.load(path, allow_pickle=False)``):

* ``points`` (n, d) -- the test points (the cloud's test set, else its interior + boundary nodes);
* ``u`` -- the network there: (n,) for a steady problem, (m, n) for a time-dependent one (row k
  is time ``times[k]``);
* ``times`` (m,) -- time slices (time-dependent problems only);
* ``u_exact``, ``error`` (= ``u - u_exact``), ``rel_l2`` (scalar, paper eq. (18) over all
  points and slices) -- only when the problem has an exact solution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..atomic import atomic_write

__all__ = ["SolutionFields", "solution_fields", "write_solution_npz"]


@dataclass
class SolutionFields:
    """The network (and exact solution) at the test points; see the module docstring."""

    points: np.ndarray
    u: np.ndarray
    times: np.ndarray | None = None
    u_exact: np.ndarray | None = None

    @property
    def time_dependent(self) -> bool:
        return self.times is not None

    @property
    def error(self) -> np.ndarray | None:
        return None if self.u_exact is None else self.u - self.u_exact

    @property
    def rel_l2(self) -> float | None:
        """Relative L2 error over all points and slices (paper eq. (18)); None without exact."""
        if self.u_exact is None:
            return None
        den = float(np.sum(self.u_exact ** 2))
        num = float(np.sum(self.error ** 2))
        return math.sqrt(num / den) if den > 0 else math.sqrt(num)

    def slices(self):
        """``(t, u, u_exact)`` per time slice (one slice, ``t = None``, when steady)."""
        if not self.time_dependent:
            yield None, self.u, self.u_exact
            return
        for k, t in enumerate(self.times):
            yield float(t), self.u[k], None if self.u_exact is None else self.u_exact[k]


def solution_fields(model, disc, points=None) -> SolutionFields:
    """The network at ``points`` (default: this rank's test points) for every time slice, and
    the exact solution there when the problem has one. Local: no communication (the model is
    the same on every rank)."""
    P = np.asarray(disc.data["test"] if points is None else points, dtype=np.float64)
    exact = disc.data.get("exact")
    if not disc.time_dependent:
        u = disc.predict(model, P).double().cpu().numpy()
        ue = None if exact is None else np.asarray(exact(P, None), dtype=np.float64)
        return SolutionFields(P, u, None, ue)
    T = np.asarray(disc.times, dtype=np.float64)
    u = np.stack([disc.predict(model, P, float(t)).double().cpu().numpy() for t in T])
    ue = None if exact is None else np.stack([np.asarray(exact(P, float(t)), np.float64)
                                              for t in T])
    return SolutionFields(P, u, T, ue)


def write_solution_npz(path, fields: SolutionFields):
    """Write ``solution.npz`` (atomically; format in the module docstring)."""
    arrays = {"points": fields.points, "u": fields.u}
    if fields.times is not None:
        arrays["times"] = fields.times
    if fields.u_exact is not None:
        arrays.update(u_exact=fields.u_exact, error=fields.error,
                      rel_l2=np.float64(fields.rel_l2))
    with atomic_write(path, "wb", what="solution") as fh:
        np.savez(fh, **arrays)
    return path

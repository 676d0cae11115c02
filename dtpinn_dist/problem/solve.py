"""The classical answer: solve the discrete system itself (no network), by Newton's method.

The DT residual is a function of the nodal values, ``r(U) = [s (F_h(U) - f); s_b (G_h(U) - g)]``
with one row per interior + boundary node and one per boundary node (the ghost nodes close the
count), so ``r(U) = 0`` is a square sparse system. Its solution is what RBF-FD alone gives: the
floor a DT-PINN trained on the same operators can reach (its "discretisation error"), and the
time any PINN has to beat. Newton steps use the declared linearisation
(:meth:`~dtpinn_dist.problem.discrete.Discretization.linearization_matrix`); a linear problem takes
one step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["solve_discrete", "DirectSolution"]


@dataclass
class DirectSolution:
    """Nodal values ``U`` (this rank's nodes, ``disc.data["X"]`` order) and how they were got."""

    U: np.ndarray
    iterations: int
    residual_norm: float
    time_s: float
    rel_l2_nodes: float | None

    def summary(self) -> dict:
        return {"iterations": self.iterations, "residual_norm": self.residual_norm,
                "time_s": self.time_s, "rel_l2_nodes": self.rel_l2_nodes}


def _rel_l2_nodes(disc, U):
    """Relative L2 error at the interior + boundary nodes against the exact solution."""
    if disc.data["exact"] is None:
        return None
    rows = disc.data["rows_idx"].cpu().numpy()
    X = disc.data["X"].cpu().numpy()[rows]
    ue = disc.data["exact"](X, 0.0)
    num = float(((U[rows] - ue) ** 2).sum())
    den = float((ue ** 2).sum())
    s = disc.comm.sum(np.array([num, den]))
    return math.sqrt(s[0] / s[1]) if s[1] > 0 else math.sqrt(s[0])


def solve_discrete(disc, *, tol: float = 1e-12, max_iter: int = 30, U0=None) -> DirectSolution:
    """Newton's method on ``r(U) = 0`` with sparse LU (scipy SuperLU) steps; serial, steady DT.

    Parameters
    ----------
    disc : Discretization
        A steady DT discretisation with the torch backend on one process.
    tol : float
        Stop when ``||r||_2 <= tol * max(1, ||r(U0)||_2)``.
    max_iter : int
    U0 : array, optional
        Starting values (default zeros; a linear problem converges in one step from anywhere).
    """
    import scipy.sparse.linalg as spla

    if not disc.has_structure:
        raise ValueError("the direct solve needs a steady DT discretisation (method 'dt', no "
                         "time dependence)")
    if disc.comm.size > 1:
        raise ValueError("the direct solve runs on one process (torch backend)")
    t0 = time.perf_counter()
    n = len(disc.data["X"])
    U = torch.zeros(n, dtype=torch.float64) if U0 is None else torch.as_tensor(
        np.asarray(U0, dtype=np.float64)).clone()
    with torch.no_grad():
        r = disc.values_residual(U).double()
    r0 = max(1.0, float(torch.linalg.vector_norm(r)))
    it = 0
    rn = float(torch.linalg.vector_norm(r))
    while rn > tol * r0 and it < max_iter:
        J = disc.linearization_matrix(U)
        if J is None or J.shape[0] != J.shape[1]:
            raise ValueError(f"the discrete system is not square ({None if J is None else J.shape})"
                             "; the direct solve needs one ghost node per boundary node")
        dU = torch.from_numpy(spla.splu(J.tocsc()).solve(-r.numpy()))
        if not torch.isfinite(dU).all():
            raise ValueError("the Newton step is not finite: the discrete system is singular")
        # backtracking (Armijo on ||r||): Newton from far away may overshoot a nonlinearity
        step, prev = 1.0, rn
        for _ in range(40):
            with torch.no_grad():
                r_try = disc.values_residual(U + step * dU).double()
            rn = float(torch.linalg.vector_norm(r_try))
            if rn <= (1 - 1e-4 * step) * prev:
                break
            step *= 0.5
        it += 1
        if not rn <= (1 - 1e-4 * step) * prev:
            rn = prev  # no decrease at all: converged to round-off
            break
        U, r = U + step * dU, r_try
        if step == 1.0 and float(dU.abs().max()) <= tol * max(1.0, float(U.abs().max())):
            break
    Un = U.numpy()
    return DirectSolution(U=Un, iterations=it, residual_norm=float(torch.linalg.vector_norm(r)),
                          time_s=time.perf_counter() - t0, rel_l2_nodes=_rel_l2_nodes(disc, Un))

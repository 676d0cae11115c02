"""The classical answer: solve the discrete system itself (no network), by Newton's method.

The DT residual is a function of the nodal values, ``r(U) = [s (F_h(U) - f); s_b (G_h(U) - g)]``
with one row per interior + boundary node and one per boundary node (the ghost nodes close the
count: each rank owns as many rows as nodes), so ``r(U) = 0`` is a square sparse system. Its
solution is what RBF-FD alone gives: the floor a DT-PINN trained on the same operators can reach
(its "discretisation error"), and the time any PINN has to beat. Newton steps use the declared
linearisation (:meth:`~dtpinn_dist.problem.discrete.Discretization.linearization_matrix`) with a
backtracking line search; a linear problem takes one step.

Linear solves: serially, scipy's sparse LU (SuperLU); on PETSc systems (any rank count), PETSc
KSP with the options prefix ``solve_`` (default ``gmres`` + ``asm`` with ILU blocks, since this
build has no parallel direct solver; choose e.g. ``-solve_ksp_type bcgs -solve_pc_type gamg``).
The matrix is nonsymmetric, and its boundary rows have near-zero diagonals (a Dirichlet row's
weight at its ghost column), which is why one process uses SuperLU's partial pivoting rather
than PETSc's unpivoted LU.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["solve_discrete", "DirectSolution", "linear_solver"]


@dataclass
class DirectSolution:
    """Nodal values ``U`` (this rank's nodes, ``disc.data["X"]`` order) and how they were got."""

    U: np.ndarray
    iterations: int
    residual_norm: float
    time_s: float
    rel_l2_nodes: float | None
    solver: str = "lu"
    linear_iterations: list = field(default_factory=list)

    def summary(self) -> dict:
        return {"iterations": self.iterations, "residual_norm": self.residual_norm,
                "time_s": self.time_s, "rel_l2_nodes": self.rel_l2_nodes, "solver": self.solver,
                "linear_iterations": self.linear_iterations}


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


def linear_solver(disc):
    """The linear solver of ``J(U) x = r`` the direct solve uses on ``disc``: scipy's sparse LU
    on one process, PETSc KSP on a distributed system. ``solver.solve(U, r)``; the LU factor of
    the last ``U`` is kept for the next solve at the same ``U``."""
    return _KSP(disc, 1e-13) if disc.comm.size > 1 else _LU(disc)


class _LU:
    """scipy's sparse LU of the serial linearisation."""

    name = "scipy-superlu"

    def __init__(self, disc):
        self.disc = disc
        self.its = []
        self._at = self._lu = None

    def solve(self, U, r):
        import scipy.sparse.linalg as spla

        key = np.asarray(U, dtype=np.float64).tobytes()
        if key != self._at:
            J = self.disc.linearization_matrix(U, global_columns=True)  # one rank: all columns
            if J is None or J.shape[0] != J.shape[1]:
                raise ValueError(f"the discrete system is not square "
                                 f"({None if J is None else J.shape}); the direct solve needs "
                                 "one ghost node per boundary node")
            self._at, self._lu = key, spla.splu(J.tocsc())
        self.its.append(1)
        return self._lu.solve(r)


class _KSP:
    """PETSc KSP on the distributed linearisation (options prefix ``solve_``)."""

    def __init__(self, disc, rtol):
        from ..comm import MPIComm, init_petsc

        self.PETSc = PETSc = init_petsc()
        self.disc, self.rtol = disc, rtol
        comm = disc.comm
        self.pcomm = comm.comm if isinstance(comm, MPIComm) else PETSc.COMM_SELF
        self.its = []
        self.name = "petsc-ksp"

    def solve(self, U, r):
        from ..distributed.assembly import petsc_aij

        PETSc = self.PETSc
        J = self.disc.linearization_matrix(U, global_columns=True)
        n_loc, N = J.shape[0], J.shape[1]
        if self.disc.comm.sum(n_loc) != N:
            raise ValueError("the discrete system is not square; the direct solve needs one "
                             "ghost node per boundary node")
        A = petsc_aij(J, (n_loc, N), (n_loc, N), self.pcomm, "J", "solve_")
        ksp = PETSc.KSP().create(comm=self.pcomm)
        ksp.setOptionsPrefix("solve_")
        ksp.setOperators(A)
        ksp.setType("gmres")
        ksp.setGMRESRestart(200)
        ksp.getPC().setType("asm")
        ksp.getPC().setASMOverlap(2)
        ksp.setTolerances(rtol=self.rtol, atol=0.0, max_it=5000)
        ksp.setFromOptions()
        b = A.createVecLeft()
        x = A.createVecRight()
        b.getArray()[:] = r
        ksp.solve(b, x)
        reason = ksp.getConvergedReason()
        if reason < 0:
            raise ValueError(f"the linear solver did not converge (PETSc reason {reason} after "
                             f"{ksp.getIterationNumber()} iterations); choose another with "
                             "-solve_ksp_type / -solve_pc_type (e.g. bcgs, gamg)")
        self.its.append(int(ksp.getIterationNumber()))
        out = x.getArray().copy()
        for o in (ksp, A, b, x):
            o.destroy()
        return out


def solve_discrete(disc, *, tol: float = 1e-12, max_iter: int = 30, U0=None,
                   linear_rtol: float = 1e-13) -> DirectSolution:
    """Newton's method on ``r(U) = 0``; collective on a distributed discretisation.

    Parameters
    ----------
    disc : Discretization
        A steady DT discretisation (torch backend on one process, or PETSc on any rank count).
    tol : float
        Stop when ``||r||_2 <= tol * max(1, ||r(U0)||_2)``, or when Newton stagnates at
        round-off (a negligible step, or no decrease).
    max_iter : int
    U0 : array, optional
        Starting values on this rank's nodes (default zeros).
    linear_rtol : float
        Relative tolerance of an iterative (PETSc KSP) linear solve.
    """
    if not disc.has_structure:
        raise ValueError("the direct solve needs a steady DT discretisation (method 'dt', no "
                         "time dependence)")
    disc.problem.check_well_posed()
    if disc.dtype != torch.float64:
        raise ValueError(f"the direct solve works in fp64 (Newton to a residual near round-off) "
                         f"but the discretisation is {disc.dtype}; discretize with dtype='fp64' "
                         "(command line: drop --dtype fp32)")
    linear = _KSP(disc, linear_rtol) if disc.comm.size > 1 else _LU(disc)
    comm = disc.comm
    t0 = time.perf_counter()
    n = len(disc.data["X"])
    U = torch.zeros(n, dtype=torch.float64) if U0 is None else torch.as_tensor(
        np.asarray(U0, dtype=np.float64)).clone()

    def norm(v):
        return math.sqrt(float(comm.sum(float((v.double() ** 2).sum()))))

    with torch.no_grad():
        r = disc.values_residual(U).double()
    rn = norm(r)
    r0 = max(1.0, rn)
    it = 0
    while rn > tol * r0 and it < max_iter:
        dU = torch.from_numpy(np.asarray(linear.solve(U, -r.numpy()), dtype=np.float64))
        if not bool(comm.sum(float(torch.isfinite(dU).all())) == comm.size):
            raise ValueError("the Newton step is not finite: the discrete system is singular")
        # backtracking (Armijo on ||r||): Newton from far away may overshoot a nonlinearity
        step, prev = 1.0, rn
        for _ in range(40):
            with torch.no_grad():
                r_try = disc.values_residual(U + step * dU).double()
            rn = norm(r_try)
            if rn <= (1 - 1e-4 * step) * prev:
                break
            step *= 0.5
        it += 1
        if not rn <= (1 - 1e-4 * step) * prev:
            rn = prev  # no decrease at all: converged to round-off
            break
        U, r = U + step * dU, r_try
        # one collective for both maxima (a rank may own no nodes)
        dmax, umax = (max(t) for t in zip(*comm.allgather(
            (float(dU.abs().max()) if dU.numel() else 0.0,
             float(U.abs().max()) if U.numel() else 0.0))))
        if step == 1.0 and dmax <= tol * max(1.0, umax):
            break
    Un = U.numpy()
    return DirectSolution(U=Un, iterations=it, residual_norm=rn,
                          time_s=time.perf_counter() - t0, rel_l2_nodes=_rel_l2_nodes(disc, Un),
                          solver=linear.name,
                          linear_iterations=list(linear.its))

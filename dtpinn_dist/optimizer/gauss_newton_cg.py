"""Matrix-free damped Gauss-Newton steps: preconditioned CG on ``(J^T J + lam D) p = -J^T r``.

Only ``J v`` (forward mode) and ``J^T y`` (reverse mode) are needed, so this works for every
problem (heat included) and never stores ``J``. Distributed: parameter-space vectors are
replicated (every rank holds the same bits) and residual-space vectors are split by rows, so
``J^T y`` and ``||J v||^2`` are reduced with ``comm.sum`` (bit-identical on all ranks) and the
parameter-space CG inner products, computed from identical bits by identical code, are identical
on every rank without a further reduction. Every branch (CG stop, LM accept) therefore agrees.
"""
from __future__ import annotations

import torch

__all__ = ["gn_matvec", "estimate_jtj_diag", "pcg"]


def gn_matvec(lsq, theta, v, comm):
    """``J^T J v`` summed over ranks (one jvp, one vjp, one reduction)."""
    return comm.sum(lsq.vjp(theta, lsq.jvp(theta, v)))


def estimate_jtj_diag(lsq, theta, comm, n_probes: int = 8, seed: int = 0):
    """Estimate ``diag(J^T J)`` (squared column norms of J) from Rademacher probes.

    ``E[(J^T z)_j^2] = sum_i J_ij^2`` for ``z`` with independent +-1 entries; each probe costs
    one vjp. The probe vectors live in residual space (this rank's rows), drawn from a generator
    seeded by ``(seed, rank)`` so runs are reproducible; the reduced estimate is identical on all
    ranks.

    Returns
    -------
    (n_params,) tensor, non-negative.
    """
    r_shape = lsq.jacobian_shape()[0]
    gen = torch.Generator().manual_seed(int(seed) * 1000003 + int(getattr(comm, "rank", 0)))
    acc = torch.zeros(lsq.n_params, dtype=theta.dtype, device=theta.device)
    for _ in range(n_probes):
        z = (torch.randint(0, 2, (r_shape,), generator=gen) * 2 - 1).to(theta.dtype)
        acc += comm.sum(lsq.vjp(theta, z.to(theta.device))) ** 2
    return acc / n_probes


def pcg(matvec, b, precond_diag, tol: float = 1e-4, maxiter: int = 100):
    """Jacobi-preconditioned conjugate gradients for SPD ``A x = b`` (``x0 = 0``).

    Parameters
    ----------
    matvec : callable
        ``v -> A v`` (replicated vectors in, replicated out).
    b : tensor
    precond_diag : tensor
        Positive diagonal ``M`` of the preconditioner (``M^-1`` is applied).
    tol : float
        Stop when ``||b - A x|| <= tol ||b||``.
    maxiter : int

    Returns
    -------
    x : tensor
    info : dict
        ``iters``, ``rel_res`` (relative residual norm at exit).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    z = r / precond_diag
    p = z.clone()
    rz = torch.dot(r, z)
    bnorm = torch.linalg.vector_norm(b)
    it = 0
    rel = 1.0
    if bnorm == 0:
        return x, {"iters": 0, "rel_res": 0.0}
    while it < maxiter:
        Ap = matvec(p)
        pAp = torch.dot(p, Ap)
        if not pAp > 0:  # breakdown (loss of positive definiteness in round-off): stop here
            break
        alpha = rz / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        it += 1
        rel = float(torch.linalg.vector_norm(r) / bnorm)
        if rel <= tol:
            break
        z = r / precond_diag
        rz_new = torch.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, {"iters": it, "rel_res": rel}

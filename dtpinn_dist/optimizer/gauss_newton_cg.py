"""Matrix-free Gauss-Newton: ``J^T J v`` from two products, (preconditioned) CG, the damping scale.

Only ``J v`` and ``J^T y`` of a :class:`~dtpinn_dist.optimizer.least_squares.Linearization` are
used, so this works for every problem (heat included) and never stores ``J``. Distributed:
parameter-space vectors are replicated (every rank holds the same bits) and residual-space
vectors are split by rows, so ``J^T y`` and ``||J v||^2`` are reduced with ``comm.sum``
(bit-identical on all ranks); the parameter-space CG inner products, computed from identical bits
by identical code, are identical on every rank without a further reduction. Every branch (CG
stop, LM accept) therefore agrees, and the CG iterates are the serial ones up to the summation
order inside ``comm.sum`` (round-off).
"""
from __future__ import annotations

import torch

__all__ = ["normal_matvec", "frobenius_scale", "pcg"]


def normal_matvec(lin, comm, v: torch.Tensor) -> torch.Tensor:
    """``J^T J v`` summed over ranks (one ``J v``, one ``J^T y``, one P-vector reduction)."""
    return comm.sum(lin.vjp(lin.jvp(v)))


def frobenius_scale(lin, comm, n_params: int, n_probes: int = 4, seed: int = 0) -> float:
    """``||J||_F^2 / P`` (the mean diagonal of ``J^T J``: Levenberg's damping scale), estimated
    by ``E ||J v||^2 = ||J||_F^2`` over Rademacher ``v`` in PARAMETER space.

    The probes are drawn from one seeded generator, the same on every rank, so the estimate is
    the same for any rank count (up to the round-off of ``comm.sum``), unlike residual-space
    probes, which would follow the partition. Each probe costs one ``J v``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    acc = 0.0
    for _ in range(n_probes):
        v = (torch.randint(0, 2, (n_params,), generator=gen) * 2 - 1).to(lin.r.dtype)
        Jv = lin.jvp(v.to(lin.r.device))
        acc += float(comm.sum((Jv * Jv).sum()))
    return acc / n_probes / n_params


def pcg(matvec, b: torch.Tensor, precond=None, tol: float = 1e-2, maxiter: int = 100):
    """Preconditioned conjugate gradients for SPD ``M x = b`` from ``x0 = 0``.

    Parameters
    ----------
    matvec : callable
        ``v -> M v`` (replicated vectors in, replicated out).
    b : tensor
    precond : callable, optional
        ``r -> P^{-1} r`` for an SPD preconditioner ``P`` (None: the identity).
    tol : float
        Stop when ``||b - M x|| <= tol ||b||`` (the true relative residual of the iterate).
    maxiter : int

    Returns
    -------
    x : tensor
    info : dict
        ``iters``, ``rel_res`` (relative residual norm at exit), ``converged`` (met ``tol``).
    """
    x = torch.zeros_like(b)
    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0:
        return x, {"iters": 0, "rel_res": 0.0, "converged": True}
    r = b.clone()
    z = r if precond is None else precond(r)
    p = z.clone()
    rz = torch.dot(r, z)
    it, rel, ok = 0, 1.0, False
    while it < maxiter:
        Mp = matvec(p)
        pMp = torch.dot(p, Mp)
        if not pMp > 0:  # breakdown (loss of positive definiteness in round-off): stop here
            break
        alpha = rz / pMp
        x = x + alpha * p
        r = r - alpha * Mp
        it += 1
        rel = float(torch.linalg.vector_norm(r)) / bnorm
        if rel <= tol:
            ok = True
            break
        z = r if precond is None else precond(r)
        rz_new = torch.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, {"iters": it, "rel_res": rel, "converged": ok}

"""Which residual block limits a network's error: the error split.

With ``U*`` the direct solution of the discrete system and ``A = dr/dU`` its linearisation at
``U*`` (:meth:`Discretization.linearization_matrix`), the network's nodal values ``U`` have the
residual ``r = r(U)`` and, to first order, the nodal error ``U - U* = A^{-1} r``. Splitting ``r``
by block (the PDE rows, each boundary part's rows) splits the error exactly into one term per
block: ``U - U* ~ sum_b A^{-1} P_b r``. The block with the largest term limits the network; a
loss whose weighting neglects a block shows here first. Row weights cancel in ``A^{-1} r`` (each
weighted row of ``r`` is matched by the same weight in ``A``), so the split does not depend on
the weighting, only on what the network reached.

Also reported: ``loss_to_error``, the ratio of ``sqrt(loss)`` (the weighted residual's 2-norm)
to the RMS nodal error ``|U - U*|``: the property a weighting is for (of order one, and the same
at every N, when the loss measures the error).

One sparse LU (serial) or one PETSc KSP solve per block (distributed): affordable wherever
:func:`~dtpinn_dist.problem.solve.solve_discrete` is. Steady DT problems only.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["error_split"]


def error_split(disc, model, solution=None) -> dict:
    """The error split of ``model`` on ``disc`` (collective on a distributed discretisation).

    Parameters
    ----------
    disc : Discretization
        A steady DT discretisation.
    model : torch.nn.Module, or nodal values
        The network (evaluated at this rank's nodes), or its values there ((n,) array).
    solution : DirectSolution, optional
        ``solve_discrete(disc)``, when already computed.

    Returns
    -------
    dict
        ``blocks``: block name (``"pde"``, each boundary part) -> RMS of its error term at the
        interior + boundary nodes relative to the RMS of ``U*`` there; ``linearised``: the same
        for the whole ``A^{-1} r``; ``nodal``: the actual ``|U - U*|`` relative; ``limiting``:
        the block with the largest term; ``loss_to_error``: ``sqrt(loss) / RMS(U - U*)``.
    """
    from .solve import linear_solver, solve_discrete

    if not disc.has_structure:
        raise ValueError("the error split needs a steady DT discretisation (method 'dt', no "
                         "time dependence)")
    sol = solution if solution is not None else solve_discrete(disc)
    comm = disc.comm
    Ustar = torch.as_tensor(sol.U, dtype=torch.float64)
    with torch.no_grad():
        U = disc.network_values(model) if isinstance(model, torch.nn.Module) else \
            torch.as_tensor(np.asarray(model, dtype=np.float64))
        U = U.to(torch.float64).reshape(-1)
        r = disc.values_residual(U.to(disc.dtype)).to(torch.float64).numpy()
    rows = disc.data["rows_idx"].cpu().numpy()
    blocks = {"pde": np.arange(len(rows))}
    for bp in disc.bparts:
        blocks[str(bp.key)] = len(rows) + bp.rows.cpu().numpy()
    names = ["pde"] + sorted(set(disc.info["parts"].values()))  # every part, on every rank
    solver = linear_solver(disc)

    def rms(v):
        s = comm.sum(np.array([float((v[rows] ** 2).sum()), float(len(rows))]))
        return math.sqrt(s[0] / s[1]) if s[1] else 0.0

    ref = rms(sol.U) or 1.0
    out, total = {}, np.zeros(len(sol.U))
    for name in names:  # every rank enters every solve, also for a part it holds no rows of
        rb = np.zeros_like(r)
        idx = blocks.get(name)
        if idx is not None:
            rb[idx] = r[idx]
        e = np.asarray(solver.solve(Ustar, rb), dtype=np.float64)
        total += e
        out[name] = rms(e) / ref
    loss = float(comm.sum(float((r ** 2).sum())))
    nodal = rms((U - Ustar).numpy())
    return {"blocks": out, "linearised": rms(total) / ref, "nodal": nodal / ref,
            "limiting": max(out, key=out.get) if out else None,
            "loss_to_error": math.sqrt(loss) / nodal if nodal > 0 else None,
            "direct_rel_l2_nodes": sol.rel_l2_nodes}

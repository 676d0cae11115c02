"""Derivatives of the network by automatic differentiation: the vanilla-PINN side (paper eq. (4)).

The network ``u(x[, t])`` is evaluated at points that require grad; one backward pass gives the
whole gradient (all ``u_x``, ``u_y``, ``u_t``), one more per axis the rows of the Hessian, and the
Laplacian is the sum of its diagonal. Only what a declaration reads is computed.
"""
from __future__ import annotations

import torch

from .forms import AXES

__all__ = ["autograd_fields", "field_key"]


def field_key(key) -> str:
    """Name of a derivative value: an RBF-FD term key (``("d", 0)``, ``("dd", (0, 1))``, ``"lap"``,
    ``"bilap"``, ``"id"``) or a field symbol (``"u_x"``, ``"u_t"``, ``"u"``) -> its symbol name
    (``"u_x"``, ``"u_xy"``, ``"lap"``, ``"bilap"``, ``"u"``)."""
    if isinstance(key, str):
        return "u" if key == "id" else key
    if key[0] == "d":
        return "u_" + AXES[key[1]]
    a, b = key[1]
    return "u_" + AXES[a] + AXES[b]


def autograd_fields(model, P: torch.Tensor, dim: int, needed, create_graph: bool = True) -> dict:
    """Values of ``u`` and the requested derivatives at the points ``P``.

    Parameters
    ----------
    model : callable
        The network, ``(n, dim[+1]) -> (n, 1)``.
    P : (n, dim) or (n, dim + 1) tensor
        Points (time last when the problem is time-dependent); detached here and made a leaf.
    dim : int
        Spatial dimension.
    needed : iterable of str
        Names from :func:`field_key`: ``"u"``, ``"u_t"``, ``"u_x"``, ``"u_xy"``, ``"lap"``,
        ``"bilap"``.
    create_graph : bool
        Keep the graph of the derivatives (training needs it; metrics do not).

    Returns
    -------
    dict name -> (n,) tensor.
    """
    needed = set(needed) | {"u"}
    P = P.detach().requires_grad_(True)
    u = model(P).reshape(-1)
    out = {"u": u}
    if needed == {"u"}:
        return out
    (G,) = torch.autograd.grad(u.sum(), P, create_graph=True)
    if "u_t" in needed:
        out["u_t"] = G[:, dim]
    for k in range(dim):
        out["u_" + AXES[k]] = G[:, k]
    second = {n for n in needed if n.startswith("u_") and len(n) == 4}
    axes = sorted({AXES.index(c) for n in second for c in n[2:]}
                  | (set(range(dim)) if needed & {"lap", "bilap"} else set()))
    rows = {}
    # the bi-Laplacian differentiates the Laplacian again: its rows need their graph
    keep = create_graph or "bilap" in needed
    for a in axes:
        (rows[a],) = torch.autograd.grad(G[:, a].sum(), P, create_graph=keep,
                                         retain_graph=True)
    for n in second:
        a, b = (AXES.index(c) for c in n[2:])
        out[n] = rows[a][:, b]
    if needed & {"lap", "bilap"}:
        lap = rows[0][:, 0]
        for a in range(1, dim):
            lap = lap + rows[a][:, a]
        out["lap"] = lap
    if "bilap" in needed:
        (GL,) = torch.autograd.grad(out["lap"].sum(), P, create_graph=True)
        bil = None
        for a in range(dim):
            (h,) = torch.autograd.grad(GL[:, a].sum(), P, create_graph=create_graph,
                                       retain_graph=True)
            bil = h[:, a] if bil is None else bil + h[:, a]
        out["bilap"] = bil
    return out

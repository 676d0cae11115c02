"""Row weights of the least-squares loss: what makes the loss measure the solution error.

Every residual row is multiplied by one weight before it is squared and summed. The default,
``"auto"``, is ``"symbol"`` when a boundary part has a condition without derivatives (Dirichlet)
and ``"count"`` otherwise -- what the measurements below support:

``"symbol"``
    each row is divided by the size of its linear operator on the domain's smoothest mode, a
    wave of length ``l``: a term ``c u`` counts ``|c|``, first derivatives ``|c| / l`` (the
    coefficient vector's norm: ``alpha dn(u)`` counts ``|alpha| / l``), second derivatives
    ``|c| / l^2`` (``-div((1+x^2) grad u)`` counts ``(1+x^2)/l^2`` at each row), ``lap(lap(u))``
    ``|c| / l^4``; then each block by ``1/sqrt(rows)`` (a mean over the block). ``l`` is the
    domain's length scale ``R / z``: ``R`` the radius of the disk (ball) of the cloud's area
    (volume), ``z`` the first zero of the Bessel function J0 (2.405; pi in 3D), so ``1/l^2`` is
    the first Dirichlet eigenvalue of the Laplacian on that disk, by Faber-Krahn a lower bound
    of the domain's own.
    Why: a smooth residual ``rho`` on a row moves the solution by about ``rho`` over that size
    (``l^2 rho`` for a Laplacian row, ``rho`` for a Dirichlet row, ``rho / (beta + alpha/l)``
    for a Robin row), so every weighted row costs what the error it causes costs; every weighted
    row has the units of ``u`` (a rescaled domain gives the same loss); and nothing depends on
    the node spacing, so the balance is the same at every N. A row with no linear part (a
    purely nonlinear PDE such as ``sqrt(1 + |grad u|^2)``) is weighted ``l^k`` by its highest
    derivative order ``k``.
``"count"``
    the paper's eq. (12): each block divided by the square root of its row count, whatever its
    order (what this library did before; kept to reproduce the paper's losses). A Dirichlet row
    then weighs ``1/lambda_1`` (6-30x) less than under ``"symbol"``, relative to the PDE rows,
    and Dirichlet problems stall with their error in the boundary block (docs/loss.md).

Measured (docs/loss.md, benchmarks/bench_weighting.py): ``h_i^k`` with the local node spacing
``h_i`` instead of ``l`` (each stencil's own scale) overshoots: it weighs the PDE rows
``(h/l)^2`` ~ 1/100 as much as their smooth errors cost, and the PDE block then limits the error
at 5-35x the paper's rule's error. The order-only rule ``l^k`` (ignoring the coefficients and
the lower-order terms) over-weighs Robin rows 2x and lost to the paper's rule on its Robin
problem. Neither is offered. ``"symbol"`` itself gains 7-23x on Dirichlet problems but loses 2-3x
on the paper's Robin problem (why is not measured); hence ``"auto"``.

Weights are computed once per discretisation, from the global cloud (identical on every rank)
and the coefficients at this rank's rows; every consumer (residual, ``J v``, ``J^T w``, the
sparse Jacobian, LM/GN, distributed) reads them from :attr:`Discretization.weights`.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["WEIGHTINGS", "resolve", "local_spacing", "domain_length", "symbol_size",
           "row_weights"]

WEIGHTINGS = ("auto", "symbol", "count")

#: first zero of J0 (2D) and of the spherical j0 (3D): the Dirichlet Laplacian's first eigenvalue
#: on a disk / ball of radius R is (z / R)^2
_BESSEL_ZERO = {2: 2.404825557695773, 3: math.pi}


def local_spacing(cloud, points) -> np.ndarray:
    """Mean distance from each of ``points`` (nodes of ``cloud``) to its ``2 d`` nearest other
    interior or boundary nodes (ghost nodes excluded)."""
    nodes = np.vstack([cloud.interior, cloud.boundary])
    k = 2 * nodes.shape[1]
    if len(points) == 0:
        return np.zeros(0)
    dist, _ = cKDTree(nodes).query(points, k=k + 1)
    return dist[:, 1:].mean(axis=1)  # column 0 is the node itself (duplicates are refused)


def domain_length(cloud) -> float:
    """``R / z``: the length whose inverse square is the first Dirichlet eigenvalue of the
    Laplacian on the disk (ball) with the cloud's area (volume) -- by Faber-Krahn a lower bound
    of the domain's own first eigenvalue, so ``1/length^2`` bounds how strongly the PDE rows damp
    a smooth error. The area is estimated from the nodes (each owns about ``h_i^d`` of it, with
    the hexagonal packing factor in 2D)."""
    nodes = np.vstack([cloud.interior, cloud.boundary])
    d = nodes.shape[1]
    h = local_spacing(cloud, nodes)
    if d == 2:
        radius = math.sqrt(float((math.sqrt(3) / 2 * h ** 2).sum()) / math.pi)
    else:
        radius = (3 * float((h ** 3 / math.sqrt(2)).sum()) / (4 * math.pi)) ** (1 / 3)
    return radius / _BESSEL_ZERO[d]


def symbol_size(terms, ell: float, n: int) -> np.ndarray:
    """Per row, the size of a linear operator on a wave of length ``ell``: ``terms`` are
    ``(term key, coefficient)`` pairs (a number or an (n,) array per row) of the RBF-FD term
    keys (``"id"``, ``("d", k)``, ``"lap"``, ``("dd", (a, b))``, ``"bilap"``)."""
    zero = np.zeros(n)
    grad2, size = zero.copy(), zero.copy()
    for key, c in terms:
        c = np.abs(np.broadcast_to(np.asarray(c, dtype=np.float64).reshape(-1), (n,)))
        if key == "id":
            size = size + c
        elif key == "lap" or (isinstance(key, tuple) and key[0] == "dd"):
            size = size + c / ell ** 2
        elif key == "bilap":
            size = size + c / ell ** 4
        else:  # ("d", k): the first-derivative coefficients form a vector
            grad2 = grad2 + c * c
    return size + np.sqrt(grad2) / ell


def resolve(rule: str, bnd_orders_all) -> str:
    """The rule ``"auto"`` stands for: ``"symbol"`` when some condition has no derivative
    (order 0: Dirichlet), else ``"count"``; other rules as given."""
    if rule not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {rule!r}: use one of {', '.join(WEIGHTINGS)}")
    if rule != "auto":
        return rule
    return "symbol" if any(int(k) == 0 for k in bnd_orders_all) else "count"


def row_weights(rule: str, cloud, *, pde_terms, pde_rows: int, pde_order: int, pde_count: int,
                bnd_terms, bnd_orders, bnd_count: int, ic_count: int, slices: int) -> dict:
    """The weights of the blocks ``pde`` and ``bc`` (float64 arrays, one per row of this rank)
    and ``ic`` (a float).

    Parameters
    ----------
    cloud : PointCloud
        The global cloud (its area gives the length scale).
    pde_terms, bnd_terms : list of (term key, coefficient per row)
        The linear parts of the PDE at this rank's PDE rows and of the conditions at its
        boundary rows (a coefficient is zero where a part lacks the term).
    pde_rows : int
        This rank's PDE rows.
    pde_order : int
        Highest spatial derivative order of the PDE.
    bnd_orders : (nb,) int array
        Highest derivative order of the condition of each of this rank's boundary rows.
    pde_count, bnd_count, ic_count : int
        GLOBAL row counts of each block per time slice; ``slices`` time slices.
    """
    if rule not in ("symbol", "count"):
        raise ValueError(f"row_weights takes a resolved rule ('symbol' or 'count'), got {rule!r}")
    m = int(slices)
    n_pde = 1.0 / math.sqrt(m * pde_count)
    n_bc = 1.0 / math.sqrt(m * bnd_count) if bnd_count else 1.0
    n_ic = 1.0 / math.sqrt(ic_count) if ic_count else 1.0
    orders = np.asarray(bnd_orders, dtype=np.float64)
    n_rows = int(pde_rows)
    if rule == "count":
        return {"pde": np.full(n_rows, n_pde), "bc": np.full(len(orders), n_bc), "ic": n_ic}
    ell = domain_length(cloud)

    def inverse(terms, n, orders):
        size = symbol_size(terms, ell, n)
        fallback = ell ** np.broadcast_to(orders, (n,))  # rows without a linear part
        return np.where(size > 0, 1.0 / np.where(size > 0, size, 1.0), fallback)

    return {"pde": n_pde * inverse(pde_terms, n_rows, float(pde_order)),
            "bc": n_bc * inverse(bnd_terms, len(orders), orders), "ic": n_ic}

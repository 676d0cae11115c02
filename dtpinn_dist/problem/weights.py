"""Row weights of the least-squares loss: what makes the loss measure the solution error.

Every residual row is multiplied by one weight before it is squared and summed. Two rules:

``"length"`` (the default)
    a row whose highest derivative is of order ``k`` (the PDE: its order, 2 for a Laplacian; a
    Neumann or Robin condition: 1; a Dirichlet condition or an initial value: 0) is multiplied
    by ``l^k``, then each block by ``1/sqrt(rows)`` (a mean over the block). ``l`` is the
    domain's length scale ``R / z``: ``R`` the radius of the disk (ball) of the cloud's area
    (volume), ``z`` the first zero of the Bessel function J0 (2.405; pi in 3D), so ``1/l^2`` is
    the first Dirichlet eigenvalue of the Laplacian on that disk, by Faber-Krahn a lower bound
    of the domain's own. Why: a smooth residual ``rho`` on the PDE rows moves the solution by
    about ``rho / lambda_1 = l^2 rho``, one on a Dirichlet row by about ``rho``, one on a
    Neumann row by about ``l rho``; weighted by ``l^k`` every block costs what its smooth
    errors cost, every weighted row has the units of ``u`` (a rescaled domain gives the same
    loss), and nothing depends on the node spacing, so the balance is the same at every N.
``"count"``
    the paper's eq. (12): each block divided by the square root of its row count, whatever its
    order (what this library did before; kept to reproduce the paper's losses). A Dirichlet row
    then weighs ``1/lambda_1`` (~6-20x) less than under ``"length"``, relative to the PDE rows,
    and Dirichlet problems stall with their error in the boundary block (docs/RESULTS.md).

Measured (docs/RESULTS.md, benchmarks/bench_weighting.py): the rule ``h_i^k`` with the local node
spacing ``h_i`` instead of ``l`` (each stencil's own scale) overshoots: it weighs the PDE rows
``(h/l)^2`` ~ 1/100 as much as smooth errors cost, and the PDE block then limits the error at
5-35x the paper's rule's error. It is not offered.

Weights are computed once per discretisation, from the global cloud (identical on every rank),
for this rank's rows; every consumer (residual, ``J v``, ``J^T w``, the sparse Jacobian, LM/GN,
distributed) reads them from :attr:`Discretization.weights`.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["WEIGHTINGS", "local_spacing", "domain_length", "row_weights"]

WEIGHTINGS = ("length", "count")

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


def row_weights(rule: str, cloud, *, pde_order: int, pde_count: int, bnd_orders,
                bnd_count: int, ic_count: int, slices: int) -> dict:
    """The weights of the blocks ``pde`` and ``ic`` (floats) and ``bc`` (a float64 array, one
    per boundary row of this rank).

    Parameters
    ----------
    cloud : PointCloud
        The global cloud (its area gives the length scale).
    pde_order : int
        Highest spatial derivative order of the PDE.
    bnd_orders : (nb,) int array
        Highest derivative order of the condition of each of this rank's boundary rows.
    pde_count, bnd_count, ic_count : int
        GLOBAL row counts of each block per time slice; ``slices`` time slices.
    """
    if rule not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {rule!r}: use one of {', '.join(WEIGHTINGS)}")
    m = int(slices)
    n_pde = 1.0 / math.sqrt(m * pde_count)
    n_bc = 1.0 / math.sqrt(m * bnd_count) if bnd_count else 1.0
    n_ic = 1.0 / math.sqrt(ic_count) if ic_count else 1.0
    orders = np.asarray(bnd_orders, dtype=np.float64)
    if rule == "count":
        return {"pde": n_pde, "bc": np.full(len(orders), n_bc), "ic": n_ic}
    ell = domain_length(cloud)
    return {"pde": n_pde * ell ** int(pde_order), "bc": n_bc * ell ** orders, "ic": n_ic}

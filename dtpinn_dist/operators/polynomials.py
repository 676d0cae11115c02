"""Tensor-product Legendre polynomials of total degree <= l: values at stencil nodes and exact
derivatives at the origin (the stencil centre in local, scaled coordinates)."""
from __future__ import annotations

from functools import lru_cache
from math import comb

import numpy as np
from numpy.polynomial import legendre as _leg

__all__ = ["multi_indices", "n_poly", "legendre_table", "poly_values", "poly_values_first",
           "poly_deriv_at_zero"]


def n_poly(l: int, d: int) -> int:
    """Dimension binom(l + d, d) of the polynomials of total degree <= l in d variables."""
    return comb(l + d, d)


@lru_cache(maxsize=None)
def multi_indices(l: int, d: int) -> np.ndarray:
    """(M, d) int array of exponents alpha with |alpha| <= l, ordered by total degree."""
    grids = np.stack(np.meshgrid(*([np.arange(l + 1)] * d), indexing="ij"), -1).reshape(-1, d)
    a = grids[grids.sum(1) <= l]
    order = np.lexsort(tuple(-a[:, k] for k in range(d - 1, -1, -1)) + (a.sum(1),))
    a = a[order]
    a.setflags(write=False)
    return a


def legendre_table(y: np.ndarray, l: int, first: bool = False) -> np.ndarray:
    """P_0..P_l at ``y`` by the three-term recurrence; result has shape ``y.shape + (l+1,)``
    (``(l+1,) + y.shape`` when ``first``: contiguous tables, long inner loops)."""
    out = np.empty((l + 1,) + y.shape if first else y.shape + (l + 1,), dtype=np.float64)
    t = out if first else np.moveaxis(out, -1, 0)  # t[k] is P_k(y) in either layout
    t[0] = 1.0
    if l >= 1:
        t[1] = y
    for k in range(1, l):
        t[k + 1] = ((2 * k + 1) * y * t[k] - k * t[k - 1]) / (k + 1)
    return out


def poly_values(y: np.ndarray, l: int, out: np.ndarray | None = None) -> np.ndarray:
    """Basis values q_alpha(y) = prod_k P_{alpha_k}(y_k) for ``y`` of shape (..., d).

    Returns shape (..., M) with M = binom(l + d, d), columns ordered as :func:`multi_indices`;
    written into ``out`` (any strides) when given.
    """
    d = y.shape[-1]
    alphas = multi_indices(l, d)
    tabs = [legendre_table(np.ascontiguousarray(y[..., k]), l) for k in range(d)]
    if out is None:
        out = np.empty(y.shape[:-1] + (len(alphas),), dtype=np.float64)
    np.take(tabs[0], alphas[:, 0], axis=-1, out=out) if d == 1 else np.multiply(
        np.take(tabs[0], alphas[:, 0], axis=-1), np.take(tabs[1], alphas[:, 1], axis=-1), out=out)
    for k in range(2, d):
        out *= np.take(tabs[k], alphas[:, k], axis=-1)
    return out


def poly_values_first(y: np.ndarray, l: int) -> np.ndarray:
    """:func:`poly_values` with the basis index first: ``y`` of shape (d, ...) (component
    first), result (M, ...), contiguous. The same products in the same order, so the values are
    bit-for-bit those of :func:`poly_values`; the layout gives long inner loops (fast for the
    many short stencils of an assembly chunk)."""
    d = y.shape[0]
    alphas = multi_indices(l, d)
    out = legendre_table(y[0], l, first=True)[alphas[:, 0]]
    for k in range(1, d):
        out *= legendre_table(y[k], l, first=True)[alphas[:, k]]
    return out


@lru_cache(maxsize=None)
def _deriv_at_zero(l: int, kmax: int) -> np.ndarray:
    """D[j, n] = d^j/dy^j P_n at y = 0, for j <= kmax, n <= l (exact from the coefficients)."""
    D = np.zeros((kmax + 1, l + 1))
    for n in range(l + 1):
        c = np.zeros(n + 1)
        c[n] = 1.0
        for j in range(kmax + 1):
            D[j, n] = _leg.legval(0.0, _leg.legder(c, j)) if j <= n else 0.0
    return D


def poly_deriv_at_zero(l: int, d: int, beta) -> np.ndarray:
    """(M,) values of D^beta q_alpha at the origin, for every basis polynomial alpha."""
    beta = tuple(int(b) for b in beta)
    D = _deriv_at_zero(l, max(4, max(beta)))
    alphas = multi_indices(l, d)
    out = np.ones(len(alphas))
    for k in range(d):
        out *= D[beta[k], alphas[:, k]]
    return out

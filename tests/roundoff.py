"""Round-off bounds that the tests' tolerances are derived from (not tuned to one machine).

A sum of ``n`` floating-point terms, computed in ANY order (serial, blocked, SIMD, FMA, threaded,
split over MPI ranks), is within ``gamma_n * sum |terms|`` of the exact sum, with
``gamma_n = n u / (1 - n u)`` and ``u = eps / 2`` the unit round-off (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., eq. (3.5) and lemma 3.1). Two computations of the
same sum in different orders therefore differ by at most ``2 gamma_n sum |terms|``: for a
sparse product ``A x`` row i that is ``2 gamma_{nnz_i} (|A| |x|)_i`` — independent of CPU,
vector width, FMA, BLAS build and thread count, which is what makes a tolerance portable.
"""
import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["jacobian_against_autograd", "residual_scale", "loss_bound", "EPS", "C", "unit_roundoff", "gamma", "row_nnz", "matvec_diff_bound", "normal_product_diff_bound",
           "dot_diff_bound"]


def unit_roundoff(dtype=np.float64) -> float:
    """``u = eps / 2`` of a numpy or torch floating dtype."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps / 2
    return float(np.finfo(dtype).eps) / 2


def gamma(n, dtype=np.float64):
    """``gamma_n = n u / (1 - n u)`` (scalar or array ``n``)."""
    nu = np.asarray(n, dtype=np.float64) * unit_roundoff(dtype)
    if np.any(nu >= 1):
        raise ValueError("n u >= 1: no round-off bound")
    return nu / (1 - nu)


def row_nnz(A) -> np.ndarray:
    """Stored entries per row of a scipy sparse matrix (the terms of each row's sum)."""
    A = sp.csr_matrix(A)
    return np.diff(A.indptr)


def matvec_diff_bound(A, x, dtype=np.float64) -> np.ndarray:
    """Bound on ``|y1 - y2|`` (per entry) for two computations of ``y = A x`` that sum each
    row in different orders: ``2 gamma_{nnz_i} (|A| |x|)_i``. ``x`` a vector or a matrix."""
    A = sp.csr_matrix(A)
    x = np.asarray(x)
    g = 2 * gamma(np.maximum(row_nnz(A), 1), dtype)
    return (g[:, None] if x.ndim == 2 else g) * (abs(A) @ np.abs(x))


def normal_product_diff_bound(A, x, dtype=np.float64) -> np.ndarray:
    """Bound on ``|w1 - w2|`` for two computations of ``w = 2 A^T (A x)`` (the gradient of
    ``|A x|^2``). Each computes ``z = A x + dz`` with ``|dz| <= g_r |A||x|`` (g_r: gamma of the
    longest row), then ``A^T (2 z)`` within ``g_c |A^T| |2 z|`` (g_c: longest column), so each is
    within ``2 (g_r + g_c (1 + g_r)) |A^T| |A| |x|`` of the exact value; twice that bounds the
    difference."""
    A = sp.csr_matrix(A)
    g_r = gamma(max(row_nnz(A).max(initial=1), 1), dtype)
    g_c = gamma(max(row_nnz(A.T).max(initial=1), 1), dtype)
    absA = abs(A)
    return 4 * (g_r + g_c * (1 + g_r)) * (absA.T @ (absA @ np.abs(np.asarray(x))))


def dot_diff_bound(terms_abs_sum: float, n_terms: int, dtype=np.float64) -> float:
    """Bound on the difference of two computations of one sum of ``n_terms`` terms whose
    absolute values sum to ``terms_abs_sum`` (e.g. ``<A x, y>`` against ``<x, A^T y>``, where
    ``n_terms`` bounds how many additions any one term goes through)."""
    return float(2 * gamma(n_terms, dtype) * terms_abs_sum)


# ---- bounds for whole residuals (the declared problems' tests) ---------------------------------
#: A residual entry r_i = sum_j A_ij u_j + R_i - f_i computed twice, with the products summed in
#: two orders (another backend, partition or expression evaluator), differs by at most
#: C eps (sum_j |A_ij| |u_j| + |R_i| + |f_i|): C = 64 covers the stencil sums (<= 45 terms, so
#: 2 gamma_45 = 45 eps) with the pointwise terms' few roundings on top.
EPS = float(np.finfo(np.float64).eps)
C = 64


def residual_scale(disc, U: torch.Tensor) -> torch.Tensor:
    """Per-entry magnitude of the scaled steady DT residual at nodal values ``U`` (serial disc):
    ``|dr/dU| |U| + |r| + |[f; g]| (scaled)``; ``|dr/dU| |U|`` covers the pointwise terms too
    (e.g. ``|3u^2| |u| >= |u^3|``)."""
    J = disc.linearization_matrix(U)
    d = disc.data
    w = disc.weights
    fg = torch.cat([(d["f_rows"].abs() * w["pde"]).reshape(-1),
                    (d["g"].abs() * w["bc"]).reshape(-1)])
    with torch.no_grad():
        r = disc.values_residual(U).abs()
    return torch.from_numpy(abs(J) @ U.abs().numpy()) + r + fg


def loss_bound(r: torch.Tensor, scale: torch.Tensor) -> float:
    """|d(sum r^2)| <= 2 sum |r| |dr| + sum |dr|^2 with |dr| <= C eps scale."""
    dr = C * EPS * scale
    return float(2 * (r.abs() * dr).sum() + (dr * dr).sum())


def jacobian_against_autograd(disc, model):
    """The least-squares Jacobian of ``model`` on ``disc`` (the fast structured path,
    ``J = A_tilde Ju``) against autograd's Jacobian of the residual: the same products summed in
    another order, so within ``64 eps |A_tilde| |Ju|`` per entry. Returns ``(lsq, theta, J)``
    for further checks."""
    from dtpinn_dist.model.jacobian import network_jacobian
    from dtpinn_dist.optimizer.least_squares import PINNLeastSquares, _FunctionalModel

    lsq = PINNLeastSquares(model, disc)
    th = lsq.get_params()
    assert lsq.has_fast_jacobian()
    r, J = lsq.jacobian(th)
    ref = torch.autograd.functional.jacobian(
        lambda w: disc.residual(_FunctionalModel(model, w)), th)
    assert torch.equal(r, disc.residual(model).detach())
    _, Ju = network_jacobian(model, disc.data["X"])
    bound = C * EPS * torch.from_numpy(abs(lsq.structured_matrix(th)) @ Ju.abs().numpy())
    assert torch.all((J - ref).abs() <= bound)
    return lsq, th, J

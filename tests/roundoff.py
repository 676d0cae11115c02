"""Round-off bounds shared by the tests (no test of its own).

A residual entry ``r_i = sum_j A_ij u_j + R_i - f_i`` computed twice, with the products summed in
two orders (another backend, another partition, another expression evaluator), differs by at
most ``c * eps * (sum_j |A_ij| |u_j| + |R_i| + |f_i|)`` with ``c`` the number of rounding steps in
the longest chain; ``c = 64`` covers the stencil sums here (<= 45 terms) with margin.
"""
import numpy as np
import torch

EPS = float(np.finfo(np.float64).eps)
C = 64


def residual_scale(disc, U: torch.Tensor) -> torch.Tensor:
    """Per-entry magnitude of the scaled steady DT residual at nodal values ``U`` (serial disc):
    ``|dr/dU| |U| + |r| + |[f; g]| (scaled)``; ``|dr/dU| |U|`` covers the pointwise terms too
    (e.g. ``|3u^2| |u| >= |u^3|``)."""
    J = disc.linearization_matrix(U)
    d = disc.data
    sc = disc._scales()
    fg = torch.cat([d["f_rows"].reshape(-1).abs() / sc["pde"], d["g"].reshape(-1).abs() / sc["bc"]])
    with torch.no_grad():
        r = disc.values_residual(U).abs()
    return torch.from_numpy(abs(J) @ U.abs().numpy()) + r + fg


def loss_bound(r: torch.Tensor, scale: torch.Tensor) -> float:
    """|d(sum r^2)| <= 2 sum |r| |dr| + sum |dr|^2 with |dr| <= C eps scale."""
    dr = C * EPS * scale
    return float(2 * (r.abs() * dr).sum() + (dr * dr).sum())

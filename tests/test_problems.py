"""PDE data, the safe expression parser, and the DT/vanilla losses against direct references."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from dtpinn_dist.geometry import make_cloud
from dtpinn_dist.model import MLP
from dtpinn_dist.operators.system import DiscreteSystem
from dtpinn_dist.operators.torch_csr import TorchCSROperator, serial_system
from dtpinn_dist.problems import (ExpressionError, HeatValues, from_forcing, make_problem,
                                  manufactured, parse_safe)
from roundoff import gamma

PI = math.pi
EPS = float(np.finfo(np.float64).eps)
# Two evaluations of one closed form (sympy-lambdified vs numpy/torch, a few faithfully rounded
# sin/cos/exp and products each) agree to a few eps of the terms' magnitude. Measured max
# |a - b| / (eps scale) <= 0.8 (threads 1 and 2); tolerance CLOSED_FORM eps scale.
CLOSED_FORM = 16


def _close(got, want, scale):
    """|got - want| <= CLOSED_FORM eps scale, entry by entry."""
    err = np.abs(np.asarray(got) - np.asarray(want))
    assert np.all(err <= CLOSED_FORM * EPS * scale), err.max() / (EPS * scale)


@pytest.fixture(scope="module")
def cloud():
    return make_cloud("disk", n=220, seed=3)


@pytest.fixture(scope="module")
def system(cloud):
    return serial_system(cloud, 4)


# ---------------------------------------------------------------- safe parser
@pytest.mark.parametrize("bad", [
    "__import__('os')", "__import__('os').system('true')", "x.__class__",
    "().__class__.__bases__[0]", "exec('1')", "eval('1')", "lambda: 1", "x[0]", "'a' + x",
    "open('f')", "q + x", "Symbol('a')", "sin(x, k=2)", "9**9**9**9", "x if y else t",
    "[x, y]", "x; y", "import os", "globals()", "sin.__globals__",
])
def test_parser_rejects(bad):
    with pytest.raises(ExpressionError):
        parse_safe(bad, ("x", "y", "t"))


def test_parser_accepts_math():
    import sympy
    e = parse_safe("1 + sin(pi*x)*cos(pi*y) + x^2 + exp(-t)*sqrt(Abs(y)) + E", ("x", "y", "t"))
    x, y, t = sympy.symbols("x y t", real=True)
    ref = 1 + sympy.sin(sympy.pi * x) * sympy.cos(sympy.pi * y) + x ** 2 \
        + sympy.exp(-t) * sympy.sqrt(sympy.Abs(y)) + sympy.E
    assert sympy.simplify(e - ref) == 0
    with pytest.raises(ExpressionError, match="unknown symbol 't'"):
        parse_safe("x + t", ("x", "y"))


# ---------------------------------------------------------------- manufactured data
def test_paper_manufactured_data():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (50, 2))
    th = rng.uniform(0, 2 * PI, 50)
    N = np.stack([np.cos(th), np.sin(th)], 1)
    x, y = X[:, 0], X[:, 1]
    u = 1 + np.sin(PI * x) * np.cos(PI * y)
    lap = -2 * PI ** 2 * np.sin(PI * x) * np.cos(PI * y)
    dudn = PI * np.cos(PI * x) * np.cos(PI * y) * N[:, 0] - PI * np.sin(PI * x) * np.sin(PI * y) * N[:, 1]
    d = manufactured("poisson")
    # scales: the magnitudes of the terms each formula adds (|sin|, |cos| <= 1, u <= 2)
    _close(d.f_at(X), lap, 2 * PI ** 2)
    _close(d.g_at(X, N), dudn + u, 2 * PI + 2)
    _close(d.exact_at(X), u, 2)
    dn = manufactured("nonlinear-poisson")
    _close(dn.f_at(X), lap - np.exp(u), 2 * PI ** 2 + np.exp(2))
    dd = manufactured("poisson", alpha=0.0, beta=1.0)
    _close(dd.g_at(X, N), u, 2)
    h = manufactured("heat")
    t = 0.3
    s = np.sin(PI * x) * np.cos(PI * y)
    _close(h.f_at(X, t), PI * np.cos(PI * t) * s + 2 * PI ** 2 * s * np.sin(PI * t),
           PI + 2 * PI ** 2)
    np.testing.assert_allclose(h.u0_at(X), np.ones(50))


def test_forcing_given_directly_has_no_exact():
    d = from_forcing("poisson", "-2", "x*nx + y*ny")
    X = np.array([[1.0, 0.0], [0.0, 0.5]])
    N = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(d.f_at(X), [-2, -2])
    np.testing.assert_allclose(d.g_at(X, N), [1.0, 0.5])
    assert not d.has_exact
    with pytest.raises(ValueError, match="--u0"):
        from_forcing("heat", "1", "0")
    with pytest.raises(ExpressionError):
        from_forcing("poisson", "__import__('os')", "0")


# ---------------------------------------------------------------- numpy reference of eq. (12)/(16)
def _np_mlp(model, X, k=None):
    """numpy forward of the MLP; with k also d u / d X[:, k] (tangent propagation)."""
    Ws = [(l.weight.detach().double().numpy(), l.bias.detach().double().numpy()) for l in model.layers]
    h, dh = X, None
    for i, (W, b) in enumerate(Ws):
        z = h @ W.T + b
        dz = None
        if k is not None:
            dz = np.broadcast_to(W[:, k], z.shape) if i == 0 else dh @ W.T
        if i < len(Ws) - 1:
            h = np.tanh(z)
            dh = None if k is None else (1 - h ** 2) * dz
        else:
            return (z[:, 0], None if k is None else dz[:, 0])


def _np_loss(model, kind, cloud, L, B, nt=24):
    d = manufactured(kind)
    X, rows, bnd = cloud.nodes, cloud.collocation, cloud.boundary
    nr, nb = len(rows), len(bnd)
    if kind != "heat":
        u, _ = _np_mlp(model, X)
        r = L @ u - d.f_at(rows)
        if kind == "nonlinear-poisson":
            r -= np.exp(u[:nr])
        b = B @ u - d.g_at(bnd, cloud.normals)
        return (r @ r) / nr + (b @ b) / nb
    T = np.linspace(0, 1, nt + 1)
    pde = bc = 0.0
    for k, t in enumerate(T):
        u, ut = _np_mlp(model, np.hstack([X, np.full((len(X), 1), t)]), k=2)
        r = ut[:nr] - L @ u - d.f_at(rows, t)
        b = B @ u - d.g_at(bnd, cloud.normals, t)
        pde += r @ r
        bc += b @ b
        if k == 0:
            ic = u[:nr] - d.u0_at(rows)
            icl = ic @ ic / nr
    return icl + pde / ((nt + 1) * nr) + bc / ((nt + 1) * nb)


@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson", "heat"])
def test_dt_loss_and_gradient_match_numpy(kind, cloud, system, spread):
    nt = 6
    P = make_problem(manufactured(kind), "dt", nt=nt)
    model = MLP(P.input_dim(2), width=12, depth=2, seed=4)
    L, B = system.L.to_scipy(), system.B.to_scipy()
    ref = _np_loss(model, kind, cloud, L, B, nt=nt)
    r = P.residual(model, system)
    loss = (r * r).sum()
    # torch (network, CSR SpMV, sums) against numpy/scipy doing the same arithmetic in other
    # orders: measured |loss - ref| / ref <= 3.9 eps (threads 1 and 2); tolerance 64 eps.
    tol = 64 * EPS
    for got in (float(loss.detach()), P.loss(model, system),
                sum(P.loss_terms(model, system).values())):
        spread("problems.loss_vs_numpy", abs(got - ref) / ref, tol)
        assert abs(got - ref) <= tol * ref
    # gradient: directional derivative against a central difference of the numpy loss
    loss.backward()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    dd = sum(float((p.grad * vi).sum()) for p, vi in zip(params, v))
    eps = 1e-6
    vals = []
    for s in (+1, -1):
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.add_(s * eps * vi)
        vals.append(_np_loss(model, kind, cloud, L, B, nt=nt))
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.sub_(s * eps * vi)
    fd = (vals[0] - vals[1]) / (2 * eps)
    assert dd == pytest.approx(fd, rel=1e-6)


class _Exact(nn.Module):
    """u = 1 + sin(pi x) cos(pi y) [sin(pi t)] as a 'network' (for residual checks)."""

    def __init__(self, heat=False):
        super().__init__()
        self.heat = heat
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.dtype, self.device = torch.float64, torch.device("cpu")

    def forward(self, X):
        u = 1 + torch.sin(PI * X[:, 0]) * torch.cos(PI * X[:, 1]) * (
            torch.sin(PI * X[:, 2]) if self.heat else 1.0)
        return (u + 0 * self.dummy).reshape(-1, 1)


@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson", "heat"])
def test_exact_solution_has_small_residuals(kind, system, spread):
    data = manufactured(kind)
    ex = _Exact(kind == "heat")
    van = make_problem(data, "vanilla", nt=4)
    dt = make_problem(data, "dt", nt=4)
    # Autograd derivatives of the closed form are exact up to round-off: every residual is a few
    # eps times its terms' magnitude (<= 4 pi^2 bounds |lap u|, |u_t|, |f|, |du/dn| + |u|).
    # Measured sqrt(vanilla loss) and the autograd PDE residual <= 1.2e-15 = 0.14 eps 4 pi^2
    # (threads 1 and 2); tolerance 64 eps 4 pi^2 = 5.6e-13.
    tol = 64 * EPS * 4 * PI ** 2
    spread("problems.exact.vanilla_residual", math.sqrt(van.loss(ex, system)), tol)
    assert math.sqrt(van.loss(ex, system)) <= tol
    assert dt.loss(ex, system) < 1e-2    # RBF-FD truncation error only (p = 4, N = 220)
    # the test-set error of the closed form against itself (torch vs numpy): measured
    # <= 0.15 eps; tolerance CLOSED_FORM eps
    spread("problems.exact.rel_l2", dt.rel_l2(ex, system), CLOSED_FORM * EPS)
    assert dt.rel_l2(ex, system) <= CLOSED_FORM * EPS
    norms = dt.residual_norms(ex, system)
    spread("problems.exact.autograd_pde_res", norms["autograd_pde_res"], tol)
    assert norms["autograd_pde_res"] <= tol and norms["discrete_pde_res"] < 0.1
    if kind == "heat":
        v = dt.network_values(ex, system)
        assert isinstance(v, HeatValues) and v.U.shape == (system.nodes.shape[0], 5)
        t = torch.linspace(0, 1, 5, dtype=torch.float64)
        X = torch.as_tensor(system.nodes)
        ut = PI * torch.sin(PI * X[:, :1]) * torch.cos(PI * X[:, 1:]) * torch.cos(PI * t)
        # autograd's d/dt of the closed form against the formula: measured <= 0.64 eps pi
        # (threads 1 and 2); tolerance CLOSED_FORM eps pi
        _close(v.Ut.detach().numpy(), ut.numpy(), PI)


def test_partitioned_systems_sum_to_the_global_loss(cloud, system, spread):
    """Forcing data comes only from the local nodes: two 'ranks' with row subsets reproduce
    the global loss (eq. (12) normalised by the GLOBAL counts)."""
    P = make_problem(manufactured("nonlinear-poisson"), "dt")
    model = MLP(2, width=10, depth=2, seed=1)
    full = P.loss(model, system)
    L, B = system.L.to_scipy(), system.B.to_scipy()
    nr, nb, ni = system.n_rows_L, system.n_rows_B, system.n_interior
    total, m = 0.0, 0
    for part in (slice(0, nr // 2), slice(nr // 2, nr)):
        rows = np.arange(nr)[part]
        brow = rows[rows >= ni] - ni
        # this 'rank' sees ALL nodes as columns (simplest halo) but only its own rows
        s = DiscreteSystem(nodes=system.nodes, row_index=rows, boundary_index=brow + ni,
                           interior_index=rows[rows < ni], normals=system.normals[brow],
                           L=TorchCSROperator(L[rows]), B=TorchCSROperator(B[brow]),
                           n_rows_L=nr, n_rows_B=nb, n_interior=ni, comm=system.comm)
        r = make_problem(manufactured("nonlinear-poisson"), "dt").residual(model, s)
        total += float((r * r).sum())
        m += r.numel()
    # Each residual entry comes from the same row operations (row subsets of one CSR matrix);
    # only the grouping of the positive sum of m squares differs: <= 2 gamma_m relative
    # (Higham lemma 3.1). Measured: 0.
    spread("problems.partitioned_loss", abs(total - full) / full, 2 * gamma(m))
    assert abs(total - full) <= 2 * gamma(m) * full

"""Jacobians of the DT-PINN residual (dtpinn_dist.model.jacobian, optimizer.least_squares): hand-derived network Jacobian,
structured dense J, J J^T from the tangent kernel, and the matrix-free J v / J^T y, all against
autograd and finite differences.

Tolerances: a derived round-off bound where the two sides are sums of the same terms in another
order (see roundoff.py); otherwise C eps |scale| with the absolute-value scale of the computation
(so cancellation cannot make it flaky) and C at least 10x the largest err / (eps |scale|)
measured under 1 and 2 threads (tests/measure_spread.py; figures in the comments).
"""
import pytest
import torch
from torch import nn

from dtpinn_dist.model import MLP
from dtpinn_dist.model.jacobian import mlp_factors, mlp_value_jacobian, network_jacobian
from dtpinn_dist.optimizer.least_squares import PINNLeastSquares, _FunctionalModel, _model_at
from dtpinn_dist.optimizer.lm import JacobianTooLarge, LevenbergMarquardt
from dtpinn_dist.problem import discretize, paper_problem
from roundoff import gamma, row_nnz

F64 = torch.float64
EPS = torch.finfo(F64).eps


@pytest.fixture(scope="module")
def system():
    """A generated disk cloud the size of the authors' smallest (582 nodes): nothing here is
    about that file, so a plain clone runs these tests."""
    from dtpinn_dist.geometry import make_cloud

    return make_cloud("disk", n=582, seed=5)


@pytest.fixture(scope="module")
def heat_system():
    """A smaller cloud for the heat residual, whose reverse-mode reference Jacobian takes one
    backward pass per row (ic + 4 time slices of pde and bc: ~5.5 rows per node)."""
    from dtpinn_dist.geometry import make_cloud

    return make_cloud("disk", n=200, seed=5)


_DISCS = {}


def _setup(cloud, kind, width=8, depth=2, seed=1):
    key = (id(cloud), kind)
    if key not in _DISCS:
        _DISCS[key] = discretize(paper_problem(kind, nt=3 if kind == "heat" else None), cloud, 3)
    disc = _DISCS[key]
    model = MLP(disc.input_dim, width, depth, seed=seed)
    return disc, model, PINNLeastSquares(model, disc)


def _autograd_J(lsq, theta):
    f = lambda th: lsq.disc.residual(_FunctionalModel(lsq.model, th))  # noqa: E731
    return torch.autograd.functional.jacobian(f, theta)


def _seeded(model, seed):
    """``nn.Linear`` initialises from the global RNG: redraw every layer from a seeded generator
    (the same U(-1/sqrt(fan_in), 1/sqrt(fan_in)) law), so nothing depends on test order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                b = m.in_features ** -0.5
                m.weight.uniform_(-b, b, generator=g)
                m.bias.uniform_(-b, b, generator=g)
    return model


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _abs_scale(lsq, th):
    """``(|A_tilde| |Ju|, |A_tilde|, Ju)``: the absolute-value scale of ``J = A_tilde Ju``
    entry by entry (the Laplacian rows cancel, so ``|J|`` itself is far smaller)."""
    A = abs(lsq.structured_matrix(th))
    Ju = mlp_value_jacobian(_model_at(lsq.model, th), lsq._x)[1]
    return torch.from_numpy(A @ Ju.abs().numpy()), A, Ju


def _abs_network_jacobian(model, x):
    """The rounding scale of a tanh MLP's backward sweep: ``Ju`` with every product of
    ``delta_k = (delta_{k+1} W_{k+1}) tanh'(z_k)`` taken in absolute values (``delta`` can cancel,
    so ``|Ju|`` understates how large the rounded terms were)."""
    _, factors = mlp_factors(model, x)
    deltas, delta = [None] * len(factors), torch.ones(x.shape[0], 1, dtype=x.dtype)
    for k in range(len(factors) - 1, -1, -1):
        deltas[k] = delta
        if k > 0:  # factors[k][2] = tanh(z_{k-1}): tanh' = 1 - a^2
            delta = (delta @ factors[k][0].weight.abs()) * (1 - factors[k][2] ** 2)
    cols = {}
    for (m, _, a), d in zip(factors, deltas):
        cols[id(m.weight)] = (d[:, :, None] * a.abs()[:, None, :]).reshape(x.shape[0], -1)
        cols[id(m.bias)] = d
    return torch.cat([cols[id(p)] for p in model.parameters()], 1).detach()


@pytest.mark.parametrize("make", [
    lambda: MLP(2, 7, 3, seed=2),
    lambda: MLP(3, 5, 2, seed=4, activation="sin"),
    lambda: _seeded(nn.Sequential(nn.Linear(2, 6, dtype=F64), nn.Tanh(),
                                  nn.Linear(6, 6, dtype=F64), nn.Tanh(),
                                  nn.Linear(6, 1, dtype=F64)), seed=0),
])
def test_network_jacobian_equals_jacrev(make, spread):
    model = make()
    x = _randn(23, model[0].in_features if isinstance(model, nn.Sequential) else model.in_dim,
               seed=0)
    u, Ju = mlp_value_jacobian(model, x)
    params = dict(model.named_parameters())
    ref = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)).reshape(-1))(params)
    ref = torch.cat([ref[k].reshape(x.shape[0], -1) for k in params], 1)
    # The same layer formulas as the forward pass: measured max |u - model(x)| / (eps max|u|)
    # = 0 (threads 1 and 2); tolerance 16 eps max|u|, room for a kernel that fuses differently.
    err_u = (u - model(x).reshape(-1)).abs().max()
    tol_u = 16 * EPS * u.abs().max()
    spread("jacobian.network.u", err_u, tol_u)
    assert err_u <= tol_u
    # Hand-derived backward sweep against autograd's: measured max |Ju - ref| / (eps max|ref|)
    # = 0.25 (threads 1 and 2); tolerance 64 eps max|ref|.
    err = (Ju - ref).abs().max()
    tol = 64 * EPS * ref.abs().max()
    spread("jacobian.network.Ju", err, tol)
    assert err <= tol


def test_network_jacobian_falls_back_for_other_models(spread):
    class Scaled(nn.Module):  # not a plain MLP: a custom forward
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1, dtype=F64)

        def forward(self, x):
            return 3.0 * torch.sin(self.lin(x))

    m = _seeded(Scaled(), seed=1)
    x = _randn(9, 2, seed=1)
    u, Ju = network_jacobian(m, x)
    w, b = m.lin.weight, m.lin.bias
    z = (x @ w.T + b)[:, 0]
    ref = torch.cat([3 * torch.cos(z)[:, None] * x, 3 * torch.cos(z)[:, None]], 1)
    # jacrev applies the same elementary operations as this formula: measured max |Ju - ref| /
    # (eps max|ref|) = 0 (threads 1 and 2); tolerance 16 eps max|ref| (a few roundings of z).
    err = (Ju - ref).abs().max()
    tol = 16 * EPS * ref.abs().max()
    spread("jacobian.fallback.Ju", err, tol)
    assert err <= tol
    assert torch.allclose(u, 3 * torch.sin(z))


@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson"])
def test_structured_jacobian_equals_autograd_and_fd(system, kind, spread):
    prob, model, lsq = _setup(system, kind)
    th = lsq.get_params()
    assert lsq.has_fast_jacobian()
    r, J = lsq.jacobian(th)
    ref = _autograd_J(lsq, th)
    assert torch.equal(r, prob.residual(model).detach())
    # A_tilde Ju (hand-derived Ju) against autograd's backward through L^T and the network.
    # Scale: |A_tilde| |Ju|_abs, the backward sweep in absolute values (its rounding scale).
    # Measured max |J - ref| / (eps scale) = 1.9 (threads 1 and 2); tolerance 64.
    A = abs(lsq.structured_matrix(th))
    scale = torch.from_numpy(A @ _abs_network_jacobian(_model_at(model, th), lsq._x).numpy())
    ratio = ((J - ref).abs() / (EPS * scale)).max()
    spread("jacobian.structured/eps|A||Ju|abs", ratio, 64)
    assert ratio <= 64
    # central finite differences along random directions (truncation ~h^2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(th.numel(), generator=gen, dtype=F64)
        h = 1e-5
        fd = (lsq.residual(th + h * v) - lsq.residual(th - h * v)) / (2 * h)
        assert (fd - J @ v).abs().max() <= 1e-6 * (J @ v).abs().max()


@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson"])
def test_gram_from_tangent_kernel(system, kind, spread):
    """J J^T from the network's tangent kernel and J^T z from its factors equal explicit J."""
    _, model, lsq = _setup(system, kind, width=10, depth=3)
    th = lsq.get_params()
    r, J = lsq.jacobian(th)
    r2, G, jt = lsq.gram(th)
    ref = J @ J.T
    assert torch.equal(r, r2)
    S, A, Ju = _abs_scale(lsq, th)  # S = |A_tilde| |Ju|
    n_r = int(max(row_nnz(A).max(), row_nnz(A.T).max()))
    # Round-off bound: G = A (Ju Ju^T) A^T (the kernel as layer-wise Gram and Hadamard products)
    # and J J^T = (A Ju)(A Ju)^T sum the same terms a_ip Ju_pk Ju_qk a_jq; in either order each
    # term passes through at most k = 2 n_r + n_params + 2 depth + 4 roundings, so
    # |G - J J^T| <= 2 gamma_k (|A||Ju|)(|A||Ju|)^T (Higham lemma 3.1; the Laplacian rows cancel,
    # so this is far above eps |J J^T|). Measured: 0.0025 of the bound.
    k = 2 * n_r + th.numel() + 2 * 3 + 4
    bound = 2 * gamma(k) * (S @ S.T)
    spread("jacobian.gram.G/bound", ((G - ref).abs() / bound).max(), 1.0)
    assert torch.all((G - ref).abs() <= bound)
    assert (G - ref).abs().max() <= 1e-7 * ref.abs().max()
    # J^T z: jt applies A^T then the factors (delta a^T); J.T @ z multiplies the explicit
    # J = A (delta a^T): the same terms Ju_pk a_ip z_i, each through at most
    # k = 2 n_r + n_rows + 3 roundings: |jt(z) - J^T z| <= 2 gamma_k |Ju|^T |A|^T |z|.
    # Measured: 0.0002 of the bound. (Issue 9: the old 1e-12 max|J^T z| failed on another CPU.)
    z = _randn(r.numel(), seed=3)
    k = 2 * n_r + r.numel() + 3
    bound = 2 * gamma(k) * (S.T @ z.abs())
    err = (jt(z) - J.T @ z).abs()
    spread("jacobian.gram.jt/bound", (err / bound).max(), 1.0)
    assert torch.all(err <= bound)


def test_heat_generic_jacobian_equals_autograd(heat_system, spread):
    prob, model, lsq = _setup(heat_system, "heat", width=5, depth=2)
    th = lsq.get_params()
    assert not lsq.has_fast_jacobian()
    with pytest.warns(UserWarning, match="step='cg'"):
        r, J = lsq.jacobian(th)
    ref = _autograd_J(lsq, th)
    # Forward-mode columns against reverse-mode rows of the same residual (u_t by autograd, L
    # rows that cancel): measured max |J - ref| / (eps max|ref|) = 1.5e3 (threads 1 and 2);
    # tolerance 2^15 eps max|ref| = 7e-12 max|ref|.
    err, tol = (J - ref).abs().max(), 2 ** 15 * EPS * ref.abs().max()
    spread("jacobian.heat", err, tol)
    assert err <= tol


@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson", "heat"])
def test_jvp_vjp_adjoint(system, heat_system, kind, spread):
    """<J v, y> = <v, J^T y>, and J v equals the autograd Jacobian times v."""
    _, _, lsq = _setup(heat_system if kind == "heat" else system, kind, width=6, depth=2)
    th = lsq.get_params()
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(th.numel(), generator=gen, dtype=F64)
    Jv = lsq.jvp(th, v)
    y = torch.randn(Jv.numel(), generator=gen, dtype=F64)
    JTy = lsq.vjp(th, y)
    a, b = torch.dot(Jv, y), torch.dot(v, JTy)
    ref = _autograd_J(lsq, th)
    # Both sides sum the terms y_i J_ik v_k (J through the network and L); the absolute scale is
    # |y|^T |J| |v| (|J| understates it where the network's backward sweep cancels). Measured
    # |a - b| / (eps |y|^T|J||v|) = 46 (threads 1 and 2); tolerance 2^10.
    scale = y.abs() @ ref.abs() @ v.abs()
    spread("jacobian.adjoint/eps|y||J||v|", abs(a - b) / (EPS * scale), 2 ** 10)
    assert abs(a - b) <= 2 ** 10 * EPS * scale
    # Forward mode against the autograd rows (both through the cancelling L rows): measured
    # max |Jv - J v| / (eps max(|J||v|)) = 930 (threads 1 and 2); tolerance 2^14
    # (3.6e-12 relative).
    err = (Jv - ref @ v).abs().max() / (EPS * (ref.abs() @ v.abs()).max())
    spread("jacobian.jvp/eps|J||v|", err, 2 ** 14)
    assert err <= 2 ** 14


def test_dense_refuses_over_memory_budget(system):
    _, _, lsq = _setup(system, "poisson")
    lm = LevenbergMarquardt(lsq, step="dense", memory_budget=1e5)
    with pytest.raises(JacobianTooLarge, match="step='cg'"):
        lm.step()
    # 'auto' falls back to the matrix-free step instead
    lm = LevenbergMarquardt(lsq, step="auto", memory_budget=1e5)
    assert lm.resolve_step() == "cg"

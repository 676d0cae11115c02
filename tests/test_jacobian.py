"""Jacobians of the DT-PINN residual (dtpinn_dist.optim.jacobian): hand-derived network Jacobian,
structured dense J, J J^T from the tangent kernel, and the matrix-free J v / J^T y, all against
autograd and finite differences."""
import pytest
import torch
from torch import nn

from dtpinn_dist.model import MLP
from dtpinn_dist.optim.jacobian import (DTPINNLeastSquares, _FunctionalModel, mlp_factors,
                                        mlp_ntk, mlp_value_jacobian, network_jacobian)
from dtpinn_dist.optim.lm import JacobianTooLarge, LevenbergMarquardt
from dtpinn_dist.problems import make_problem, manufactured

torch.set_default_dtype(torch.float64)


@pytest.fixture(scope="module")
def system():
    """A generated disk cloud the size of the authors' smallest (582 nodes): nothing here is
    about that file, so a plain clone runs these tests."""
    from dtpinn_dist.geometry import make_cloud
    from dtpinn_dist.operators.torch_csr import serial_system

    return serial_system(make_cloud("disk", n=582, seed=5), 3)


def _setup(system, kind, width=8, depth=2, seed=1):
    prob = make_problem(manufactured(kind), nt=3)
    model = MLP(prob.input_dim(2), width, depth, seed=seed)
    return prob, model, DTPINNLeastSquares(model, prob, system)


def _autograd_J(lsq, theta):
    f = lambda th: lsq.problem.residual(_FunctionalModel(lsq.model, th), lsq.system)  # noqa: E731
    return torch.autograd.functional.jacobian(f, theta)


@pytest.mark.parametrize("make", [
    lambda: MLP(2, 7, 3, seed=2),
    lambda: MLP(3, 5, 2, seed=4, activation="sin"),
    lambda: nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1)),
])
def test_network_jacobian_equals_jacrev(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(23, model[0].in_features if isinstance(model, nn.Sequential) else model.in_dim)
    u, Ju = mlp_value_jacobian(model, x)
    params = dict(model.named_parameters())
    ref = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)).reshape(-1))(params)
    ref = torch.cat([ref[k].reshape(x.shape[0], -1) for k in params], 1)
    assert torch.allclose(u, model(x).reshape(-1), rtol=0, atol=1e-14)
    assert (Ju - ref).abs().max() <= 1e-13 * ref.abs().max()


def test_network_jacobian_falls_back_for_other_models():
    class Scaled(nn.Module):  # not a plain MLP: a custom forward
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x):
            return 3.0 * torch.sin(self.lin(x))

    m = Scaled()
    x = torch.randn(9, 2)
    u, Ju = network_jacobian(m, x)
    w, b = m.lin.weight, m.lin.bias
    z = (x @ w.T + b)[:, 0]
    ref = torch.cat([3 * torch.cos(z)[:, None] * x, 3 * torch.cos(z)[:, None]], 1)
    assert torch.allclose(Ju, ref, atol=1e-14) and torch.allclose(u, 3 * torch.sin(z))


@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson"])
def test_structured_jacobian_equals_autograd_and_fd(system, kind):
    prob, model, lsq = _setup(system, kind)
    th = lsq.get_params()
    assert lsq.has_fast_jacobian(th)
    r, J = lsq.jacobian(th)
    ref = _autograd_J(lsq, th)
    assert torch.equal(r, prob.residual(model, system).detach())
    assert (J - ref).abs().max() <= 1e-12 * ref.abs().max()
    # central finite differences along random directions (truncation ~h^2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(th.numel(), generator=gen)
        h = 1e-5
        fd = (lsq.residual(th + h * v) - lsq.residual(th - h * v)) / (2 * h)
        assert (fd - J @ v).abs().max() <= 1e-6 * (J @ v).abs().max()


@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson"])
def test_gram_from_tangent_kernel(system, kind):
    """J J^T from the network's tangent kernel and J^T z from its factors equal explicit J."""
    _, model, lsq = _setup(system, kind, width=10, depth=3)
    th = lsq.get_params()
    r, J = lsq.jacobian(th)
    r2, G, jt = lsq.gram(th)
    ref = J @ J.T
    assert torch.equal(r, r2)
    # Round-off bound of A K A^T: eps |A| |K| |A|^T (the Laplacian rows cancel, so this is
    # larger than |J J^T| itself; about 1e-9 relative here).
    A = abs(lsq.structured_matrix(th))
    K = mlp_ntk(mlp_factors(model, lsq._x)[1]).abs().numpy()
    bound = torch.from_numpy(A @ (A @ K).T).abs().max()
    assert (G - ref).abs().max() <= 1e3 * torch.finfo(G.dtype).eps * bound
    assert (G - ref).abs().max() <= 1e-7 * ref.abs().max()
    z = torch.randn(r.numel())
    assert (jt(z) - J.T @ z).abs().max() <= 1e-12 * (J.T @ z).abs().max()


def test_heat_generic_jacobian_equals_autograd(system):
    prob, model, lsq = _setup(system, "heat", width=5, depth=2)
    th = lsq.get_params()
    assert not lsq.has_fast_jacobian(th)
    with pytest.warns(UserWarning, match="step='cg'"):
        r, J = lsq.jacobian(th)
    ref = _autograd_J(lsq, th)
    assert (J - ref).abs().max() <= 1e-12 * ref.abs().max()


@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson", "heat"])
def test_jvp_vjp_adjoint(system, kind):
    """<J v, y> = <v, J^T y>, and J v equals the autograd Jacobian times v."""
    _, _, lsq = _setup(system, kind, width=6, depth=2)
    th = lsq.get_params()
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(th.numel(), generator=gen)
    Jv = lsq.jvp(th, v)
    y = torch.randn(Jv.numel(), generator=gen)
    JTy = lsq.vjp(th, y)
    a, b = torch.dot(Jv, y), torch.dot(v, JTy)
    assert abs(a - b) <= 1e-12 * (Jv.norm() * y.norm())
    ref = _autograd_J(lsq, th)
    assert (Jv - ref @ v).abs().max() <= 1e-12 * (ref.abs() @ v.abs()).max()


def test_dense_refuses_over_memory_budget(system):
    _, _, lsq = _setup(system, "poisson")
    lm = LevenbergMarquardt(lsq, step="dense", memory_budget=1e5)
    with pytest.raises(JacobianTooLarge, match="step='cg'"):
        lm.step()
    # 'auto' falls back to the matrix-free step instead
    lm = LevenbergMarquardt(lsq, step="auto", memory_budget=1e5)
    assert lm.resolve_step() == "cg"

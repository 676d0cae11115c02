"""A user PDE with two boundary parts (Dirichlet and Neumann) discretised over 2 and 3 ranks gives
the serial loss, gradient and Jacobian products (``pytest -m mpi`` under ``mpirun``; serially the
same test compares the PETSc backend on one rank with the torch backend)."""
import numpy as np
import pytest
import torch

pytest.importorskip("petsc4py")
pytest.importorskip("mpi4py")

import dtpinn_dist as dt  # noqa: E402
from dtpinn_dist.comm import SerialComm  # noqa: E402
from dtpinn_dist.optimizer.least_squares import PINNLeastSquares  # noqa: E402
from clouds import tagged_square  # noqa: E402
from roundoff import C, EPS, loss_bound, residual_scale  # noqa: E402

PDE = "-div((1+x**2)*grad(u)) + 0.5*dx(u) + u**3"


def _square():
    return tagged_square(500, 4, n_test=300)


@pytest.fixture(scope="module")
def pair(comm):
    cloud = _square()
    prob = dt.Problem(PDE, bc={"left": dt.Neumann(), "*": dt.Dirichlet()},
                      exact="sin(pi*x)*cos(pi*y) + x*y")
    serial = dt.discretize(prob, cloud, 4, comm=SerialComm())
    dist = dt.discretize(prob, cloud, 4, comm=comm, backend="petsc", partitioner="hilbert")
    return serial, dist


def _loss_grad(disc, model):
    model.zero_grad()
    r = disc.residual(model)
    (r * r).sum().backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    return float(disc.comm.sum((r * r).sum().detach())), disc.comm.sum(g.clone())


@pytest.mark.mpi
def test_two_part_user_pde_distributed_equals_serial(comm, pair):
    serial, dist = pair
    assert dist.system.n_collocation == serial.system.n_collocation
    model = dt.MLP(2, 20, 2, seed=3)
    ls, gs = _loss_grad(serial, model)
    ld, gd = _loss_grad(dist, model)
    with torch.no_grad():
        U = model(serial.data["X"]).reshape(-1)
        r = serial.values_residual(U)
    scale = residual_scale(serial, U)
    assert abs(ld - ls) <= loss_bound(r, scale)
    # gradient 2 Ju^T (A^T r): the sparse sums round differently, |dA^T r| <= C eps |A|^T |r|,
    # and r itself differs by C eps scale
    A, Ju = _abs_factors(serial, model, U)
    gbound = 2 * Ju.T @ torch.from_numpy(A.T @ (C * EPS * (scale + r.abs())).numpy())
    assert torch.all((gd - gs).abs() <= gbound)
    assert comm.same_on_all_ranks(gd)
    # sums of n positive squares in another order: relative difference <= n eps (each of num, den)
    n = len(serial.data["test"])
    assert abs(dist.rel_l2(model) - serial.rel_l2(model)) <= 4 * n * EPS * serial.rel_l2(model)


@pytest.mark.mpi
def test_two_part_user_pde_jacobian_products_equal_serial(comm, pair):
    serial, dist = pair
    model = dt.MLP(2, 8, 2, seed=6)
    S, D = PINNLeastSquares(model, serial), PINNLeastSquares(model, dist)
    th = S.get_params()
    gen = torch.Generator().manual_seed(7)  # same draws on every rank
    v = torch.randn(th.numel(), generator=gen, dtype=th.dtype)
    # distributed rows -> serial rows: collocation rows then boundary rows of this rank
    P = dist.system.info["partition"]
    rows = np.concatenate([P.L_rows(comm.rank), serial.system.n_collocation
                           + P.B_rows(comm.rank)])
    JvS, JvD = S.jvp(th, v), D.jvp(th, v)
    with torch.no_grad():
        U = model(serial.data["X"]).reshape(-1)
    A, Ju = _abs_factors(serial, model, U)
    Jsc = torch.from_numpy(A @ (Ju @ v.abs()).numpy())
    assert torch.all((JvD - JvS[rows]).abs() <= C * EPS * Jsc[rows])
    y = torch.randn(JvS.numel(), generator=gen, dtype=th.dtype)
    gS = S.vjp(th, y)
    gD = comm.sum(D.vjp(th, y[rows].contiguous()))
    bound = C * EPS * (Ju.T @ torch.from_numpy(A.T @ y.abs().numpy()))
    assert torch.all((gD - gS).abs() <= bound)


def _abs_factors(disc, model, U):
    """|A~| (scipy) and |Ju| of J = A~ Ju: the magnitudes every Jacobian product rounds on."""
    from dtpinn_dist.model.jacobian import network_jacobian

    _, Ju = network_jacobian(model, disc.data["X"])
    return abs(disc.linearization_matrix(U)), Ju.abs()

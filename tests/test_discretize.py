"""discretize(): a declared problem on a cloud -> exactly the operators it needs, the data, the DT
and vanilla residuals, the declared Jacobian structure, and the direct discrete solve.

Checked the numerical way: the paper's losses against the formulas of eqs. (4), (12), (16) written
out with the ground-floor operators; each example PDE's residual and gradient against a numpy
evaluation; the Levenberg-Marquardt Jacobian against autograd and finite differences; combined
operators exact on polynomials; the discrete solution converging at order p on refinement.
"""
import math

import numpy as np
import pytest
import sympy
import torch

import dtpinn_dist as dt
from dtpinn_dist.model.jacobian import network_jacobian
from dtpinn_dist.operators.polynomials import multi_indices
from dtpinn_dist.operators.rbffd import (Operator, boundary_matrix, laplacian_matrix,
                                         rbffd_weights, stencil_params)
from dtpinn_dist.optimizer.least_squares import PINNLeastSquares, _FunctionalModel
from dtpinn_dist.problem.solve import solve_discrete
from clouds import tagged_square
from roundoff import gamma, jacobian_against_autograd

EPS = np.finfo(np.float64).eps
U19 = "1 + sin(pi*x)*cos(pi*y)"  # paper eq. (19)


@pytest.fixture(scope="module")
def disk():
    return dt.make_cloud("disk", n=500, seed=3, n_test=300)


def _loss_grad(disc, model):
    model.zero_grad()
    r = disc.residual(model)
    loss = (r * r).sum()
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


def _jac_bound(model, X, wU):
    """Round-off bound of a gradient Ju^T w from its per-node factor bound ``wU`` (n,)."""
    _, Ju = network_jacobian(model, X)
    return (Ju.abs().T @ wU).norm()


# ------------------------------------------------------------------------------- paper problems
@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson"])
def test_paper_dt_loss_is_eq12(disk, kind):
    """The declared paper problem's loss and gradient are eq. (12) written out with L, B."""
    prob = dt.paper_problem(kind)
    disc = dt.discretize(prob, disk, 4, weighting="count")  # the paper's weights
    model = dt.MLP(2, 20, 3, seed=5)
    loss, grad = _loss_grad(disc, model)
    # eq. (12) by hand: ||L u - [exp(u)] - f||^2 / (Ni + Nb) + ||B u - g||^2 / Nb
    c = disk.with_ghost() if disk.ghost is None else disk
    L = torch.from_numpy(laplacian_matrix(c, 4).toarray())
    B = torch.from_numpy(boundary_matrix(c, 4).toarray())
    X = torch.from_numpy(c.nodes)
    xs = sympy.symbols("x y", real=True)
    ue = sympy.sympify(U19, locals=dict(zip("xy", xs)))
    lap = sum(sympy.diff(ue, s, 2) for s in xs)
    f_e = lap - sympy.exp(ue) if kind == "nonlinear-poisson" else lap
    nx, ny = sympy.symbols("nx ny", real=True)
    g_e = nx * sympy.diff(ue, xs[0]) + ny * sympy.diff(ue, xs[1]) + ue
    col = c.collocation
    f = torch.from_numpy(np.asarray(sympy.lambdify(xs, f_e)(col[:, 0], col[:, 1]), float))
    g = torch.from_numpy(np.asarray(sympy.lambdify((*xs, nx, ny), g_e)(
        *c.boundary.T, *c.normals.T), float))
    model.zero_grad()
    U = model(X).reshape(-1)
    rL = L @ U - f - (torch.exp(U[:len(col)]) if kind == "nonlinear-poisson" else 0)
    rB = B @ U - g
    ref = (rL ** 2).sum() / len(col) + (rB ** 2).sum() / len(g)
    ref.backward()
    gref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    # Round-off bound: f and g come from two expression evaluators (|df| <= 64 eps |terms|),
    # and the products sum in other orders: |dr| <= 64 eps (|L||U| + |f| + |exp u|).
    with torch.no_grad():
        dL = 64 * EPS * (L.abs() @ U.abs() + f.abs() + U[:len(col)].exp())
        dB = 64 * EPS * (B.abs() @ U.abs() + g.abs())
        bl = 2 * ((rL.abs() * dL).sum() / len(col) + (rB.abs() * dB).sum() / len(g))
        # the gradient w.r.t. U is 2 (L^T rL / N + B^T rB / Nb) (- exp(u) rL / N on the rows)
        wU = 2 * (L.abs().T @ dL / len(col) + B.abs().T @ dB / len(g))
        if kind == "nonlinear-poisson":
            wU[:len(col)] += 2 * U[:len(col)].exp() * dL / len(col)
    # plus the final sums of positive squares, in other orders (Higham lemma 3.1)
    assert abs(loss - float(ref)) <= float(bl) + 2 * float(gamma(len(col) + len(g) + 4)) \
        * float(ref)
    assert (grad - gref).norm() <= _jac_bound(model, X, wU) + 64 * EPS * gref.norm()


def test_paper_heat_dt_loss_is_eq16():
    cloud = dt.make_cloud("disk", n=300, seed=2)
    prob = dt.paper_problem("heat", nt=3)
    disc = dt.discretize(prob, cloud, 3, weighting="count")  # eq. (16)
    model = dt.MLP(3, 12, 2, seed=1)
    loss, _ = _loss_grad(disc, model)
    c = cloud
    L = torch.from_numpy(laplacian_matrix(c, 3).toarray())
    B = torch.from_numpy(boundary_matrix(c, 3).toarray())
    X = torch.from_numpy(c.nodes)
    T = torch.linspace(0, 1, 4, dtype=torch.float64)
    Xt = torch.cat([X.repeat(4, 1), T.repeat_interleave(len(X))[:, None]], 1).requires_grad_(True)
    u = model(Xt).reshape(-1)
    (ut,) = torch.autograd.grad(u.sum(), Xt, create_graph=True)
    U, Ut = u.reshape(4, -1).T, ut[:, 2].reshape(4, -1).T
    col, nb = len(c.collocation), c.n_boundary
    xs = sympy.symbols("x y t", real=True)
    ue = 1 + sympy.sin(sympy.pi * xs[0]) * sympy.cos(sympy.pi * xs[1]) * sympy.sin(sympy.pi * xs[2])
    fe = sympy.diff(ue, xs[2]) - sympy.diff(ue, xs[0], 2) - sympy.diff(ue, xs[1], 2)
    P = c.collocation
    f = torch.from_numpy(np.stack([sympy.lambdify(xs, fe)(P[:, 0], P[:, 1], tk + 0 * P[:, 0])
                                   for tk in T.numpy()], 1))
    nx, ny = sympy.symbols("nx ny", real=True)
    ge = nx * sympy.diff(ue, xs[0]) + ny * sympy.diff(ue, xs[1]) + ue
    gl = sympy.lambdify((*xs, nx, ny), ge)
    Bp = c.boundary
    g = torch.from_numpy(np.stack([gl(Bp[:, 0], Bp[:, 1], tk + 0 * Bp[:, 0], *c.normals.T)
                                   for tk in T.numpy()], 1))
    ref = ((U[:col, 0] - 1) ** 2).sum() / col + ((Ut[:col] - L @ U - f) ** 2).sum() / (4 * col) \
        + ((B @ U - g) ** 2).sum() / (4 * nb)
    # bound as above: 64 eps times the magnitudes that enter each residual
    with torch.no_grad():
        d = 64 * EPS * (L.abs() @ U.abs() + Ut[:col].abs() + f.abs())
        bound = 2 * (((Ut[:col] - L @ U - f).abs() * d).sum() / (4 * col)) \
            + 2 * float(gamma(5 * col + 4 * nb + 4)) * float(ref)  # the final sums
    assert abs(loss - float(ref)) <= float(bound) + 64 * EPS * float(ref)


@pytest.mark.parametrize("kind", ["poisson", "nonlinear-poisson"])
def test_paper_vanilla_loss_is_eq4(disk, kind):
    """Vanilla: autograd Laplacian at interior nodes, autograd normal derivative (eq. (4)),
    checked against torch.func.hessian per point (an independent route)."""
    disc = dt.discretize(dt.paper_problem(kind), disk, 4, method="vanilla", dtype="fp64",
                         weighting="count")  # eq. (4)
    model = dt.MLP(2, 16, 2, seed=7)
    loss, _ = _loss_grad(disc, model)
    c = disk
    Xi = torch.from_numpy(c.interior)
    Xb = torch.from_numpy(c.boundary)
    f1 = lambda p: model(p[None])[0, 0]  # noqa: E731
    H = torch.vmap(torch.func.hessian(f1))(Xi)
    lap = H[:, 0, 0] + H[:, 1, 1]
    G = torch.vmap(torch.func.grad(f1))(Xb)
    u_i, u_b = model(Xi).reshape(-1), model(Xb).reshape(-1)
    xs = sympy.symbols("x y", real=True)
    ue = sympy.sympify(U19, locals=dict(zip("xy", xs)))
    la = sum(sympy.diff(ue, s, 2) for s in xs)
    fe = la - sympy.exp(ue) if kind == "nonlinear-poisson" else la
    f = torch.from_numpy(np.asarray(sympy.lambdify(xs, fe)(*c.interior.T), float))
    nx, ny = sympy.symbols("nx ny", real=True)
    g = torch.from_numpy(np.asarray(sympy.lambdify((*xs, nx, ny), nx * sympy.diff(ue, xs[0])
                                                   + ny * sympy.diff(ue, xs[1]) + ue)(
        *c.boundary.T, *c.normals.T), float))
    n = torch.from_numpy(c.normals)
    rp = lap - f - (torch.exp(u_i) if kind == "nonlinear-poisson" else 0)
    rb = (G * n).sum(1) + u_b - g
    ref = float((rp ** 2).sum() / len(f) + (rb ** 2).sum() / len(g))
    # two autograd routes and two expression evaluators: round-off of the second derivatives
    # (|H| ~ 1e2 for this net) and of f: 1e3 eps relative to each squared term's size
    scale = float(((rp.abs() * (lap.abs() + f.abs() + 1)).sum() / len(f)
                   + (rb.abs() * (G.abs().sum(1) + u_b.abs() + g.abs())).sum() / len(g)))
    assert abs(loss - ref) <= 2e3 * EPS * scale


# ------------------------------------------------------------------------------- example PDEs
EXAMPLES = {
    # name: (pde, exact, numpy residual from (A U, U_rows, {derivative op values}), dR/du terms)
    "variable-coefficient": ("-div((1+x**2)*grad(u)) + 0.5*dx(u) + u**3", "sin(pi*x)*cos(pi*y)"),
    "helmholtz": ("lap(u) + 25*u", "sin(3*x)*cos(4*y)"),
    "burgers": ("u*dx(u) - 0.05*lap(u)", "0.5*sin(pi*x)*y"),
    "minimal-surface": ("(1 + dx(u)**2 + dy(u)**2)**0.5", "1 + x**2 + 0.5*y"),
}


def _numpy_residual(name, disc, U):
    """The example's DT residual (before scaling) written out in numpy from the assembled ops."""
    ops = {k: v.to_scipy() for k, v in disc.system.ops.items()}
    rows = disc.data["rows_idx"].numpy()
    ur = U[rows]
    f = disc.data["f_rows"].numpy()
    if name == "variable-coefficient":
        pde = ops["L"] @ U + ur ** 3
    elif name == "helmholtz":
        pde = ops["L"] @ U + 25 * ur
    elif name == "burgers":
        pde = ops["L"] @ U + ur * (ops["D:u_x"] @ U)
    else:
        pde = np.sqrt(1 + (ops["D:u_x"] @ U) ** 2 + (ops["D:u_y"] @ U) ** 2)
    bc = ops["B"] @ U - disc.data["g"].numpy()
    return pde - f, bc


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_dt_residual_and_gradient_against_numpy(disk, name):
    pde, exact = EXAMPLES[name]
    disc = dt.discretize(dt.Problem(pde, bc=dt.Dirichlet(), exact=exact), disk, 4)
    model = dt.MLP(2, 16, 2, seed=11)
    loss, grad = _loss_grad(disc, model)
    X = disc.data["X"]
    with torch.no_grad():
        U = model(X).reshape(-1).numpy()
    rp, rb = _numpy_residual(name, disc, U)
    s = disc.system
    # the loss's row weights (spacing rule): squared per row
    qp, qb = (np.asarray(disc.weights[k], dtype=np.float64) ** 2 for k in ("pde", "bc"))
    ref = (qp * rp ** 2).sum() + (qb * rb ** 2).sum()
    ops = {k: abs(v.to_scipy()) for k, v in s.ops.items()}
    mag = sum(o @ np.abs(U) for k, o in ops.items() if k != "B") + np.abs(U[s.row_index]) ** 3 \
        + 25 * np.abs(U[s.row_index]) + np.abs(disc.data["f_rows"].numpy()) + 1
    # the same products summed in other orders: |dr| <= 64 eps * magnitudes
    bound = 2 * 64 * EPS * ((qp * np.abs(rp) * mag).sum()
                            + (qb * np.abs(rb) * (ops["B"] @ np.abs(U) + 1)).sum())
    assert abs(loss - ref) <= bound
    # gradient: 2 Ju^T (dr/dU)^T r, with dr/dU by hand
    Ut = torch.from_numpy(U).requires_grad_(True)
    r = disc.values_residual(Ut)
    gU = torch.autograd.grad((r * r).sum(), Ut)[0].numpy()
    rows = s.row_index
    ops_s = {k: v.to_scipy() for k, v in s.ops.items()}
    wp = 2 * qp * rp
    if name == "variable-coefficient":
        gU_ref = ops_s["L"].T @ wp
        np.add.at(gU_ref, rows, 3 * U[rows] ** 2 * wp)
    elif name == "helmholtz":
        gU_ref = ops_s["L"].T @ wp
        np.add.at(gU_ref, rows, 25 * wp)
    elif name == "burgers":
        Dx = ops_s["D:u_x"]
        gU_ref = ops_s["L"].T @ wp + Dx.T @ (U[rows] * wp)
        np.add.at(gU_ref, rows, (Dx @ U) * wp)
    else:
        Dx, Dy = ops_s["D:u_x"], ops_s["D:u_y"]
        q = np.sqrt(1 + (Dx @ U) ** 2 + (Dy @ U) ** 2)
        gU_ref = Dx.T @ ((Dx @ U) / q * wp) + Dy.T @ ((Dy @ U) / q * wp)
    gU_ref = gU_ref + ops_s["B"].T @ (2 * qb * rb)
    big = sum(abs(o).T @ (mag * np.abs(wp)) for k, o in ops_s.items() if k != "B") \
        + abs(ops_s["B"]).T @ np.abs(2 * qb * rb)
    assert np.all(np.abs(gU - gU_ref) <= 64 * EPS * (big + np.abs(gU_ref)) + 1e-300)
    # and the parameters' gradient is Ju^T gU (backward through the same network)
    _, Ju = network_jacobian(model, X)
    gref = Ju.T @ torch.from_numpy(gU)
    assert (grad - gref).norm() <= 1e3 * EPS * (Ju.abs().T @ torch.from_numpy(np.abs(gU))).norm()


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_jacobian_against_autograd_and_fd(disk, name):
    pde, exact = EXAMPLES[name]
    disc = dt.discretize(dt.Problem(pde, bc=dt.Dirichlet(), exact=exact), disk, 3)
    model = dt.MLP(2, 6, 2, seed=2)
    lsq, th, J = jacobian_against_autograd(disc, model)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        v = torch.randn(th.numel(), generator=gen, dtype=th.dtype)
        h = 1e-5  # central differences: truncation ~ h^2 |r'''| ~ 1e-10 relative here
        fd = (lsq.residual(th + h * v) - lsq.residual(th - h * v)) / (2 * h)
        assert (fd - J @ v).abs().max() <= 1e-6 * (J @ v).abs().max()


def test_heat_like_example_jvp_vjp(disk, spread):
    """Advection-diffusion (time-dependent): matrix-free J v / J^T y adjoint and = autograd."""
    prob = dt.Problem("dt(u) + dx(u) - 0.1*lap(u)", bc=dt.Robin(1, 1),
                      exact="exp(-t)*sin(x)*cos(y)", time=(0, 1), nt=3)
    disc = dt.discretize(prob, disk, 3)
    model = dt.MLP(3, 6, 2, seed=4)
    lsq = PINNLeastSquares(model, disc)
    assert not lsq.has_fast_jacobian()
    th = lsq.get_params()
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(th.numel(), generator=gen, dtype=th.dtype)
    Jv = lsq.jvp(th, v)
    y = torch.randn(Jv.numel(), generator=gen, dtype=th.dtype)
    ref = torch.autograd.functional.jacobian(
        lambda w: disc.residual(_FunctionalModel(model, w)), th)
    # adjoint identity, bound as in test_jacobian.py: 2^10 eps |y|^T |J| |v|
    # (measured 2.1 eps |y|^T |J| |v| at threads 1 and 2)
    scale = float(y.abs() @ (ref.abs() @ v.abs()))
    adj = float(abs(torch.dot(Jv, y) - torch.dot(v, lsq.vjp(th, y))))
    spread("discretize.heat.adjoint/eps|y||J||v|", adj / (EPS * scale), 2 ** 10)
    assert adj <= 2 ** 10 * EPS * scale
    # forward-mode J v against autograd's J @ v: measured 78 eps max(|J||v|) at threads 1 and
    # 2; tolerance 1e3 (12.8x)
    err = float((Jv - ref @ v).abs().max() / (EPS * (ref.abs() @ v.abs()).max()))
    spread("discretize.heat.jvp/eps|J||v|", err, 1e3)
    assert err <= 1e3


def test_three_d_ball():
    cloud = dt.make_cloud("ball", n=700, seed=1, n_test=200)
    prob = dt.Problem("lap(u) - u", bc=dt.Robin(1, 1), exact="exp(x)*cos(y)*sin(z) + 1")
    disc = dt.discretize(prob, cloud, 3, weighting="count")  # eq. (16)
    sol = solve_discrete(disc)
    assert sol.rel_l2_nodes < 1e-2
    res = dt.fit(disc, steps=3, eval_every=0, width=10, depth=2, verbose=False)
    assert res.loss < res.history[0]["loss"]


# ------------------------------------------------------------------------------- operators
def test_combined_operator_exact_on_polynomials(disk, spread):
    """c0(x) lap + c1(x) d/dx + c2 d2/dxdy on one stencil: exact on every monomial of degree
    <= l (the defining property of the weights, eq. (9)-(11))."""
    c = disk.with_ghost() if disk.ghost is None else disk
    p, d = 4, 2
    l, _, _ = stencil_params(p, 2, d)
    rng = np.random.default_rng(4)
    rows = rng.choice(c.n_interior + c.n_boundary, 50, replace=False)
    P = c.nodes[rows]
    c0, c1 = 1 + P[:, 0] ** 2, 0.5 - 2 * P[:, 1]
    op = Operator([("lap", c0), (("d", 0), c1), (("dd", (0, 1)), 0.7), (("dd", (1, 1)), -0.2)],
                  2)
    idx, w = rbffd_weights(c.nodes, P, op, p)
    worst = 0.0
    X = c.nodes
    for a in multi_indices(l, d):
        i, j = (int(v) for v in a)
        fv = X[:, 0] ** i * X[:, 1] ** j
        def mono(di, dj):
            if di > i or dj > j:
                return 0.0 * P[:, 0]
            cf = math.perm(i, di) * math.perm(j, dj)
            return cf * P[:, 0] ** (i - di) * P[:, 1] ** (j - dj)
        exact = c0 * (mono(2, 0) + mono(0, 2)) + c1 * mono(1, 0) + 0.7 * mono(1, 1) \
            - 0.2 * mono(0, 2)
        got = (w * fv[idx]).sum(1)
        scale = (np.abs(w) * np.abs(fv[idx])).sum(1) + np.abs(exact) + 1e-300
        worst = max(worst, float((np.abs(got - exact) / scale).max()))
    # the threshold of test_rbffd's exactness tests; measured 7.8e-16 (threads 1 and 2: > 1e5 x)
    spread("discretize.combined_exactness", worst, 1e-10)
    assert worst < 1e-10, worst


def test_only_the_needed_operators_are_assembled(disk):
    d1 = dt.discretize(dt.paper_problem("poisson"), disk, 3)
    assert set(d1.system.ops) == {"L", "B"}
    d2 = dt.discretize(dt.Problem("u*dx(u) - lap(u)", bc=dt.Condition("dn(u) + u**2"),
                                  exact="x*y"), disk, 3)
    assert set(d2.system.ops) == {"L", "B", "D:u_x"}
    d3 = dt.discretize(dt.Problem("lap(u)", bc=dt.Condition("u*dn(u)", g="1"), f="0"), disk, 3)
    assert set(d3.system.ops) == {"L", "Db:u_x", "Db:u_y"}


# ------------------------------------------------------------------------------- boundary parts
def _tagged_square(n=400, seed=0):
    return tagged_square(n, seed, n_test=200)


def test_two_boundary_parts_get_their_own_conditions():
    cloud = _tagged_square()
    prob = dt.Problem("-lap(u) + u**3", bc={"left": dt.Neumann(), "*": dt.Dirichlet()},
                      exact="sin(pi*x)*y + 1")
    disc = dt.discretize(prob, cloud, 4)
    B = disc.system.ops["B"].to_scipy()
    left = cloud.boundary_tags == 3
    ones = np.ones(cloud.n_nodes)
    # Neumann rows annihilate constants; Dirichlet rows reproduce them (measured 3.9e-14 and
    # 8.9e-16 at threads 1 and 2: margins >= 2.5e5)
    assert np.abs((B @ ones)[left]).max() < 1e-8
    assert np.abs((B @ ones)[~left] - 1).max() < 1e-9
    # and the discrete solution converges (order ~p on refinement is checked below)
    sol = solve_discrete(disc)
    assert sol.rel_l2_nodes < 1e-3
    assert disc.info["parts"] == {"walls": "*", "left": "left"}


@pytest.mark.parametrize("bc,match", [
    ({"top": dt.Dirichlet()}, "not a part of this cloud"),
    ({"left": dt.Dirichlet()}, "has no condition"),
    ({7: dt.Dirichlet(), "*": dt.Dirichlet()}, "no nodes"),
    ({"left": dt.Dirichlet(), 3: dt.Neumann(), "*": dt.Dirichlet()}, "two conditions"),
])
def test_bad_boundary_parts(bc, match):
    with pytest.raises(ValueError, match=match):
        dt.discretize(dt.Problem("lap(u)", bc=bc, exact="x"), _tagged_square(200), 3)


@pytest.mark.parametrize("exact,match", [("1/(x-1)", "not finite"), ("log(x-5)", "not finite"),
                                         ("sign(x)*y", "cannot be evaluated"),
                                         ("erf(x)*y", None)])
def test_data_is_checked_before_training(disk, exact, match):
    prob = dt.Problem("lap(u)", bc=dt.Dirichlet(), exact=exact)
    if match is None:
        dt.discretize(prob, disk, 3)  # erf is whitelisted and evaluates
        return
    with pytest.raises(ValueError, match=match):
        dt.discretize(prob, disk, 3)


# ------------------------------------------------------------------------------- convergence
@pytest.mark.parametrize("name", ["variable-coefficient", "burgers"])
def test_direct_solution_converges_at_order_p(name):
    """Newton on the discrete system: the error at the nodes falls like h^p (h ~ N^-1/2)."""
    pde, exact = EXAMPLES[name]
    prob = dt.Problem(pde, bc=dt.Dirichlet(), exact=exact)
    p = 4
    Ns, errs = [], []
    for n in (700, 1400, 2800):
        cloud = dt.make_cloud("disk", n=n, seed=1)
        sol = solve_discrete(dt.discretize(prob, cloud, p))
        Ns.append(cloud.n_interior + cloud.n_boundary)
        errs.append(sol.rel_l2_nodes)
    rate = -np.polyfit(np.log(np.sqrt(Ns)), np.log(errs), 1)[0]
    assert rate > p - 0.5, (errs, rate)


def test_direct_solution_of_linear_problem_is_one_step(disk):
    sol = solve_discrete(dt.discretize(dt.paper_problem("poisson"), disk, 4))
    assert sol.iterations <= 2 and sol.rel_l2_nodes < 1e-3


def test_fit_reduces_the_loss_and_predicts(disk):
    disc = dt.discretize(dt.Problem("lap(u) + 25*u", bc=dt.Dirichlet(), exact="sin(3*x)*y"),
                         disk, 3)
    res = dt.fit(disc, steps=5, eval_every=5, width=12, depth=2, verbose=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    P = np.array([[0.1, 0.2], [0.0, 0.0]])
    u = res.predict(P)
    assert u.shape == (2,) and u.dtype == np.float64
    with torch.no_grad():
        ref = res.model(torch.from_numpy(P)).reshape(-1).numpy()
    np.testing.assert_array_equal(u, ref)

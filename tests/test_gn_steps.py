"""Gauss-Newton step machinery (issue 13): the MLP's factor products, the transpose of the declared
linearisation, and every LM step kind against the damped normal equations solved explicitly.

Serial; the distributed counterparts are in ``test_lm_mpi.py``.
"""
import io

import numpy as np
import pytest
import torch

import dtpinn_dist as dt
from dtpinn_dist.geometry import make_cloud
from dtpinn_dist.model import MLP
from dtpinn_dist.model.jacobian import (mlp_factors, mlp_jacobian_columns, mlp_jvp,
                                        mlp_value_jacobian, mlp_vjp)
from dtpinn_dist.optimizer.least_squares import PINNLeastSquares
from dtpinn_dist.optimizer.lm import LevenbergMarquardt
from dtpinn_dist.problem import discretize, paper_problem
from roundoff import dot_diff_bound, gamma, matvec_diff_bound, row_nnz

F64 = torch.float64
EPS = torch.finfo(F64).eps


@pytest.fixture(scope="module")
def disk():
    return make_cloud("disk", n=300, seed=4)


# ------------------------------------------------------------------------------ factor products
def test_mlp_jvp_vjp_and_column_blocks_equal_explicit_jacobian(spread):
    gen = torch.Generator().manual_seed(11)
    model = MLP(2, 9, 3, seed=4)
    x = torch.rand(57, 2, generator=gen, dtype=F64)
    u, factors = mlp_factors(model, x)
    _, Ju = mlp_value_jacobian(model, x)  # checked against jacrev in test_jacobian.py
    n, P = Ju.shape
    # Column blocks of any width are the same products delta_o a_i (one rounding each): bitwise.
    for j0, j1 in ((0, 7), (5, 93), (90, P), (P - 1, P)):
        assert torch.equal(mlp_jacobian_columns(model, factors, j0, j1), Ju[:, j0:j1])
    v = torch.randn(P, generator=gen, dtype=F64)
    w = torch.randn(n, generator=gen, dtype=F64)
    # Both sides sum the terms Ju_ik v_k (resp. Ju_ik w_i), each a product of 2-3 factors
    # (one more rounding than the sum itself), in other orders: within 2 gamma_(terms + 3) of
    # the absolute sum (Higham lemma 3.1).
    jv = mlp_jvp(model, factors, v)
    bound = 2 * float(gamma(P + 3)) * (Ju.abs() @ v.abs())
    spread("gn.mlp_jvp", float(((jv - Ju @ v).abs() / bound).max()), 1.0)
    assert bool(((jv - Ju @ v).abs() <= bound).all())
    jtw = mlp_vjp(model, factors, w)
    bound = 2 * float(gamma(n + 3)) * (Ju.abs().T @ w.abs())
    spread("gn.mlp_vjp", float(((jtw - Ju.T @ w).abs() / bound).max()), 1.0)
    assert bool(((jtw - Ju.T @ w).abs() <= bound).all())


# ------------------------------------------------------------------------- A^T (the adjoint)
def _problems():
    return {
        "poisson": lambda: (paper_problem("poisson"), make_cloud("disk", n=300, seed=4)),
        "nonlinear-poisson": lambda: (paper_problem("nonlinear-poisson"),
                                      make_cloud("disk", n=300, seed=4)),
        # a field operator in the PDE and a nonlinear Robin-type condition
        "field-pde-nonlinear-bc": lambda: (dt.Problem("u*dx(u) - lap(u)",
                                                      bc=dt.Condition("dn(u) + u**2"),
                                                      exact="x*y"),
                                           make_cloud("disk", n=300, seed=4)),
        # boundary operators only in the condition (no B), a product of fields
        "boundary-fields": lambda: (dt.Problem("lap(u)", bc=dt.Condition("u*dn(u)", g="1"),
                                               f="0"), make_cloud("disk", n=300, seed=4)),
        # two boundary parts with their own conditions (partial row sets)
        "two-parts": lambda: (dt.Problem("-lap(u) + u**3",
                                         bc={"left": dt.Neumann(), "*": dt.Dirichlet()},
                                         exact="sin(pi*x)*y + 1"),
                      # the rectangle's own boundary parts: bottom, right, top, left
                      dt.make_cloud(dt.Rectangle((0, 0), (1, 1)), n=300, seed=0, n_test=100)),
    }


@pytest.mark.parametrize("name", list(_problems()))
def test_linearization_transpose_is_the_adjoint(name, spread):
    prob, cloud = _problems()[name]()
    disc = discretize(prob, cloud, 3)
    gen = torch.Generator().manual_seed(3)
    n = len(disc.data["X"])
    U = 1.0 + 0.3 * torch.randn(n, generator=gen, dtype=F64)
    A, AT = disc.linearization(U), disc.linearization_transpose(U)
    S = disc.linearization_matrix(U)  # the same A assembled as a scipy matrix
    X = torch.randn(n, 3, generator=gen, dtype=F64)
    Y = torch.randn(S.shape[0], 3, generator=gen, dtype=F64)
    AX, ATY = A(X), AT(Y)
    assert ATY.shape == (n, 3)
    # A^T Y against the assembled transpose: each entry a sum over one column of S; the
    # pointwise coefficient is multiplied in separately here (one more rounding per term), so
    # 2 gamma_(nnz + 1) <= 2 x (2 gamma_nnz) bounds it: twice matvec_diff_bound.
    ref = S.T @ Y.numpy()
    bound = 2 * matvec_diff_bound(S.T, Y.numpy()) + 1e-300
    err = np.abs(ATY.numpy() - ref)
    spread(f"gn.AT.{name}", float((err / bound).max()), 1.0)
    assert (err <= bound).all()
    # adjoint identity <A X, Y> = <X, A^T Y>: both sum the terms Y_i S_ij X_j
    terms = float((np.abs(Y.numpy()) * (abs(S) @ np.abs(X.numpy()))).sum())
    k = int(max(row_nnz(S).max(), row_nnz(S.T).max())) + S.shape[0] + n + 2
    a, b = float((AX * Y).sum()), float((X * ATY).sum())
    tol = dot_diff_bound(terms, k)
    spread(f"gn.adjoint.{name}", abs(a - b), tol)
    assert abs(a - b) <= tol


# -------------------------------------------------------------------- LM steps vs the formula
@pytest.fixture(scope="module")
def nonlinear(disk):
    return discretize(paper_problem("nonlinear-poisson"), disk, 3)


def _explicit(lsq, theta, lam, D):
    """``M = J^T J + lam diag(D)`` and ``b = -J^T r`` from the explicit J."""
    r, J = lsq.jacobian(theta)
    M = J.T @ J + lam * torch.diag(D)
    return M, -(J.T @ r), J, r


def _lm(model, disc, **kw):
    lm = LevenbergMarquardt(model, disc, **kw)
    return lm, lm.lsq


@pytest.mark.parametrize("step,form", [("dense", "primal"), ("dense", "dual"),
                                       ("lagged", "primal"), ("gn-alias-dense", "primal"),
                                       ("auto-switched", "primal"), ("auto-switched", "dual"),
                                       ("lagged-stale", "primal"), ("lagged-stale", "dual")])
def test_direct_steps_equal_damped_normal_solution(nonlinear, step, form, spread):
    """dense (primal and dual), a lagged rebuild step, and an auto step whose CG ran out of its
    budget and switched to the direct solve: p = -(J^T J + lam D)^{-1} J^T r."""
    # the dual form is the one for more parameters than rows (what "auto" picks it for)
    model = MLP(2, 20 if form == "dual" else 8, 2, seed=2)
    kw = {}
    if step == "gn-alias-dense":  # the registry's "gn" builds the same class
        from dtpinn_dist.optimizer.registry import OPTIMIZERS
        assert OPTIMIZERS["gn"] is OPTIMIZERS["lm"]  # one builder under both names
        step = "dense"
    if step == "auto-switched":  # one CG iteration to 1e-14 misses: the step factors instead
        kw = dict(step="auto", cg_maxiter=1, cg_tol=1e-14, lag_maxiter=1)
    if step == "lagged-stale":  # a step with the old factor whose PCG misses: rebuilt at once
        kw = dict(step="lagged", cg_tol=1e-14, lag_maxiter=1)
    lm, lsq = _lm(model, nonlinear, **{"step": step, "form": form, "lam0": 0.1, **kw})
    if step == "lagged-stale":
        lm.step()  # builds the factor that the next step finds stale
        assert lm.rebuilds == 1
    th0 = lsq.get_params()
    lm.step()
    rec = lm.history[-1]
    if kw:
        assert rec["switched"] and rec["cg_iters"] == 1
        assert step == "lagged-stale" or lm.plan()[0] == "cg"
        step = "lagged"
    assert rec["accepted"] and rec["kind"] == step and rec["rebuilt"]
    assert rec["form"] == form
    if form == "dual":
        assert th0.numel() > lsq.residual(th0).numel()
    p = lsq.get_params() - th0
    lam = rec["lam_step"]
    M, b, J, _ = _explicit(lsq, th0, lam, lm.D)
    ref = torch.linalg.solve(M, b)
    # Two backward-stable solves of one SPD system (Cholesky against LU): each has a normwise
    # backward error <= gamma_(3n+1) relative (Higham thm 10.4 / 9.4, n the order), so each is
    # within gamma_(3n+1) kappa ||p|| of the exact step (2-norms). The primal order is P with
    # kappa = cond(J^T J + lam D); the dual solves the m x m system J J^T + lam c I, then
    # p = -J^T z, with condition (sigma_max(J)^2 + lam c) / (lam c), which also bounds the
    # primal reference's (n = P) when m < P.
    if form == "dual":
        c = float(lm.D[0])
        kappa = (float(torch.linalg.matrix_norm(J, 2)) ** 2 + lam * c) / (lam * c)
        g = float(gamma(3 * J.shape[0] + 1) + gamma(3 * J.shape[1] + 1))
        # and the dual matrix is formed another way, A (Ju Ju^T) A^T (tangent kernel), whose
        # sums cancel (A's rows sum to ~0): its error is <= gamma_(P + 2 nnz) |A||Ju||Ju|^T|A|^T
        # entrywise, a relative perturbation of the system <= that's Frobenius norm / ||M||.
        from dtpinn_dist.optimizer.least_squares import _model_at
        u, Ju = mlp_value_jacobian(_model_at(model, th0), nonlinear.data["X"])
        S = nonlinear.linearization_matrix(u.detach())
        E = abs(S) @ Ju.abs().numpy()
        nnz = int(row_nnz(S).max())
        dG = float(gamma(J.shape[1] + 2 * nnz)) * float((E * E).sum())
        g += dG / (float(torch.linalg.matrix_norm(J, 2)) ** 2 + lam * c)
    else:
        kappa = float(torch.linalg.cond(M))
        g = 2 * float(gamma(3 * J.shape[1] + 1))
        # and J^T J is formed by LM (scipy's dsyrk) and here (torch J.T @ J) in other orders:
        # entrywise within gamma_m |J|^T |J| (m rows), a relative perturbation of the system of
        # at most its Frobenius norm / ||M||_2 (as dG in the dual branch)
        g += float(gamma(J.shape[0])) * float(torch.linalg.matrix_norm(J.abs().T @ J.abs())) \
            / float(torch.linalg.matrix_norm(M, 2))
    err = float(torch.linalg.vector_norm(p - ref))
    tol = g * kappa * float(torch.linalg.vector_norm(ref))
    spread(f"gn.step.{step}.{form}", err, tol)
    assert err <= tol


def _residual_bound(M, p, b, iters, cg_tol):
    """What a CG/PCG stop at relative residual ``cg_tol`` guarantees for the explicit system.

    The recursive residual (the one CG tests) drifts from the true one by round-off of each
    iteration's product ``M p_k`` (computed as J^T (J v) + lam D v through the structure, here
    compared with the explicit M): per iteration within 2^10 eps |M| |p| (the product
    round-off measured in test_jacobian.py's adjoint test is <= 46 eps |y||J||v|; 2^10 is its
    bound there)."""
    Mabs = M.abs()
    drift = (iters + 1) * 2 ** 10 * EPS * float(torch.linalg.vector_norm(Mabs @ p.abs()))
    return cg_tol * float(torch.linalg.vector_norm(b)) + drift


def _check_cg_step(lsq, theta, p, rec, D, cg_tol, spread, key):
    """The step ``p`` taken from ``theta`` solves ``(J^T J + lam D) p = -J^T r`` to CG's
    tolerance (bound: :func:`_residual_bound`); returns the explicit J."""
    M, b, J, _ = _explicit(lsq, theta, rec["lam_step"], D)
    res = float(torch.linalg.vector_norm(M @ p - b))
    tol = _residual_bound(M, p, b, rec["cg_iters"], cg_tol)
    spread(key, res, tol)
    assert res <= tol
    return J


@pytest.mark.parametrize("step", ["cg", "auto"])
def test_cg_step_solves_damped_normal_equations_to_its_tolerance(nonlinear, step, spread):
    """A matrix-free step, by hand or auto's CG phase (its budget not spent)."""
    cg_tol = 1e-8
    model = MLP(2, 8, 2, seed=2)
    lm, lsq = _lm(model, nonlinear, step=step, lam0=0.1, cg_tol=cg_tol, cg_maxiter=1000,
                  lag_maxiter=1)
    th0 = lsq.get_params()
    lm.step()
    rec = lm.history[-1]
    assert rec["accepted"] and rec["kind"] == "cg" and rec["cg_converged"]
    assert 0 < rec["cg_iters"] <= 1000 and not rec["rebuilt"] and lm.rebuilds == 0
    J = _check_cg_step(lsq, th0, lsq.get_params() - th0, rec, lm.D, cg_tol, spread,
                       f"gn.step.{step}.residual")
    # The Levenberg scale of a matrix-free first step: ||J||_F^2 / P from 4 Rademacher probes
    # (unbiased; for these J the probe spread is well within a factor 2).
    c = float((J * J).sum()) / J.shape[1]
    assert 0.5 * c <= float(lm.D[0]) <= 2 * c


def test_lagged_pcg_step_and_rebuild_when_stale(nonlinear, spread):
    cg_tol = 1e-8
    model = MLP(2, 8, 2, seed=2)
    lm, lsq = _lm(model, nonlinear, step="lagged", lam0=0.1, cg_tol=cg_tol, lag_maxiter=200)
    lm.step()  # builds the factor, takes the direct step
    th1 = lsq.get_params()
    lm.step()  # PCG with the factor of step 1
    rec = lm.history[-1]
    assert rec["kind"] == "lagged" and not rec["rebuilt"] and rec["cg_iters"] > 0
    assert rec["accepted"] and rec["cg_converged"] and lm.rebuilds == 1
    _check_cg_step(lsq, th1, lsq.get_params() - th1, rec, lm.D, cg_tol, spread,
                   "gn.step.lagged.residual")
    # stale factor: PCG allowed 1 iteration to 1e-14 misses, so the step rebuilds at once and
    # is solved directly (the damped normal solution: test_direct_steps_... "lagged-stale")
    lm.lag_maxiter, lm.cg_tol = 1, 1e-14
    lm.step()
    rec = lm.history[-1]
    assert not rec["cg_converged"] and rec["rebuilt"] and rec["switched"]
    assert rec["cg_iters"] == 1 and lm.rebuilds == 2
    lm.step()  # the fresh factor preconditions the next step (again 1 iteration, misses)
    assert lm.history[-1]["cg_iters"] == 1 and lm.rebuilds == 3


def test_auto_switches_from_cg_to_lagged_unless_memory_forbids(nonlinear):
    """CG that misses its tolerance within auto's budget: that step is solved directly from a
    freshly built matrix and the next steps are lagged; without room for the dense matrix every
    step stays matrix-free (each solve truncated at the budget)."""
    for budget, kinds in ((4e9, ["lagged", "lagged", "lagged"]), (1e3, ["cg", "cg", "cg"])):
        model = MLP(2, 8, 2, seed=2)
        lm, _ = _lm(model, nonlinear, step="auto", cg_maxiter=3, cg_tol=1e-10,
                    memory_budget=budget, lag_maxiter=1)
        for _ in range(3):
            lm.step()
        assert [h["kind"] for h in lm.history] == kinds
        assert not lm.history[0]["cg_converged"]
        first = lm.history[0]
        if budget > 1e3:
            assert first["switched"] and first["rebuilt"] and first["cg_iters"] == 3
            # auto's lagged steps: PCG within the same budget (cg_maxiter = 3 per solve), then
            # the step's own matrix
            assert all(h["cg_iters"] <= 3 * (1 + h["rejects"]) for h in lm.history[1:])
        else:
            assert not first["switched"] and lm.rebuilds == 0
            assert first["cg_iters"] == 3 * (1 + first["rejects"])  # the budget per solve
    # every record states kind, CG iterations, damping, rebuilds and rejected trials
    for h in lm.history:
        assert {"kind", "cg_iters", "lam", "lam_step", "rebuilds", "rejects"} <= set(h)


def test_state_dict_through_torch_load_weights_only_resumes_bitwise(nonlinear):
    a_model, b_model = MLP(2, 8, 2, seed=5), MLP(2, 8, 2, seed=5)
    kw = dict(step="auto", cg_maxiter=5)
    a, _ = _lm(a_model, nonlinear, **kw)
    for _ in range(5):
        a.step()
    b, _ = _lm(b_model, nonlinear, **kw)
    for _ in range(3):
        b.step()
    assert b.history[-1]["kind"] == "lagged"  # the lagged matrix is part of the state
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    c, _ = _lm(b_model, nonlinear, **kw)
    c.load_state_dict(state)
    for _ in range(2):
        c.step()
    assert torch.equal(PINNLeastSquares(a_model, nonlinear).get_params(),
                       PINNLeastSquares(b_model, nonlinear).get_params())
    assert [h["loss"] for h in c.history] == [h["loss"] for h in a.history]


def test_fit_with_gn_records_the_step_in_the_history(disk):
    disc = discretize(paper_problem("poisson"), disk, 3)
    res = dt.fit(disc, optimizer="gn", steps=3, width=8, depth=2, seed=0, eval_every=1,
                 lm={"step": "auto", "cg_maxiter": 5})
    hist = res.history
    assert hist and {"lm_kind", "lm_lam", "lm_cg_iters", "lm_rebuilds",
                     "lm_rejected"} <= set(hist[-1])
    assert hist[-1]["lm_kind"] in ("cg", "lagged")


# ------------------------------------------------------------------ auto's cost model (issue 17)
def test_plan_auto_is_the_cost_ratio_against_lag_maxiter():
    """k = (build + factor) / iteration: dense when a factorisation costs at most lag_maxiter
    CG iterations, else CG with a budget of k iterations (floor) for a step's first trial and
    k_trial = factor / iteration more for each further one."""
    from dtpinn_dist.optimizer.lm import plan_auto

    assert plan_auto({"iteration": 1.0, "build": 10.0, "factor": 5.0}, 20) == ("dense", 0, 0)
    assert plan_auto({"iteration": 1.0, "build": 15.0, "factor": 5.0}, 20) == ("dense", 0, 0)
    assert plan_auto({"iteration": 1.0, "build": 15.5, "factor": 5.0}, 20) == ("cg", 20, 5)
    assert plan_auto({"iteration": 0.01, "build": 3.0, "factor": 2.0}, 20) == ("cg", 500, 200)
    # only ratios matter: the same plan on a machine uniformly 7x faster
    assert plan_auto({"iteration": 0.01 / 7, "build": 3.0 / 7, "factor": 2.0 / 7}, 20)[0] == "cg"


def test_step_costs_follow_the_flop_counts():
    from dtpinn_dist.optimizer.lm import DENSE_FLOPS_PER_S as D, SPARSE_FLOPS_PER_S as S
    from dtpinn_dist.optimizer.lm import step_costs

    work = {"product": (4e6, 2e4), "jacobian": (1e6, 5e7), "kernel": (8e8, 3e7)}
    m, P = 300, 1000
    primal = step_costs(work, m, P, dual=False)
    dual = step_costs(work, m, P, dual=True)
    assert primal["iteration"] == dual["iteration"] == pytest.approx(2 * (4e6 / D + 2e4 / S))
    assert primal["build"] == pytest.approx(1e6 / D + 5e7 / S + m * P * P / D)
    assert primal["factor"] == pytest.approx(P ** 3 / 3 / D)
    assert dual["build"] == pytest.approx(8e8 / D + 3e7 / S)
    assert dual["factor"] == pytest.approx(m ** 3 / 3 / D)


@pytest.mark.parametrize("shape,kind", [((40, 12), "dense"), ((200, 400), "cg")])
def test_auto_picks_dense_for_cheap_factorisations_and_cg_otherwise(shape, kind):
    """On an explicit J (m x P) the counts are 2 m P per product, m P^2 (primal) or 2 m^2 P
    (dual, m < P) per normal matrix: k = P/4 + P^2/(12 m) = 3.3 for 40 x 12 (dense), and
    k = m/2 + m^2/(12 P) = 108 for 200 x 400 (CG, budget 108 for a step's first trial and
    k_trial = m^2/(12 P) = 8 more for each further one)."""
    from dtpinn_dist.optimizer.least_squares import DenseLeastSquares

    gen = torch.Generator().manual_seed(3)
    A = torch.randn(*shape, generator=gen, dtype=F64)
    b = torch.randn(shape[0], generator=gen, dtype=F64)
    lm = LevenbergMarquardt(DenseLeastSquares(A, b))
    m, P = shape
    k = P / 4 + P * P / (12 * m) if m >= P else m / 2 + m * m / (12 * P)
    if kind == "dense":
        assert lm.plan() == ("dense", 0, 0)
    else:
        k_trial = int(m * m / (12 * P))
        assert lm.plan() == ("cg", int(k), k_trial)
        # the budget a step's t-th trial may still spend after the earlier trials spent some
        assert lm._cg_budget(1, 0) == int(k)
        assert lm._cg_budget(3, 150) == int(k) + 2 * k_trial - 150
    assert lm.resolve_step() == kind
    lm.step()
    assert lm.history[-1]["kind"] == kind


def test_pinn_work_is_counted_from_the_sizes(nonlinear):
    """PINN flops from n points, m rows, P parameters and the nnz of A: a product 4 n P dense +
    2 nnz sparse; J 2 n P + 2 nnz P; the kernel 2 (out + in + 1) per layer and point pair plus
    A K A^T 2 nnz (n + m)."""
    model = MLP(2, 8, 2, seed=2)
    lsq = PINNLeastSquares(model, nonlinear)
    w = lsq.work()
    m, P = lsq.jacobian_shape()
    n = nonlinear.network_points
    u = model(nonlinear.data["X"]).detach().reshape(-1)
    nnz = nonlinear.linearization_matrix(u).nnz
    pair = 2 * ((8 + 2 + 1) + (8 + 8 + 1) + (1 + 8 + 1))
    assert w["product"] == (4.0 * n * P, 2.0 * nnz)
    assert w["jacobian"] == (2.0 * n * P, 2.0 * nnz * P)
    assert w["kernel"] == (pair * n * n, 2.0 * nnz * (n + m))

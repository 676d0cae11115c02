"""Levenberg-Marquardt (dtpinn_dist.optimizer.lm): exact Gauss-Newton on linear least squares, loss
reduction on small DT-PINN problems with both step computations, checkpoint/resume, schedule."""

import pytest
import torch

from dtpinn_dist.model import MLP
from dtpinn_dist.optimizer import parse_schedule
from dtpinn_dist.optimizer.least_squares import DenseLeastSquares, PINNLeastSquares
from dtpinn_dist.optimizer.lm import LevenbergMarquardt
from dtpinn_dist.problem import discretize, paper_problem
from roundoff import gamma

EPS = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def system():
    """A generated disk cloud the size of the authors' smallest (582 nodes): nothing here is
    about that file, so a plain clone runs these tests."""
    from dtpinn_dist.geometry import make_cloud

    return make_cloud("disk", n=582, seed=5)


_DISCS = {}


def _disc(cloud, kind):
    if kind not in _DISCS:
        _DISCS[kind] = discretize(paper_problem(kind, nt=2 if kind == "heat" else None), cloud, 3)
    return _DISCS[kind]


def _run(lm, n):
    """n LM steps, as the training loop drives them (stopping when LM can do no more)."""
    for _ in range(n):
        if lm.stop_reason:
            break
        lm.step()
    return lm


def _toy(m=40, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64)
    return A, b


@pytest.mark.parametrize("step,form,shape", [("dense", "primal", (40, 12)),
                                             ("dense", "dual", (12, 40)),
                                             ("cg", "auto", (40, 12))])
def test_undamped_gauss_newton_step_is_exact_minimiser(step, form, shape, spread):
    """On r(w) = A w - b one undamped Gauss-Newton step lands on the least-squares minimiser
    (the minimum-norm one in the underdetermined case, from w = 0)."""
    A, b = _toy(*shape)
    cg_tol = 1e-14
    lsq = DenseLeastSquares(A, b)
    lm = LevenbergMarquardt(lsq, step=step, form=form, lam0=0.0, lam_min=0.0, cg_tol=cg_tol,
                            cg_maxiter=500)
    lm.step()
    w = lsq.get_params()
    ref = torch.linalg.lstsq(A, b).solution if shape[0] >= shape[1] else torch.linalg.pinv(A) @ b
    # Normal equations (J^T J or J J^T) have forward error O(kappa(A)^2 eps), CG adds its
    # relative-residual tolerance times kappa(A^T A) = kappa^2. Measured ||w - ref|| / ||ref||
    # = 0.26-0.77 kappa^2 eps (threads 1 and 2); tolerance kappa^2 (64 eps + cg_tol).
    kappa2 = float(torch.linalg.cond(A)) ** 2
    rel = float(torch.linalg.norm(w - ref) / torch.linalg.norm(ref))
    tol = kappa2 * (64 * EPS + (cg_tol if step == "cg" else 0.0))
    spread("lm.gauss_newton.w", rel, tol)
    assert rel <= tol
    rec = lm.history[-1]
    # The model is exact here, so rho = 1 up to the round-off of the losses F (sums of m squares
    # within gamma_m F each) and of the predicted decrease, over the decrease F - F_new:
    # |rho - 1| <= 8 gamma_(m+n) F / (F - F_new). Measured: |rho - 1| <= 2.2e-16.
    m, n = A.shape
    tol_rho = 8 * gamma(m + n) * rec["loss_before"] / (rec["loss_before"] - rec["loss"])
    spread("lm.gauss_newton.rho", abs(rec["rho"] - 1.0), tol_rho)
    assert rec["accepted"] and abs(rec["rho"] - 1.0) <= tol_rho
    # At the minimiser the gradient vanishes: the next step stops on gtol. The computed
    # g = A^T (A w - b) is at most |A^T A (w - w*)| <= sigma_max^2 ||w - w*|| (bounded above)
    # plus its own round-off 2 gamma_(m+n+1) |A^T| (|A||w| + |b|). Measured |g|_inf ~ 1e-14.
    sigma2 = float(torch.linalg.matrix_norm(A, 2)) ** 2
    lm.gtol = sigma2 * tol * float(torch.linalg.norm(ref)) + float(
        2 * gamma(m + n + 1) * (A.abs().T @ (A.abs() @ w.abs() + b.abs())).max())
    lm.step()
    assert lm.stop_reason.startswith("gradient tolerance")


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_damped_step_solves_damped_normal_equations(form, spread):
    A, b = _toy()
    lsq = DenseLeastSquares(A, b)
    lm = LevenbergMarquardt(lsq, step="dense", form=form, damping="levenberg", lam0=0.7)
    lm.step()
    c = float((A * A).sum(0).mean())
    M = A.T @ A + 0.7 * c * torch.eye(12, dtype=A.dtype)
    p = torch.linalg.solve(M, A.T @ b)
    # Two backward-stable solves of M p = A^T b (Cholesky of J^T J + lam, or of J J^T + lam via
    # the push-through identity, against LU): forward error <= c kappa(M) eps |p|. Measured
    # max |p_lm - p| / (kappa(M) eps max|p|) = 0.4 (primal), 1.3 (dual), threads 1 and 2;
    # tolerance 64.
    err = float((lsq.get_params() - p).abs().max())
    tol = 64 * float(torch.linalg.cond(M)) * EPS * float(p.abs().max())
    spread("lm.damped.p", err, tol)
    assert err <= tol


@pytest.mark.parametrize("kind,step", [("poisson", "dense"), ("nonlinear-poisson", "dense"),
                                       ("poisson", "cg"), ("heat", "auto")])
def test_lm_drives_dtpinn_loss_down(system, kind, step, spread):
    prob = _disc(system, kind)
    model = MLP(prob.input_dim, 10, 2, seed=0)
    loss0 = prob.loss(model)
    n = {"dense": 30, "cg": 10, "auto": 4}[step]
    lm = _run(LevenbergMarquardt(model, prob, step=step, cg_maxiter=40), n)
    loss1 = prob.loss(model)
    assert lm.resolve_step() == ("cg" if kind == "heat" else step)
    # The same residual vector (same operations on the same parameters) summed as squares by
    # the problem's loss and by LM: positive sums of m terms, each within gamma_m of exact, so
    # they differ by <= 2 gamma_m relative (Higham lemma 3.1). Measured <= 1.6e-16.
    m = PINNLeastSquares(model, prob).residual(
        torch.cat([p.detach().reshape(-1) for p in model.parameters()])).numel()
    rel = abs(loss1 - lm.history[-1]["loss"]) / loss1
    spread("lm.dtpinn.loss", rel, 2 * gamma(m))
    assert rel <= 2 * gamma(m)
    # Smoke thresholds (not tuned bounds): dense LM converges fast on this toy; plain CG steps
    # (Levenberg damping, no preconditioner, 40 iterations) measured 98 -> 8.3 in 10 steps.
    factor = {"dense": 1e-5, "cg": 0.2, "auto": 0.9}[step]
    assert loss1 < factor * loss0, (loss0, loss1)
    losses = [h["loss"] for h in lm.history]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # only accepted steps change w
    h = lm.history[-1]
    assert {"step", "loss", "evals", "time", "lam"} <= set(h) and h["evals"] >= n


def test_tangent_kernel_step_equals_primal_step(system, spread):
    """The serial J J^T (tangent-kernel) step and the J^T J step are the same step, and the
    dual form really takes the tangent-kernel path (J never formed), the primal one does not."""
    prob = _disc(system, "nonlinear-poisson")
    ws, steps = [], []
    for form in ("dual", "primal"):
        model = MLP(2, 30, 3, seed=2)  # more parameters than rows: the dual form applies
        lm = LevenbergMarquardt(model, prob, step="dense", form=form, lam0=1e-2)
        calls = {"gram": 0, "normal": 0}
        linearize = lm.lsq.linearize

        def counted_linearize(theta, _lin=linearize):
            # count the calls of the real dense builders (wrapped, not replaced)
            lin = _lin(theta)
            for name in calls:
                def counted(_f=getattr(lin, name), _n=name):
                    calls[_n] += 1
                    return _f()
                setattr(lin, name, counted)
            return lin
        lm.lsq.linearize = counted_linearize
        theta0 = lm.lsq.get_params()
        lm.step()
        assert lm.history[-1]["accepted"]
        if form == "dual":
            assert calls == {"gram": 1, "normal": 0}, calls
        else:
            assert calls == {"gram": 0, "normal": 1}, calls
        ws.append(lm.lsq.get_params())
        steps.append(ws[-1] - theta0)
    # Two backward-stable solves of one damped system (Cholesky of J J^T + lam c I then J^T z,
    # or of J^T J + lam c I): they differ by c kappa eps relative to the step, with
    # kappa <= (sigma_max(J)^2 + lam0 c) / (lam0 c) (lam >= lam0 at the accepted trial; c =
    # ||J||_F^2 / P, the Levenberg scale). Measured max |p_dual - p_primal| / (kappa eps max|p|)
    # = 2.6 (threads 1 and 2; kappa ~ 1e5 here); tolerance 64.
    _, J = PINNLeastSquares(MLP(2, 30, 3, seed=2), prob).jacobian(theta0)
    c = float((J * J).sum()) / J.shape[1]
    kappa = (float(torch.linalg.matrix_norm(J, 2)) ** 2 + 1e-2 * c) / (1e-2 * c)
    err = float((steps[0] - steps[1]).abs().max() / steps[1].abs().max())
    spread("lm.dual_vs_primal.p/kappa eps", err / (kappa * EPS), 64)
    assert err <= 64 * kappa * EPS


def test_state_dict_resume_is_bitwise(system):
    prob = _disc(system, "nonlinear-poisson")
    m1 = MLP(2, 8, 2, seed=5)
    m2 = MLP(2, 8, 2, seed=5)
    a = _run(LevenbergMarquardt(m1, prob), 6)
    b = _run(LevenbergMarquardt(m2, prob), 3)
    state = {k: v for k, v in b.state_dict().items()}
    c = LevenbergMarquardt(m2, prob)
    c.load_state_dict(state)
    _run(c, 3)
    assert c.steps == 6 and c.lam == a.lam
    assert torch.equal(PINNLeastSquares(m1, prob).get_params(),
                       PINNLeastSquares(m2, prob).get_params())
    assert [h["loss"] for h in c.history] == [h["loss"] for h in a.history]


def test_parse_schedule():
    assert parse_schedule("lbfgs:500, lm:100") == [("lbfgs", 500), ("lm", 100)]
    with pytest.raises(ValueError, match="NAME:STEPS"):
        parse_schedule("lm")
    with pytest.raises(ValueError, match="NAME:STEPS"):
        parse_schedule("sgd:3")

"""Levenberg-Marquardt (dtpinn_dist.optim.lm): exact Gauss-Newton on linear least squares, loss
reduction on small DT-PINN problems with both step computations, checkpoint/resume, schedule."""
import math

import pytest
import torch

from dtpinn_dist.model import MLP
from dtpinn_dist.optim.jacobian import DenseLeastSquares, DTPINNLeastSquares
from dtpinn_dist.optim.lm import LevenbergMarquardt, parse_schedule, run_lm
from dtpinn_dist.problems import make_problem, manufactured


@pytest.fixture(scope="module")
def system():
    """A generated disk cloud the size of the authors' smallest (582 nodes): nothing here is
    about that file, so a plain clone runs these tests."""
    from dtpinn_dist.geometry import make_cloud
    from dtpinn_dist.operators.torch_csr import serial_system

    return serial_system(make_cloud("disk", n=582, seed=5), 3)


def _toy(m=40, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64)
    return A, b


@pytest.mark.parametrize("step,form,shape", [("dense", "primal", (40, 12)),
                                             ("dense", "dual", (12, 40)),
                                             ("cg", "auto", (40, 12))])
def test_undamped_gauss_newton_step_is_exact_minimiser(step, form, shape):
    """On r(w) = A w - b one undamped Gauss-Newton step lands on the least-squares minimiser
    (the minimum-norm one in the underdetermined case, from w = 0)."""
    A, b = _toy(*shape)
    lsq = DenseLeastSquares(A, b)
    lm = LevenbergMarquardt(lsq, step=step, form=form, lam0=0.0, lam_min=0.0, cg_tol=1e-14,
                            cg_maxiter=500)
    lm.step()
    w = lsq.get_params()
    ref = torch.linalg.lstsq(A, b).solution if shape[0] >= shape[1] else torch.linalg.pinv(A) @ b
    assert torch.linalg.norm(w - ref) <= 1e-9 * torch.linalg.norm(ref)
    rec = lm.history[-1]
    assert rec["accepted"] and abs(rec["rho"] - 1.0) < 1e-8  # the model is exact here
    # at the minimiser the gradient vanishes: the next step stops on gtol
    lm.gtol = 1e-10
    lm.step()
    assert lm.stop_reason.startswith("gradient tolerance")


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_damped_step_solves_damped_normal_equations(form):
    A, b = _toy()
    lsq = DenseLeastSquares(A, b)
    lm = LevenbergMarquardt(lsq, step="dense", form=form, damping="levenberg", lam0=0.7)
    lm.step()
    c = float((A * A).sum(0).mean())
    p = torch.linalg.solve(A.T @ A + 0.7 * c * torch.eye(12, dtype=A.dtype), A.T @ b)
    assert torch.allclose(lsq.get_params(), p, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind,step", [("poisson", "dense"), ("nonlinear-poisson", "dense"),
                                       ("poisson", "cg"), ("heat", "auto")])
def test_lm_drives_dtpinn_loss_down(system, kind, step):
    prob = make_problem(manufactured(kind), nt=2)
    model = MLP(prob.input_dim(2), 10, 2, seed=0)
    loss0 = prob.loss(model, system)
    n = {"dense": 30, "cg": 10, "auto": 4}[step]
    lm = run_lm(model, prob, system, n, step=step, cg_maxiter=40)
    loss1 = prob.loss(model, system)
    assert lm.resolve_step() == ("cg" if kind == "heat" else step)
    assert math.isclose(loss1, lm.history[-1]["loss"], rel_tol=1e-10)
    factor = {"dense": 1e-5, "cg": 0.05, "auto": 0.9}[step]
    assert loss1 < factor * loss0, (loss0, loss1)
    losses = [h["loss"] for h in lm.history]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # only accepted steps change w
    h = lm.history[-1]
    assert {"step", "loss", "evals", "time", "lam"} <= set(h) and h["evals"] >= n


def test_tangent_kernel_step_equals_primal_step(system):
    """The serial J J^T (tangent-kernel) step and the J^T J step are the same step."""
    prob = make_problem(manufactured("nonlinear-poisson"))
    ws = []
    for form in ("dual", "primal"):
        model = MLP(2, 30, 3, seed=2)  # more parameters than rows: the dual form applies
        lm = LevenbergMarquardt(model, prob, system, step="dense", form=form, lam0=1e-2)
        lm.step()
        assert lm.history[-1]["accepted"]
        ws.append(lm.lsq.get_params())
    assert torch.allclose(ws[0], ws[1], rtol=0, atol=1e-8 * ws[1].abs().max())


def test_state_dict_resume_is_bitwise(system):
    prob = make_problem(manufactured("nonlinear-poisson"))
    m1 = MLP(2, 8, 2, seed=5)
    m2 = MLP(2, 8, 2, seed=5)
    a = LevenbergMarquardt(m1, prob, system)
    a.run(6)
    b = LevenbergMarquardt(m2, prob, system)
    b.run(3)
    state = {k: v for k, v in b.state_dict().items()}
    c = LevenbergMarquardt(m2, prob, system)
    c.load_state_dict(state)
    c.run(3)
    assert c.steps == 6 and c.lam == a.lam
    assert torch.equal(DTPINNLeastSquares(m1, prob, system).get_params(),
                       DTPINNLeastSquares(m2, prob, system).get_params())
    assert [h["loss"] for h in c.history] == [h["loss"] for h in a.history]


def test_parse_schedule():
    assert parse_schedule("lbfgs:500, lm:100") == [("lbfgs", 500), ("lm", 100)]
    with pytest.raises(ValueError, match="NAME:STEPS"):
        parse_schedule("lm")
    with pytest.raises(ValueError, match="NAME:STEPS"):
        parse_schedule("sgd:3")

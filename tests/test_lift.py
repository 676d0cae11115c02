"""Exact Dirichlet conditions: the network's form u = G + phi N (problem/lift.py, issue 17)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dtpinn_dist as dt

from clouds import tagged_square
from roundoff import EPS, jacobian_against_autograd

ROOT = Path(__file__).resolve().parents[1]
EXACT = "sin(2*x)*cos(y) + x*y + 1"


@pytest.fixture(scope="module")
def mixed():
    """Unit square: the left side Neumann, the other sides Dirichlet imposed exactly."""
    cloud = tagged_square(500, seed=4, n_test=300)
    pb = dt.Problem("-lap(u) + u**3", bc={"left": dt.Neumann(), "*": dt.Dirichlet(exact=True)},
                    exact=EXACT)
    return cloud, dt.discretize(pb, cloud, 4)


def test_lift_vanishes_and_matches_the_data_on_the_exact_parts(mixed):
    cloud, disc = mixed
    s = disc.system
    walls = s.boundary_tags == 0
    bnodes = s.boundary_index[walls]
    X = s.nodes[bnodes]
    g = np.sin(2 * X[:, 0]) * np.cos(X[:, 1]) + X[:, 0] * X[:, 1] + 1
    assert torch.all(disc._phi[bnodes] == 0)
    # G = g there: the same expression, evaluated by the library's compiler and by numpy
    assert np.allclose(disc._G[bnodes].numpy(), g, rtol=0, atol=8 * EPS * np.abs(g).max())
    assert float(disc._phi.max()) == 1.0 and float(disc._phi[s.interior_index].min()) > 0
    # so the exact parts' residual rows vanish for any network (g - G: round-off of g)
    model = dt.MLP(2, 10, 2, seed=3, input_box=disc.input_box)
    with torch.no_grad():
        rb = disc.residual_parts(model)["bc"].numpy()
    assert np.abs(rb[walls]).max() <= 16 * EPS * np.abs(g).max()
    assert np.abs(rb[~walls]).max() > 1e-3  # the Neumann rows are still residual rows


def test_predictions_off_and_on_the_nodes(mixed, tmp_path):
    from dtpinn_dist.outputs.model_io import load_model, save_model
    cloud, disc = mixed
    model = dt.MLP(2, 10, 2, seed=5, input_box=disc.input_box)
    with torch.no_grad():
        U = disc.network_values(model).numpy()
    X = disc.data["X"].numpy()
    # at a node the interpolant reproduces the nodal value (a local solve's round-off;
    # 1e-8 is far above it and far below the discretisation error)
    at_nodes = disc.predict(model, X).numpy()
    assert np.abs(at_nodes - U).max() <= 1e-8 * np.abs(U).max()
    # a saved model with its lift.npz predicts the same bits anywhere
    save_model(tmp_path, model, disc)
    assert (tmp_path / "lift.npz").is_file()
    loaded, doc = load_model(tmp_path)
    P = cloud.test
    assert doc["lift"]["order"] == 4
    ref = disc.predict(model, P).numpy()
    got = loaded(torch.from_numpy(P)).reshape(-1).detach().numpy()
    assert np.array_equal(got, ref)


def test_jacobian_with_the_lift_against_autograd(mixed):
    # J = A diag(phi) Ju on the fast path (structured_matrix includes diag(phi)) = autograd's
    cloud, disc = mixed
    jacobian_against_autograd(disc, dt.MLP(2, 6, 2, seed=2, input_box=disc.input_box))


def test_training_with_exact_conditions_lowers_the_error(mixed):
    cloud, disc = mixed
    res = dt.fit(disc, schedule="lbfgs:15,lm:5", width=12, depth=2, eval_every=5,
                 verbose=False, inputs="box")
    hist = [h["rel_l2"] for h in res.history]
    assert hist[-1] < 0.1 * hist[0]
    split = res.error_split()
    assert split["blocks"]["*"] <= 1e-10  # no error from the exact parts


@pytest.mark.parametrize("kw,needle", [
    (dict(method="vanilla"), "steady DT-PINNs"),
])
def test_exact_conditions_refused_where_not_built(mixed, kw, needle):
    cloud, _ = mixed
    pb = dt.Problem("-lap(u)", bc=dt.Dirichlet(exact=True), exact=EXACT)
    with pytest.raises(ValueError, match=needle):
        dt.discretize(pb, cloud, 4, **kw)
    heat = dt.Problem("dt(u) - lap(u)", bc=dt.Dirichlet(exact=True), exact="exp(-t)*x*y",
                      time=(0, 1), nt=2)
    with pytest.raises(ValueError, match="time-dependent"):
        dt.discretize(heat, cloud, 4)
    with pytest.raises(ValueError, match="only a Dirichlet condition"):
        dt.Condition("dn(u)", None, "neumann", True)


def test_cli_dirichlet_exact_run_predicts_like_its_solution(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "dtpinn_dist.train", "--n-points", "200",
                        "--bc", "dirichlet-exact", "--steps", "3", "--width", "10",
                        "--test-points", "300", "--threads", "1", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (out / "lift.npz").is_file()
    assert 'type = "dirichlet"' in (out / "config.toml").read_text()
    assert "exact = true" in (out / "config.toml").read_text()
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["settings"]["bc"] == "dirichlet-exact"
    sol = np.load(out / "solution.npz")
    got = dt.load_run(out).predict(sol["points"])
    assert np.array_equal(got, sol["u"])


@pytest.mark.mpi
def test_exact_conditions_distributed_equal_serial(comm):
    """Every rank builds the same G and phi (serial solves on the whole cloud) and takes its own
    nodes' values: the distributed loss is the serial one within the sparse sums' round-off."""
    pytest.importorskip("petsc4py")
    from dtpinn_dist.comm import SerialComm
    from roundoff import loss_bound, residual_scale
    cloud = tagged_square(500, seed=4, n_test=300)
    pb = dt.Problem("-lap(u) + u**3", bc={"left": dt.Neumann(), "*": dt.Dirichlet(exact=True)},
                    exact=EXACT)
    serial = dt.discretize(pb, cloud, 4, comm=SerialComm())
    dist = dt.discretize(pb, cloud, 4, comm=comm, backend="petsc", partitioner="hilbert")
    model = dt.MLP(2, 12, 2, seed=3, input_box=serial.input_box)
    with torch.no_grad():
        U = serial.network_values(model)
        r = serial.values_residual(U)
    assert abs(dist.loss(model) - serial.loss(model)) <= loss_bound(r, residual_scale(serial, U))
    n = len(serial.data["test"])
    assert abs(dist.rel_l2(model) - serial.rel_l2(model)) <= 4 * n * EPS * serial.rel_l2(model)

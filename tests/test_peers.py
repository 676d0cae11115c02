"""The DeepXDE peer runner (benchmarks/peers/deepxde_runner.py).

Skips without DeepXDE or without the authors' node sets. Runs DeepXDE for a few seconds on the
582-node set; checks that it trains on our problem (f, g against sympy), that the timed chunks
replay DeepXDE's own L-BFGS driver exactly, and that the JSON report is complete.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is not installed with the package
    sys.path.insert(0, str(REPO))

from benchmarks.peers import deepxde_runner as R  # noqa: E402

RESULT_KEYS = {"tool", "settings", "versions", "machine", "lbfgs", "counts", "best_rel_l2",
               "time_to_best_s", "cpu_to_best_s", "iteration_at_best", "final_rel_l2",
               "time_to_error_s", "time_to_error_cpu_s", "train_time_s", "train_cpu_s",
               "eval_time_s", "iterations", "func_evals", "extra_evals", "extra_eval_time_s",
               "stop_reason", "history"}


@pytest.fixture(scope="module")
def ref():
    try:
        return R.reference_dir()
    except R.PeerInputError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def dde(ref):
    try:
        return R.import_deepxde(quiet=True)
    except R.DeepXDEUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("problem", R.PROBLEMS)
def test_manufactured_data_match_sympy(problem):
    """f and g are eq. (1)/(3)/(5) and (2) applied to eq. (19)/(20), derived independently."""
    import sympy as s

    x, y, t = s.symbols("x y t")
    u = 1 + s.sin(s.pi * x) * s.cos(s.pi * y) * (s.sin(s.pi * t) if problem == "heat" else 1)
    lap = s.diff(u, x, 2) + s.diff(u, y, 2)
    f = {"poisson": lap, "nonlinear-poisson": lap - s.exp(u),
         "heat": s.diff(u, t) - lap}[problem]
    nx, ny = s.symbols("nx ny")
    g = nx * s.diff(u, x) + ny * s.diff(u, y) + u
    rng = np.random.default_rng(12)
    X = rng.uniform(-1, 1, size=(50, 3 if problem == "heat" else 2))
    theta = rng.uniform(0, 2 * np.pi, 50)
    N = np.column_stack([np.cos(theta), np.sin(theta)])
    args = (x, y, t)
    cols = [X[:, i] for i in range(X.shape[1])] + ([0.0] if problem != "heat" else [])
    f_ref = s.lambdify(args, f, "numpy")(*cols) * np.ones(50)
    g_ref = s.lambdify(args + (nx, ny), g, "numpy")(*cols, N[:, 0], N[:, 1]) * np.ones(50)
    u_ref = s.lambdify(args, u, "numpy")(*cols) * np.ones(50)
    # the same closed forms evaluated two ways in fp64: values are O(30), so agreement to
    # 1e-12 relative leaves ~100x over the round-off of a few sin/cos/exp evaluations
    np.testing.assert_allclose(R.forcing(problem, X), f_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(R.robin_data(problem, X, N), g_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(R.exact_solution(problem, X), u_ref, rtol=1e-12, atol=1e-12)


def test_short_run_trains_and_reports(dde, ref, tmp_path):
    out = tmp_path / "dx.json"
    # 3 CPU seconds (not wall): the same work however loaded the machine is
    rc = R.main(["--n", "582", "--time", "3", "--budget-clock", "cpu", "--targets", "5e-2",
                 "--json", str(out), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert RESULT_KEYS <= set(res)
    assert res["tool"] == "deepxde" and res["versions"]["deepxde"] == dde.__version__
    c = res["counts"]
    assert (c["n_interior"], c["n_boundary"], c["n_pde_rows"], c["n_bc_rows"], c["n_test"]) == \
        (506, 76, 582, 76, 21748)
    lb = res["lbfgs"]  # DeepXDE's defaults, as read from the optimizer it built
    assert (lb["tolerance_change"], lb["tolerance_grad"], lb["history_size"],
            lb["line_search_fn"], lb["maxiter"]) == (0, 1e-8, 100, "strong_wolfe", 15000)
    h = res["history"]
    assert h[0]["iteration"] == 0 and h[0]["train_time_s"] == 0.0
    assert all(b["train_time_s"] > a["train_time_s"] for a, b in zip(h, h[1:]))
    assert all(b["train_cpu_s"] >= a["train_cpu_s"] for a, b in zip(h, h[1:]))
    assert res["train_cpu_s"] >= 3.0 and res["stop_reason"].startswith("time budget")
    assert res["train_time_s"] >= res["train_cpu_s"] * 0.9  # one thread: cpu <~ wall
    # ~100 L-BFGS iterations take the Glorot-initialised network (error ~1) to a few percent
    assert h[0]["rel_l2"] > 0.5 and res["best_rel_l2"] < 0.1 * h[0]["rel_l2"]
    assert res["best_rel_l2"] == min(r["rel_l2"] for r in h)
    assert set(res["time_to_error_s"]) == {repr(0.05), repr(1e-3), repr(1e-4)}
    assert set(res["time_to_error_cpu_s"]) == set(res["time_to_error_s"])
    # the existing report is kept unless --overwrite
    assert R.main(["--n", "582", "--json", str(out), "--quiet"]) == 2


def test_chunks_replay_deepxde_train_bitwise(dde, ref):
    """Chunked, timed training = DeepXDE's Model.train: the same weights, bit for bit.

    maxiter 12 makes DeepXDE's per-call evaluation budget (15) end calls early, so the replay of
    its call boundaries is exercised too; chunk_seconds ~0 cuts a chunk after every iteration.
    """
    import torch

    cfg = R.RunConfig(n=582, max_iter=12, time_budget=1e9, chunk_seconds=1e-9, eval_ratio=0,
                      verbose=False, record_loss=False)
    res, mine = R.train_model(cfg)
    assert res["stop_reason"].startswith("max_iter") and res["extra_evals"] > 5
    with R.deepxde_settings(dde, cfg.validate()):
        theirs = R.build_model(dde, cfg)[0]
        theirs.train(verbose=0)
    assert res["iterations"] == theirs.train_state.iteration
    for a, b in zip(mine.net.parameters(), theirs.net.parameters()):
        assert torch.equal(a.detach(), b.detach())
    # the run left DeepXDE's global options as they were
    assert dde.optimizers.config.LBFGS_options["maxiter"] == 15000


def test_bad_input_is_one_clear_error(capsys):
    assert R.main(["--n", "1234", "--quiet"]) in (2,)
    err = capsys.readouterr().err
    assert "error:" in err and ("1663" in err or "DTPINN_REFERENCE_DIR" in err)
    assert "Traceback" not in err
    with pytest.raises(R.PeerInputError, match="pde_points"):
        R.RunConfig(pde_points="boundary").validate()
    with pytest.raises(R.PeerInputError, match="targets"):
        R.RunConfig(targets=(-1.0,)).validate()

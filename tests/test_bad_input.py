"""Hostile input (issue 21 section 1, issue 22 sections 3-4): each case is one line naming the
problem and the fix, exit status 2, no traceback, nothing written, no hang; serially and under
mpirun with 2 and 3 ranks."""
import io
import json
import sys
import zipfile

import numpy as np
import pytest
import torch

from dtpinn_dist.resources import ResourceError

TINY = ["--n-points", "60", "--steps", "1", "--width", "8", "--depth", "2", "--test-points",
        "60", "--quiet"]


def _npy(shape, data=b"\0" * 64, descr="<f8") -> bytes:
    """A .npy member whose header declares ``shape`` whatever data follows."""
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": False,
                                             "shape": shape})
    return b.getvalue() + data


def _zip(path, members: dict):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return path


def _main_one_line(args, capsys, out):
    """Run the CLI in-process; assert the one-line refusal; return the line."""
    from dtpinn_dist.train.__main__ import main

    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's own refusals
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("args,needle", [
    (["--method", "solve", "--dtype", "fp32"], "the direct solve works in fp64"),
    (["--pde", ""], "--pde is empty"),
    (["--f", " "], "--f is empty"),
    (["--threads", "99999999999999999999"], "--threads 99999999999999999999 is out of range"),
    (["--nt", "10000000000", "--pde", "dt(u) - lap(u)", "--time", "0", "1"], "--nt"),
    (["--order", "100000000000000000000000000"], "--order"),
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["--index", "5"], "--index picks a node set of a .mat file"),
    (["--exact", "atan2(y, x)"], "DiracDelta"),
    (["--exact", "sign(x)"], "DiracDelta"),
    (["--pde", "lap(lap(u))"], "two conditions on each boundary part"),
    (["--pde", "lap(u) + u**u**u**u"], "the loss is not finite at the initial network"),
])
def test_refused_in_one_line(tmp_path, capsys, args, needle):
    out = tmp_path / "o"
    err = _main_one_line([*TINY, "--out", str(out), *args], capsys, out)
    assert needle in err


def test_non_finite_initial_gradient_named_before_training():
    """Finite loss, infinite gradient (sqrt(u) at u = 0: a network whose last layer is zero)."""
    from dtpinn_dist.geometry import make_cloud
    from dtpinn_dist.model import MLP
    from dtpinn_dist.optimizer.trainer import TrainConfig, Trainer
    from dtpinn_dist.problem import Dirichlet, Problem, discretize

    disc = discretize(Problem("lap(u) + u**0.5", bc=Dirichlet(g="0"), f="1"),
                      make_cloud("disk", n=80, seed=0), 3)
    model = MLP(2, 6, 2, seed=0)
    with torch.no_grad():
        model.layers[-1].weight.zero_()
        model.layers[-1].bias.zero_()
    with pytest.raises(ValueError, match=r"the loss at the initial network is finite \(pde "
                                         r"term [-+.\de]+, bc term 0\) but its gradient is not"):
        Trainer(disc, TrainConfig(steps=2, verbose=False), model=model)


def test_out_empty_is_refused_and_writes_nothing_here(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _main_one_line([*TINY, "--out", ""], capsys, tmp_path / "o")
    assert "--out is empty" in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,needle", [
    (["--n-points", "500"], "--nodes and --n-points name two different clouds"),
    (["--domain", "star"], "--nodes and --domain name two different clouds"),
])
def test_conflicting_cloud_flags(tmp_path, capsys, extra, needle):
    out = tmp_path / "o"
    err = _main_one_line(["--steps", "1", "--nodes", str(tmp_path / "c.npz"), *extra,
                          "--out", str(out)], capsys, out)
    assert needle in err


@pytest.mark.parametrize("text,needle", [
    ("a = " + "[" * 3000 + "]" * 3000, "nested too deeply"),
    ("a = " + "{b = " * 3000 + "1" + "}" * 3000, "nested too deeply"),
    ("[cloud.domain]\ntype = 'disk'\nradius = 1e200", "disk radius = 1e+200: give a finite length"),
    ("[cloud.domain]\ntype = 'annulus'\nr_inner = -1.0", "annulus r_inner = -1.0"),
    ("[cloud.domain]\ntype = 'star'\nk = 100000000000", "star k = 100000000000"),
    ("[cloud.domain]\ntype = 'polygon'\nvertices = [[0, 0], [1, 0], [nan, 1]]",
     "coordinates must be finite"),
    ("[cloud.domain]\ntype = 'disk'\ncenter = [1e300, 0]", "coordinates must be finite"),
    ("[run]\nthreads = 9223372036854775807", "--threads ([run] threads in"),
    ("[training]\nhistory_size = 9223372036854775807", "--history-size ([training] history_size"),
    ("[cloud]\nnodes = 'c.npz'\nn_points = 500",
     "--nodes ([cloud] nodes in"),
    ("[cloud]\ntest_nodes = 'c.npz'\ntest_points = 50\nn_points = 100",
     "[cloud] test_nodes and --test-points ([cloud] test_points in"),
    ("[cloud]\nnodes = 'c.mat'\nn = 0", "[cloud] n 0 is out of range"),
])
def test_config_file_refusals(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = tmp_path / "o"
    err = _main_one_line(["--steps", "1", "--config", str(cfg), "--out", str(out)], capsys, out)
    assert needle in err


@pytest.mark.parametrize("args,part", [
    (["--width", "3000", "--depth", "6"], "L-BFGS state (--history-size)"),
    (["--width", "10000", "--depth", "10"], "network evaluation"),
    (["--method", "vanilla", "--width", "20000"], "checkpoint copy"),
    (["--history-size", "1000000000"], "L-BFGS state (--history-size) 7.7 GiB"),  # 8e9 + 2000 pairs
    (["--width", "100000"], "parameters and copies (--width, --depth)"),
    (["--optimizer", "lm", "--lm-step", "dense", "--width", "2000"], "Levenberg-Marquardt"),
])
def test_training_memory_refused_before_allocating(tmp_path, capsys, monkeypatch, args, part):
    monkeypatch.setenv("DTPINN_MEMORY_LIMIT", "4G")  # the same answer on any machine
    out = tmp_path / "o"
    err = _main_one_line(["--n-points", "200", "--steps", "100", "--out", str(out), *args],
                         capsys, out)
    assert "would need about" in err and "only 4.0 GiB is available" in err and part in err


def test_memory_estimate_parts():
    """The parts grow as documented: the L-BFGS state with the pairs it can store, the
    checkpoint copy with the state."""
    from dtpinn_dist.optimizer.trainer import TrainConfig, _mlp_size, training_bytes

    class D:  # the three numbers the estimate reads from a discretisation
        dtype, network_points, method = torch.float64, 1000, "dt"

    p = _mlp_size(2, 50, 4)
    assert p == 3 * 50 + 3 * 51 * 50 + 51  # 7851, as MLP(2, 50, 4)
    cfg = TrainConfig(steps=10, max_iter=2, history_size=100)
    parts = training_bytes(D, cfg, [("lbfgs", 10)], p, 50, 4, checkpoint=True)
    lb = parts["L-BFGS state (--history-size)"]
    assert lb == 8 * 100 + (2 * 20 + 3) * p * 8  # 20 iterations: at most 20 pairs
    assert parts["checkpoint copy (--checkpoint-every)"] == 2 * p * 8 + lb + 9 * 100
    assert "checkpoint copy (--checkpoint-every)" not in training_bytes(
        D, cfg, [("adam", 10)], p, 50, 4, checkpoint=False)


def test_cloud_file_headers_checked_before_reading(tmp_path, monkeypatch):
    from dtpinn_dist.geometry import load_cloud

    monkeypatch.setenv("DTPINN_MEMORY_LIMIT", "1G")
    # 375M nodes declared in a file of a few hundred bytes
    lie = _zip(tmp_path / "lie.npz", {"interior": _npy((375_000_000, 2)),
                                      "boundary": _npy((10, 2)), "normals": _npy((10, 2))})
    assert lie.stat().st_size < 2000
    with pytest.raises(ResourceError, match=r"processing the interior rows \(375000000 as "
                                            r"declared\) 244\.5 GiB"):
        load_cloud(lie)
    # a zip bomb: 200 MB of zeros behind a small header (the member's uncompressed size counts)
    bomb = _zip(tmp_path / "bomb.npz", {"interior": _npy((10, 2), b"\0" * 200_000_000),
                                        "boundary": _npy((10, 2)), "normals": _npy((10, 2))})
    assert bomb.stat().st_size < 1_000_000
    monkeypatch.setenv("DTPINN_MEMORY_LIMIT", "256M")
    with pytest.raises(ResourceError, match="its arrays as declared in the file 381.5 MiB"):
        load_cloud(bomb)


def test_predict_points_header_checked(tmp_path, capsys):
    from dtpinn_dist.outputs import read_points
    from dtpinn_dist.predict.__main__ import main as predict
    from dtpinn_dist.train.__main__ import main as train

    pts = _zip(tmp_path / "pts.npz", {"points": _npy((20_000_000_000, 2))})
    with pytest.raises(ResourceError, match=r"would need about 596\.0 GiB"):
        read_points(pts)
    run = tmp_path / "run"
    assert train([*TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "u.npz"
    assert predict([str(run), "--points", str(pts), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "596.0 GiB" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_nan_inside_the_line_search_ends_cleanly(tmp_path):
    """Finite at the start (|u| < 10), NaN at a trial point: the first trial step of lr 1e8
    sends u below -10 at some node, where log(u + 10) is NaN. torch's strong-Wolfe bracket used
    to raise IndexError; the run now stops with the restore point and writes its results."""
    from dtpinn_dist.train.__main__ import main

    out = tmp_path / "o"
    rc = main([*TINY, "--n-points", "100", "--steps", "3", "--pde", "lap(u) + log(u + 10)",
               "--exact", "x*y", "--lr", "1e8", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert "non-finite loss" in doc["stop_reason"] and doc["restored"] is not None
    assert np.isfinite(doc["final_loss"]) and doc["final_loss"] <= doc["history"][0]["loss"]


def test_eval_every_zero_means_start_and_end(tmp_path):
    from dtpinn_dist.train.__main__ import main

    out = tmp_path / "o"
    assert main([*TINY, "--steps", "3", "--eval-every", "0", "--out", str(out)]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert [h["step"] for h in doc["history"]] == [0, 3]


def test_domain_parameters_checked():
    from dtpinn_dist.geometry import Annulus, Box, Disk, Polygon, Star

    for make, needle in [(lambda: Disk(radius=1e200), "disk radius"),
                         (lambda: Disk(radius=float("nan")), "disk radius"),
                         (lambda: Disk(center=(0, 0, 0)), "2 coordinates"),
                         (lambda: Annulus(0.5, float("inf")), "annulus r_outer"),
                         (lambda: Star(k=2.5), "star k"),
                         (lambda: Polygon([[0, 0], [1, 0], [0, 1e300]]), "polygon vertices"),
                         (lambda: Box(hi=(1, 1, float("inf"))), "box hi")]:
        with pytest.raises(ValueError, match=needle):
            make()


def test_checkpoint_fields_validated(tmp_path, capsys):
    """A checkpoint whose fields have the wrong type or range, or tensors of the wrong shape,
    is refused in one line naming the field (not 'resumed at step -5')."""
    from dtpinn_dist.train.__main__ import main

    run = tmp_path / "run"
    assert main([*TINY, "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    path = run / "checkpoint.pt"
    good = torch.load(path, weights_only=True)

    def resume_with(change, needle):
        doc = torch.load(path, weights_only=True) if path.exists() else good
        change(doc["state"])
        torch.save(doc, path)
        rc = main(["--resume", str(run), "--steps", "4", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
        torch.save(good, path)

    resume_with(lambda s: s.update(step=-5), "step is -5, but must be an integer >= 0")
    resume_with(lambda s: s.update(evals=2.5), "evals is 2.5")
    resume_with(lambda s: s.update(train_time_s=float("nan")), "train_time_s is nan")
    resume_with(lambda s: s.update(history="x"), "history is 'x'")
    key = next(iter(good["state"]["model"]))
    resume_with(lambda s: s["model"].update({key: torch.zeros(3, 3, dtype=torch.float64)}),
                f"model[{key!r}] is shape [3, 3], but must be of shape")
    resume_with(lambda s: s["restore_point"].update(params=torch.zeros(5, dtype=torch.float64)),
                "restore_point params is shape [5]")
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2  # untouched


def test_checkpoint_optimizer_vectors_checked(tmp_path):
    from dtpinn_dist.geometry import make_cloud
    from dtpinn_dist.optimizer import CheckpointError
    from dtpinn_dist.optimizer.checkpoint import check_shapes
    from dtpinn_dist.optimizer.trainer import TrainConfig, Trainer
    from dtpinn_dist.problem import Dirichlet, Problem, discretize

    cloud = make_cloud("disk", n=80, seed=0)
    disc = discretize(Problem("lap(u)", bc=Dirichlet(), exact="x*y"), cloud, 3)
    tr = Trainer(disc, TrainConfig(steps=2, width=6, depth=2, verbose=False))
    tr.train()
    state = tr.state_dict()
    check_shapes(state, tr.model)  # its own state fits
    state["optimizer"]["state"][0]["d"] = torch.zeros(7, dtype=torch.float64)
    with pytest.raises(CheckpointError, match=r"optimizer state d is shape \[7\]"):
        tr.load_state_dict(state)
    state = tr.state_dict()
    state["optimizer"]["param_groups"][0]["params"] = [0, 1]
    with pytest.raises(CheckpointError, match="its lbfgs state does not fit this run"):
        tr.load_state_dict(state)
    state = tr.state_dict()
    state["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)
    with pytest.raises(CheckpointError, match="rng is .* but must be"):
        tr.load_state_dict(state)


# ------------------------------------------------------------------------------ under mpirun
@pytest.mark.parametrize("n", [2, 3])
def test_mpi_deep_toml_ends_the_job(tmp_path, mpirun, n):
    """The deep TOML hung under mpirun (rank 0 raised before the abort handler was armed)."""
    cfg = tmp_path / "deep.toml"
    cfg.write_text("a = " + "[" * 3000 + "]" * 3000)
    p = mpirun(n, [sys.executable, "-m", "dtpinn_dist.train", "--config", str(cfg), "--out",
                   str(tmp_path / "o")], timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.count("nested too deeply") == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,needle", [
    (["--method", "solve", "--dtype", "fp32"], "the direct solve works in fp64"),
    (["--pde", "lap(u) + u**u**u**u"], "the loss is not finite at the initial network"),
    (["--width", "3000", "--depth", "6"], "L-BFGS state (--history-size)"),
    (["--nodes", "c.npz", "--n-points", "100"], "name two different clouds"),
    (["--nodes", "LIE"], "375000000 as declared"),  # read by rank 0 alone: its abort ends all
])
def test_mpi_refusals_once_exit_2(tmp_path, mpirun, args, needle, monkeypatch):
    monkeypatch.setenv("DTPINN_MEMORY_LIMIT", "4G")
    lie = _zip(tmp_path / "lie.npz", {"interior": _npy((375_000_000, 2)),
                                      "boundary": _npy((10, 2)), "normals": _npy((10, 2))})
    size = TINY[2:] if "--nodes" in args else TINY  # one cloud source
    args = [str(lie) if a == "LIE" else a for a in args]
    p = mpirun(2, [sys.executable, "-m", "dtpinn_dist.train", *size, "--out",
                   str(tmp_path / "o"), *args], timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.count(needle) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "o").exists()


def test_bilaplacian_by_autograd_without_graph():
    """The metrics path (create_graph=False) of lap(lap(u)) used to fail with "element 0 of
    tensors does not require grad"; d4/dx4 x^4 + 2 d2/dx2 d2/dy2 x^2 y^2 = 24 + 8."""
    from dtpinn_dist.problem.autograd import autograd_fields

    P = torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = autograd_fields(lambda X: (X[:, 0] ** 4 + X[:, 0] ** 2 * X[:, 1] ** 2).reshape(-1, 1),
                          P, 2, {"bilap"}, create_graph=False)
    # integer coefficients times x^0 and y^0: exact in floating point
    assert torch.equal(out["bilap"], torch.full((5,), 32.0, dtype=torch.float64))


def test_fourth_order_discretises_but_is_not_trained_or_solved():
    """lap(lap(u)) has its RBF-FD operator (the paper's Fig. 7 applies it), but one condition
    per boundary part does not pose it: training and the direct solve refuse it in one line."""
    from dtpinn_dist.geometry import make_cloud
    from dtpinn_dist.optimizer.trainer import TrainConfig, Trainer
    from dtpinn_dist.problem import Dirichlet, Problem, discretize, solve_discrete

    problem = Problem("lap(lap(u))", bc=Dirichlet(g="0"), f="0")
    assert problem.order == 4 and Problem("lap(u)", bc=Dirichlet(g="0"), f="0").order == 2
    disc = discretize(problem, make_cloud("disk", n=120, seed=0), 3)
    for run in (lambda: Trainer(disc, TrainConfig(steps=1, verbose=False)),
                lambda: solve_discrete(disc)):
        with pytest.raises(ValueError, match="needs two conditions on each boundary part"):
            run()

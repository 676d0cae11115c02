"""What a run leaves in its folder (docs/outputs.md), end to end through the command line, serially
and under ``mpirun -n 2``: the resolved config, metrics, the model (weights-only), the solution and
its error (.npz, VTK), PNG plots, train.log; ``predict`` (API and CLI) on the saved model."""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from dtpinn_dist.outputs import load_run

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--n-points", "150", "--steps", "3", "--eval-every", "1", "--width", "12", "--depth",
         "2", "--test-points", "300", "--threads", "1"]
FILES = {"config.toml", "metrics.json", "model.pt", "model.json", "solution.npz", "solution.vtu",
         "solution.png", "error.png", "history.png", "train.log"}


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        env.pop(var, None)
    return env


def _train(*args, timeout=300, code=None):
    cmd = [sys.executable, "-m", "dtpinn_dist.train", *map(str, args)] if code is None else \
        [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _check_run_folder(out: Path, ranks: int):
    """Every output is there, complete and consistent with the others."""
    names = {p.name for p in out.iterdir()}
    assert FILES <= names, FILES - names
    assert not [n for n in names if n.endswith(".tmp") or n == ".lock"], names
    m = json.loads((out / "metrics.json").read_text())
    assert m["ranks"] == ranks
    s = m["settings"]
    assert s["cloud"]["kind"] == "generated" and s["cloud"]["n_requested"] == 150
    # the recorded N is the cloud's actual Ni + Nb (not the requested count)
    assert s["n_collocation"] == s["cloud"]["N"] == s["n_interior"] + s["n_boundary"]
    assert s["n_test"] == s["cloud"]["test"]["n"]
    assert set(s["outputs"]) >= FILES - {"config.toml", "metrics.json", "train.log"}
    # the model: weights only, plus its architecture
    state = torch.load(out / "model.pt", weights_only=True)
    info = json.loads((out / "model.json").read_text())
    assert info["architecture"]["width"] == 12 and info["inputs"] == ["x", "y"]
    assert set(state) == {f"layers.{k}.{w}" for k in range(3) for w in ("weight", "bias")}
    run = load_run(out)
    with np.load(out / "solution.npz", allow_pickle=False) as z:
        P, u, ue, err = z["points"], z["u"], z["u_exact"], z["error"]
        assert len(P) == s["n_test"]
        # the saved network reproduces the saved solution exactly (same weights, same points)
        assert np.array_equal(run.predict(P), u)
        assert np.array_equal(err, u - ue)
        # the file's error is the run's final error (eq. (18)); summation order differs across
        # ranks, so compare to round-off (1e-12 relative is far above fp64 sums of 300 terms)
        assert float(z["rel_l2"]) == pytest.approx(m["final_rel_l2"], rel=1e-12)
    import meshio
    mesh = meshio.read(out / "solution.vtu")
    assert mesh.points.shape == (len(P), 3) and np.array_equal(mesh.points[:, :2], P)
    assert np.array_equal(mesh.point_data["u"], u)
    for png in ("solution.png", "error.png", "history.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["cloud"] == {"n_points": 150, "domain": "disk", "test_points": 300}
    assert cfg["training"]["steps"] == 3 and "out" not in cfg.get("run", {})
    log = (out / "train.log").read_text()
    assert "cloud: generated disk" in log and "stopped: step budget" in log
    return m


def test_serial_run_folder_and_rerun_from_its_config(tmp_path):
    out = tmp_path / "run"
    p = _train(*SMALL, "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    m = _check_run_folder(out, ranks=1)
    # banner: the cloud's source and why, its actual sizes, the test set
    lines = p.stdout.splitlines()
    c = m["settings"]["cloud"]
    assert lines[0].startswith("cloud: generated disk") and f"N = Ni + Nb = {c['N']}" in lines[0]
    assert "asked for 150" in lines[0]
    assert lines[1].startswith(f"test set: {c['test']['n']} points")
    assert p.stdout.count("cloud:") == 1
    # re-runnable as is: the same history, bit for bit
    again = tmp_path / "again"
    p2 = _train("--config", out / "config.toml", "--out", again)
    assert p2.returncode == 0, p2.stderr[-3000:]
    m2 = json.loads((again / "metrics.json").read_text())
    assert [h["loss"] for h in m2["history"]] == [h["loss"] for h in m["history"]]


def test_predict_cli_and_api(tmp_path, capsys):
    from dtpinn_dist.predict.__main__ import main as predict
    from dtpinn_dist.train.__main__ import main as train

    out = tmp_path / "run"
    assert train([*SMALL, "--quiet", "--out", str(out)]) == 0
    rng = np.random.default_rng(3)
    P = rng.uniform(-0.7, 0.7, (40, 2))
    np.savez(tmp_path / "pts.npz", points=P)
    np.savetxt(tmp_path / "pts.csv", P, delimiter=",", header="x,y", comments="", fmt="%.17g")
    assert predict([str(out), "--points", str(tmp_path / "pts.npz"), "--out",
                    str(tmp_path / "pred.npz")]) == 0
    assert predict([str(out), "--points", str(tmp_path / "pts.csv"), "--out",
                    str(tmp_path / "pred.csv")]) == 0
    u = load_run(out).predict(P)
    with np.load(tmp_path / "pred.npz", allow_pickle=False) as z:
        assert np.array_equal(z["u"], u) and np.array_equal(z["points"], P)
    table = np.loadtxt(tmp_path / "pred.csv", delimiter=",", skiprows=1)
    assert np.array_equal(table[:, 2], u)  # %.17g round-trips a double exactly
    capsys.readouterr()
    # refusals: one line each, nothing written
    bad = [([str(out), "--points", str(tmp_path / "pts.npz"), "--out", str(tmp_path / "pred.npz")],
            "already exists"),
           ([str(out), "--points", str(tmp_path / "pts.npz"), "--t", "0.5", "--out",
             str(tmp_path / "p2.npz")], "steady"),
           ([str(tmp_path), "--points", str(tmp_path / "pts.npz"), "--out",
             str(tmp_path / "p3.npz")], "model description"),
           ([str(out), "--points", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "p4.npz")],
            "does not exist")]
    for argv, needle in bad:
        assert predict(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not any((tmp_path / f"p{k}.npz").exists() for k in (2, 3, 4))
    # a damaged model file is one clear error, never an unpickling
    (out / "model.pt").write_bytes((out / "model.pt").read_bytes()[:200])
    from dtpinn_dist.outputs import ModelFileError
    with pytest.raises(ModelFileError, match="damaged or truncated"):
        load_run(out)


def test_time_dependent_outputs_and_predict(tmp_path):
    """Heat: one VTK file per time slice and a .pvd time series; predict at a time t or with t
    as the last column."""
    from dtpinn_dist.train.__main__ import main as train
    import meshio

    out = tmp_path / "heat"
    assert train(["--problem", "heat", "--n-points", "80", "--nt", "3", "--steps", "1",
                  "--width", "8", "--depth", "2", "--threads", "1", "--quiet", "--out",
                  str(out)]) == 0
    text = (out / "solution.pvd").read_text()
    assert text.count("<DataSet") == 4 and 'timestep="0.5"' not in text  # 0, 1/3, 2/3, 1
    # every file the run wrote is in the run folder's registry (what --overwrite moves aside)
    from dtpinn_dist.outputs.rundir import run_files
    assert sorted(str(p.relative_to(out)) for p in run_files(out)) == sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    run = load_run(out)
    assert run.time_dependent and run.inputs == ["x", "y", "t"]
    with np.load(out / "solution.npz", allow_pickle=False) as z:
        P, u, T = z["points"], z["u"], z["times"]
        assert u.shape == (4, len(P)) and np.allclose(T, [0, 1 / 3, 2 / 3, 1], rtol=0,
                                                      atol=1e-15)
        for k in range(4):
            mesh = meshio.read(out / "vtk" / f"solution_{k:04d}.vtu")
            assert np.array_equal(mesh.point_data["u"], u[k])
        assert np.array_equal(run.predict(P, t=T[2]), u[2])
        assert np.array_equal(run.predict(np.column_stack([P, np.full(len(P), T[2])])), u[2])
    with pytest.raises(ValueError, match="time t"):
        run.predict(P)


def test_missing_io_extra_skips_vtk_and_plots_with_one_warning(tmp_path):
    """Without matplotlib and meshio (the [io] extra) the run succeeds, writes everything else and
    says so in one line."""
    code = """
import sys
sys.modules['matplotlib'] = None
sys.modules['meshio'] = None
from dtpinn_dist.train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""
    out = tmp_path / "run"
    p = _train(*SMALL, "--quiet", "--out", out, code=code)
    assert p.returncode == 0, p.stderr[-2000:]
    warn = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(warn) == 1 and "meshio and matplotlib not installed" in warn[0], p.stderr
    names = {q.name for q in out.iterdir()}
    assert {"metrics.json", "model.pt", "model.json", "solution.npz", "config.toml"} <= names
    assert not names & {"solution.vtu", "solution.png", "error.png", "history.png"}
    assert "warning: meshio and matplotlib" in (out / "train.log").read_text()


def test_quiet_still_logs_every_line(tmp_path, capsys):
    from dtpinn_dist.train.__main__ import main as train

    out = tmp_path / "q"
    assert train([*SMALL, "--quiet", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    log = (out / "train.log").read_text().splitlines()
    assert log[0].startswith("cloud: ") and log[1].startswith("test set: ")
    assert sum(ln.startswith("step ") for ln in log) == 4 and log[-1].startswith("wrote ")


@pytest.mark.skipif(not __import__("dtpinn_dist.outputs.progress", fromlist=["x"])
                    .tqdm_available(), reason="tqdm not installed (add it to the [io] extra)")
def test_progress_bar_on_a_terminal(tmp_path):
    """On a terminal (a pseudo-terminal here) the bar is drawn on stderr."""
    import pty

    out = tmp_path / "tty"
    pid, fd = pty.fork()
    if pid == 0:  # child: stderr is the pty
        os.chdir(ROOT)
        os.environ.update(_env())
        os.execv(sys.executable, [sys.executable, "-m", "dtpinn_dist.train", *SMALL,
                                  "--out", str(out)])
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    assert os.WEXITSTATUS(status) == 0, text[-2000:]
    assert "step/s" in text or "it/s" in text or "3/3" in text, text[-2000:]
    assert "step      1" not in text  # evaluation lines feed the bar, not the terminal
    assert "step      1" in (out / "train.log").read_text()


def test_run_folder_under_mpirun(mpirun, tmp_path):
    """Two ranks, settings from a config file (read on rank 0) and flags: one folder written by
    rank 0, the same files, one banner; the saved model reproduces the saved solution."""
    cfg = tmp_path / "small.toml"
    cfg.write_text('[cloud]\nn_points = 150\ntest_points = 300\n[network]\nwidth = 12\n'
                   'depth = 2\n[training]\nsteps = 3\neval_every = 1\n')
    out = tmp_path / "mpi"
    res = mpirun(2, [sys.executable, "-m", "dtpinn_dist.train", "--config", cfg, "--threads", "1",
                     "--out", out], timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    m = _check_run_folder(out, ranks=2)
    assert m["settings"]["backend"] == "petsc"
    assert res.stdout.count("cloud: generated disk") == 1
    assert res.stdout.count("wrote metrics.json") == 1


def test_banner_names_the_cloud_source(tmp_path, capsys, monkeypatch, shared_reference):
    """The default run says which cloud it trains on: the authors' file (N = 1663 exactly, their
    21748-point test set) or, when that file is not found, a generated disk and why."""
    from dtpinn_dist.train.__main__ import main as train

    common = ["--steps", "1", "--width", "8", "--depth", "2", "--threads", "1"]
    monkeypatch.setenv("DTPINN_REFERENCE_DIR", str(shared_reference))
    assert train([*common, "--out", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"cloud: the authors' DiskPoissonNodes.mat (the set with N = 1663) from "
                        f"{shared_reference} (DTPINN_REFERENCE_DIR): N = Ni + Nb = 1663 "
                        "(Ni = 1533, Nb = 130)")
    assert lines[1].startswith("test set: 21748 points, the nodes of") and "last set" in lines[1]
    s = json.loads((tmp_path / "a" / "metrics.json").read_text())["settings"]
    assert s["n_collocation"] == 1663 and s["n_test"] == 21748
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DTPINN_REFERENCE_DIR", str(empty))
    assert train([*common, "--out", str(tmp_path / "g")]) == 0
    lines = capsys.readouterr().out.splitlines()
    s = json.loads((tmp_path / "g" / "metrics.json").read_text())["settings"]
    # the generated disk has N close to, not equal to, the 1663 asked for: both are recorded
    assert lines[0] == (f"cloud: generated disk (seed 0): N = Ni + Nb = {s['n_collocation']} "
                        f"(Ni = {s['n_interior']}, Nb = {s['n_boundary']}; asked for 1663)")
    assert s["cloud"]["n_requested"] == 1663 and abs(s["n_collocation"] - 1663) < 50
    assert lines[1].startswith(f"  why generated: the authors' DiskPoissonNodes.mat was not "
                               f"found in {empty} (DTPINN_REFERENCE_DIR)")
    assert lines[2].startswith(f"test set: {s['n_test']} points generated")

"""The run folder under bad conditions (issue 11, section 6; issue 22, section 1): a read-only
--out is refused before any work, two runs on one --out (the later refuses; a killed run's lock is
taken over), no empty folder after an early failure, a full disk leaves no truncated file nor
``*.tmp``, --overwrite moves only this program's files (by name) aside and puts them back when the
new run ends without results; the same for the operators command line. Serially and under
``mpirun -n 2``."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_no_tmp, files_under, mount_tmpfs
from dtpinn_dist.atomic import OutputError, atomic_write, probe_writable
from dtpinn_dist.outputs import OutputExistsError, RunDir, check_run_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-points", "100", "--steps", "2", "--width", "8", "--depth", "2", "--test-points",
        "200", "--threads", "1"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        env.pop(var, None)
    return env


def _cli(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


@contextlib.contextmanager
def _read_only_dir(tmp_path: Path):
    """A folder nobody can write into: chmod for users, a read-only tmpfs for root (root ignores
    permission bits)."""
    d = tmp_path / "ro"
    if os.geteuid() != 0:
        d.mkdir()
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)
        return
    with mount_tmpfs(d, "64k", readonly=True):
        yield d


# ------------------------------------------------------------------------------ atomic files
def test_atomic_write_removes_its_temp_on_failure(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(OutputError, match="cannot write"):
        with atomic_write(target, "w") as fh:
            fh.write("half")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old"  # untouched
    assert_no_tmp(tmp_path)
    with atomic_write(target, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new" and oct(target.stat().st_mode & 0o777) != "0o600"
    assert_no_tmp(tmp_path)


def test_probe_writable(tmp_path):
    assert probe_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # probing creates nothing
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        probe_writable(tmp_path / "f" / "sub")
    with _read_only_dir(tmp_path) as ro:
        with pytest.raises(OutputError, match="not writable"):
            probe_writable(ro / "run")


# ------------------------------------------------------------------------------ the lock
def test_run_dir_claim_is_exclusive_and_abandon_removes_what_it_made(tmp_path):
    out = tmp_path / "x" / "y" / "run"
    a = RunDir(out).claim()
    assert (out / ".lock").exists()
    with pytest.raises(OutputExistsError, match="in use by another run"):
        RunDir(out).claim()  # this process holds it and is alive
    (a.file("train.log")).write_text("log")
    a.abandon()
    assert not (tmp_path / "x").exists()  # the folder and the parents it made are gone
    # a user's own file put in the folder while the run held it is kept (and so the folder)
    b = RunDir(out).claim()
    (out / "notes.txt").write_text("mine")
    b.abandon()
    assert (out / "notes.txt").read_text() == "mine" and not (out / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import socket
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True)
    dead = int(p.stdout)  # that process has exited
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    r = RunDir(out).claim()
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    r.release()
    assert not (out / ".lock").exists()
    # a lock from another host cannot be judged: refused, with the fix
    (out / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(OutputExistsError, match="remove .*lock if that run is gone"):
        RunDir(out).claim()


def test_two_runs_on_one_out(tmp_path):
    """A live run holds --out: a second refuses at once with one line; after the first is
    killed (-9), a third takes the folder over and finishes."""
    out = tmp_path / "shared"
    # (no checkpoint before it is killed: a folder holding one is a run to resume, refused)
    first = subprocess.Popen([sys.executable, "-m", "dtpinn_dist.train", *TINY, "--steps",
                              "100000", "--checkpoint-every", "0", "--quiet", "--out", str(out)],
                             cwd=ROOT, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (out / ".lock").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.time() - t0 < 240, "the first run never claimed its folder"
            time.sleep(0.2)
        second = _cli("dtpinn_dist.train", *TINY, "--out", out)
        assert second.returncode == 2
        line = _one_line(second.stderr)
        assert "in use by another run" in line and f"pid {first.pid}" in line
        assert "step" not in second.stdout  # refused before any work
        assert not (out / "metrics.json").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = _cli("dtpinn_dist.train", *TINY, "--out", out)
    assert third.returncode == 0, third.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert not (out / ".lock").exists()


def test_overwrite_sets_the_old_run_aside_by_name(tmp_path):
    """--overwrite moves the old run's files (by name, vtk/ slices too) into .previous-run/;
    they come back when the new run ends with neither metrics.json nor a checkpoint, stay while
    it can be resumed, and go once a run there has results. A user's
    files (also in vtk/) and a stranger's *.tmp are never touched; a killed write's temporary
    file of a run file is removed."""
    out = tmp_path / "run"
    (out / "vtk").mkdir(parents=True)
    old = {"metrics.json": b"old m", "checkpoint.pt": b"old c", "train.log": b"old log",
           "vtk/solution_0000.vtu": b"old v", "vtk/mydata.txt": b"mine",
           "notes.tmp": b"mine too", "vtk.txt": b"mine as well"}
    for k, v in old.items():
        (out / k).write_bytes(v)
    killed = out / ".checkpoint.pt.ab12cd_4.tmp"
    killed.write_bytes(b"half a checkpoint")
    r = RunDir(out, overwrite=True).claim()
    assert not killed.exists()
    assert sorted(p.name for p in out.iterdir()) == [".lock", ".previous-run", "notes.tmp",
                                                     "vtk", "vtk.txt"]
    assert files_under(out / "vtk") == {"mydata.txt": b"mine"}
    r.file("config.toml").write_bytes(b"new cfg")  # the new run fails before any results
    r.release()
    assert files_under(out) == old and not (out / ".lock").exists()
    # a new run that fails holding its own checkpoint can be resumed: the old files stay aside
    # until a run here writes its results
    r = RunDir(out, overwrite=True).claim()
    r.file("checkpoint.pt").write_bytes(b"new c")
    r.release()
    assert files_under(out / ".previous-run") == {k: v for k, v in old.items() if k in (
        "metrics.json", "checkpoint.pt", "train.log", "vtk/solution_0000.vtu")}
    r = RunDir(out, resume=True).claim()
    r.file("metrics.json").write_bytes(b"resumed m")
    r.release()
    assert not (out / ".previous-run").exists() and (out / "vtk" / "mydata.txt").exists()
    for k, v in old.items():
        (out / k).write_bytes(v)
    # failing before training (abandon) puts them back too
    r = RunDir(out, overwrite=True).claim()
    r.file("config.toml").write_bytes(b"new cfg")
    r.abandon()
    assert files_under(out) == old and sorted(p.name for p in out.iterdir()) == sorted(
        ["metrics.json", "checkpoint.pt", "train.log", "vtk", "notes.tmp", "vtk.txt"])
    # a run killed after setting them aside: they are still there, and no new run without
    # --overwrite takes the folder
    RunDir(out, overwrite=True).claim()  # claimed, never released
    (out / ".lock").unlink()  # as if its process were gone (kill -9)
    with pytest.raises(OutputExistsError, match=r"\.previous-run .*--overwrite"):
        check_run_dir(out)
    # killed after writing its own results (metrics.json): those are the newer ones, kept aside
    RunDir(out, overwrite=True).claim().file("metrics.json").write_bytes(b"newer m")
    (out / ".lock").unlink()
    r = RunDir(out, overwrite=True).claim()
    assert files_under(out / ".previous-run") == {"metrics.json": b"newer m"}
    r.release()
    assert files_under(out) == {"metrics.json": b"newer m", "vtk/mydata.txt": b"mine",
                           "notes.tmp": b"mine too", "vtk.txt": b"mine as well"}
    RunDir(out, overwrite=True).claim()  # killed again, before any results
    (out / ".lock").unlink()
    # the next --overwrite run answers for them: with results, they go
    r = RunDir(out, overwrite=True).claim()
    r.file("metrics.json").write_bytes(b"new m")
    r.release()
    assert files_under(out) == {"metrics.json": b"new m", "vtk/mydata.txt": b"mine",
                           "notes.tmp": b"mine too", "vtk.txt": b"mine as well"}
    assert not (out / ".previous-run").exists()


def test_a_resumable_run_is_not_replaced(tmp_path):
    """A folder holding checkpoint.pt (a stopped or killed run) is refused without --resume or
    --overwrite, and nothing is written."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"step 30")
    with pytest.raises(OutputExistsError, match=f"resume with --resume {out}, or --overwrite"):
        RunDir(out).claim()
    assert files_under(out) == {"checkpoint.pt": b"step 30"}
    RunDir(out, resume=True).claim().release()
    assert files_under(out) == {"checkpoint.pt": b"step 30"}


def test_a_folder_that_is_not_a_run_is_refused_whatever_the_flags(tmp_path, capsys):
    """--out naming a user's non-empty folder: our files are never mixed into it (issue 21)."""
    from dtpinn_dist.train.__main__ import main
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for flags in ([], ["--overwrite"]):
        rc = main([*TINY, "--out", str(out), *flags])
        err = _one_line(capsys.readouterr().err)
        assert rc == 2 and "not a dtpinn_dist run (e.g. 'notes.txt')" in err
        assert files_under(out) == {"notes.txt": b"mine"}
    with pytest.raises(OutputError, match="choose an empty or new folder"):
        check_run_dir(out, overwrite=True)
    # an empty folder, and a run folder holding a user's file too, are fine
    check_run_dir(tmp_path / "empty")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    check_run_dir(run, overwrite=True)


# ------------------------------------------------------------------------------ early failures
def test_read_only_out_is_refused_before_any_work(tmp_path, capsys):
    from dtpinn_dist.train.__main__ import main
    with _read_only_dir(tmp_path) as ro:
        t0 = time.time()
        rc = main([*TINY, "--out", str(ro / "run")])
        err = capsys.readouterr()
        assert rc == 2 and "not writable" in _one_line(err.err)
        assert "cloud:" not in err.out  # before the cloud was even made
        assert time.time() - t0 < 30


def test_no_run_folder_after_an_early_failure(tmp_path, capsys):
    """Bad data found in set-up (f not finite at a node): the folder is never created."""
    from dtpinn_dist.train.__main__ import main
    out = tmp_path / "deep" / "run"
    rc = main([*TINY, "--f", "log(x - 5)", "--g", "0", "--out", str(out)])
    assert rc == 2 and "not finite" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "deep").exists()
    # a finished run is not replaced without --overwrite; with it, its old outputs go first
    # (a user's vtk/mydata.txt stays: only this program's files go, by name)
    (out / "vtk").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    (out / "solution.pvd").write_text("stale")
    (out / "vtk" / "mydata.txt").write_text("mine")
    assert main([*TINY, "--quiet", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*TINY, "--quiet", "--overwrite", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    from dtpinn_dist.outputs.model_io import LIFT_FILE
    from dtpinn_dist.outputs.rundir import OUTPUT_NAMES, run_files
    assert LIFT_FILE in OUTPUT_NAMES  # (written only with exact Dirichlet conditions)
    assert sorted(str(p.relative_to(out)) for p in run_files(out)) == sorted(
        set(files_under(out)) - {"vtk/mydata.txt"})  # every file the run wrote is registered
    assert not (out / "solution.pvd").exists() and not (out / ".previous-run").exists()
    assert (out / "vtk" / "mydata.txt").read_text() == "mine"


def test_full_disk_leaves_no_truncated_file(tmp_path):
    """--out on a 160 kB file system: the run fails with one line naming the file that did not
    fit; no *.tmp, and every file that is there is complete."""
    with mount_tmpfs(tmp_path / "small", "160k") as small:
        out = small / "run"
        p = _cli("dtpinn_dist.train", *TINY, "--quiet", "--out", out)
        assert p.returncode == 2, p.stdout[-1000:] + p.stderr[-2000:]
        line = _one_line(p.stderr)
        assert "No space left on device" in line and "free disk space" in line
        assert_no_tmp(small)
        assert not (out / ".lock").exists()
        m = json.loads((out / "metrics.json").read_text())  # written first, complete
        assert m["steps"] == 2
        for npz in out.glob("*.npz"):
            with zipfile.ZipFile(npz) as z:
                assert z.testzip() is None


# ------------------------------------------------------------------------------ operators CLI
def test_operators_cli_refusals(tmp_path, capsys):
    from dtpinn_dist.geometry import make_cloud, save_npz
    from dtpinn_dist.operators import load_operators
    from dtpinn_dist.operators.__main__ import main

    out = tmp_path / "ops.npz"
    assert main(["--domain", "annulus", "--n", "300", "--order", "3", "--out", str(out)]) == 0
    L, B, cloud = load_operators(out)
    assert cloud.parts == [("outer", 0), ("inner", 1)]  # the boundary parts survive
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["--domain", "disk", "--n", "200", "--out", str(out)]) == 2
    assert "already exists" in _one_line(capsys.readouterr().err)
    assert out.read_bytes() == before
    assert main(["--domain", "disk", "--n", "200", "--out", str(out), "--overwrite"]) == 0
    assert load_operators(out)[2].parts == [("boundary", 0)]
    capsys.readouterr()
    # truncated and bad-CRC inputs: one line, nothing written
    src = tmp_path / "cloud.npz"
    save_npz(src, make_cloud("disk", n=200, seed=1))
    raw = src.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[:len(raw) // 2])
    crc = bytearray(raw)
    crc[200] ^= 0xFF  # inside the first array's data: the zip's CRC check fails
    (tmp_path / "crc.npz").write_bytes(bytes(crc))
    for bad in ("trunc.npz", "crc.npz"):
        assert main(["--nodes", str(tmp_path / bad), "--out", str(tmp_path / "o.npz")]) == 2
        assert str(tmp_path / bad) in _one_line(capsys.readouterr().err)
        assert not (tmp_path / "o.npz").exists()
        with pytest.raises(ValueError, match="truncated|corrupt"):
            load_operators(tmp_path / bad)
    # an unwritable --out: refused before any work
    with _read_only_dir(tmp_path) as ro:
        assert main(["--domain", "disk", "--n", "200", "--out", str(ro / "o.npz")]) == 2
        assert "not writable" in _one_line(capsys.readouterr().err)
    assert main(["--domain", "disk", "--n", "200", "--out", str(tmp_path / "no" / "o.npz")]) == 2
    assert "does not exist" in _one_line(capsys.readouterr().err)
    assert_no_tmp(tmp_path)


def test_load_operators_validates(tmp_path):
    from dtpinn_dist.geometry import make_cloud
    from dtpinn_dist.operators import assemble, load_operators, save_operators

    cloud = make_cloud("disk", n=200, seed=0)
    L, B = assemble(cloud, 3)
    save_operators(tmp_path / "ok.npz", cloud, L, B, 3)
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as z:
        arrays = dict(z)
    arrays["L_shape"] = np.array([5, 5])
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(ValueError, match="L has shape"):
        load_operators(tmp_path / "shape.npz")
    arrays = {k: v for k, v in arrays.items() if k != "B_data"}
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(ValueError, match="lacks"):
        load_operators(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------ under MPI
def test_out_dir_refusals_under_mpirun(mpirun, tmp_path):
    """Two ranks: each refusal is one message (rank 0 checks --out), before any work, and the job
    ends within seconds; an early failure leaves no folder."""
    out = tmp_path / "busy"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(),
                                           "host": __import__("socket").gethostname()}))
    res = mpirun(2, [sys.executable, "-m", "dtpinn_dist.train", *TINY, "--out", out],
                 timeout=180, cwd=ROOT)
    assert res.returncode != 0
    assert res.stderr.count("in use by another run") == 1, res.stderr[-2000:]
    assert "cloud:" not in res.stdout
    gone = tmp_path / "never"
    res = mpirun(2, [sys.executable, "-m", "dtpinn_dist.train", *TINY, "--f", "log(x - 5)",
                     "--g", "0", "--out", gone], timeout=180, cwd=ROOT)
    assert res.returncode != 0 and "not finite" in res.stderr
    assert not gone.exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nstepz = 1\n")
    res = mpirun(2, [sys.executable, "-m", "dtpinn_dist.train", "--config", bad, "--out",
                     tmp_path / "c"], timeout=180, cwd=ROOT)
    assert res.returncode != 0
    assert res.stderr.count("unknown key 'stepz'") == 1, res.stderr[-2000:]

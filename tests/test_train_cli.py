"""The command line: a small run writes a valid metrics.json; bad input fails cleanly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "dtpinn_dist.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_smoke_and_refuses_overwrite(tmp_path):
    out = tmp_path / "run"
    args = ["--n-points", "150", "--steps", "3", "--eval-every", "1", "--width", "16",
            "--test-points", "300", "--threads", "1", "--out", str(out)]
    p = _run(*args)
    assert p.returncode == 0, p.stderr
    doc = json.loads((out / "metrics.json").read_text())
    for k in ("settings", "ranks", "steps", "evals", "train_time_s", "eval_time_s",
              "final_rel_l2", "best_rel_l2", "history"):
        assert k in doc
    assert doc["ranks"] == 1 and doc["steps"] == 3 and len(doc["history"]) == 4
    assert doc["settings"]["dtype"] == "fp64" and doc["settings"]["backend"] == "torch"
    assert doc["best_rel_l2"] < doc["history"][0]["rel_l2"]
    assert "step" in p.stdout
    # which block limits the network: every block of the split, the largest named
    split = doc["error_split"]
    assert set(split["blocks"]) == {"pde", "*"}
    assert split["limiting"] == max(split["blocks"], key=split["blocks"].get)
    assert "error split" in p.stdout and doc["settings"]["weighting"] == "auto"
    before = (out / "metrics.json").read_bytes()
    p2 = _run(*args)
    assert p2.returncode != 0 and "already exists" in p2.stderr
    assert "Traceback" not in p2.stderr
    assert (out / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("args,needle", [
    (["--exact", "__import__('os').mkdir('PWNED')"], "not allowed"),
    (["--exact", "x + w"], "unknown name 'w'"),
    (["--f", "1"], "--g"),
    (["--backend", "cupy"], "cupy"),
    (["--nodes", "/nonexistent/cloud.npz"], "does not exist"),
])
def test_cli_bad_input_one_line(tmp_path, capsys, args, needle):
    # in-process (main(argv)) to keep the suite fast; the subprocess path is tested above
    from dtpinn_dist.train.__main__ import main
    args = [a.replace("PWNED", str(tmp_path / "pwned")) for a in args]
    if args[:2] == ["--backend", "cupy"]:
        from dtpinn_dist.operators.cupy_csr import cupy_available
        if cupy_available()[0]:
            pytest.skip("cupy present")
    size = [] if "--nodes" in args else ["--n-points", "60"]  # one cloud source
    rc = main([*size, "--steps", "1", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    assert not (tmp_path / "pwned").exists()
    assert needle.lower() in err.lower()
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_cli_unknown_choice_is_argparse_error(tmp_path, capsys):
    from dtpinn_dist.train.__main__ import main
    with pytest.raises(SystemExit) as exc:
        main(["--problem", "wave", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_cli_schedule_lbfgs_then_lm(tmp_path):
    """``--schedule lbfgs:N,lm:M`` runs both phases in order and LM lowers the loss further."""
    from dtpinn_dist.train.__main__ import main
    out = tmp_path / "sched"
    rc = main(["--n-points", "200", "--order", "3", "--width", "12", "--depth", "2",
               "--test-points", "300", "--threads", "1", "--eval-every", "1", "--quiet",
               "--schedule", "lbfgs:2,lm:4", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    hist = doc["history"]
    assert doc["settings"]["schedule"] == "lbfgs:2,lm:4"
    assert 3 <= doc["steps"] <= 6
    after_lbfgs = next(h for h in hist if h["step"] == 2)["loss"]
    assert hist[-1]["loss"] < 0.5 * after_lbfgs


@pytest.mark.parametrize("args,needle", [
    (["--optimizer", "lm", "--method", "vanilla"], "--method dt"),
    (["--optimizer", "gn", "--method", "vanilla"], "--method dt"),
    (["--schedule", "lbfgs:2, GN:3", "--method", "vanilla"], "--method dt"),
    (["--schedule", "lbfgs:3,newton:2"], "schedule"),
    (["-log_view", "--backend", "torch"], "--backend petsc"),
])
def test_cli_optimizer_choice_errors(tmp_path, capsys, args, needle):
    from dtpinn_dist.train.__main__ import main
    rc = main(["--n-points", "60", "--steps", "1", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert rc != 0 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_cli_unknown_double_dash_flag_is_rejected(tmp_path, capsys):
    from dtpinn_dist.train.__main__ import main
    with pytest.raises(SystemExit) as exc:
        main(["--bogus-flag", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "unrecognized" in capsys.readouterr().err


def test_single_process_needs_no_mpi_or_petsc(tmp_path):
    """The serial path imports and trains with petsc4py and mpi4py made unimportable."""
    code = f"""
import sys
sys.modules['mpi4py'] = None
sys.modules['petsc4py'] = None
from dtpinn_dist.train.__main__ import main
rc = main(['--n-points', '120', '--steps', '2', '--width', '8', '--depth', '2', '--quiet',
           '--out', {str(tmp_path / 'o')!r}])
assert rc == 0, rc
assert 'mpi4py.MPI' not in sys.modules and 'petsc4py.PETSc' not in sys.modules
import dtpinn_dist.info
assert 'not available' in dtpinn_dist.info.report()
print('ok')
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        env.pop(var, None)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]


@pytest.mark.parametrize("args,needle", [
    (["--ste", "2"], "unrecognized arguments: --ste"),  # no prefix matching
    (["--pde", "-lap(u)"], "--pde=-lap(u)"),  # the fix for a value that starts with '-'
])
def test_cli_argparse_errors_are_one_line(tmp_path, capsys, args, needle):
    from dtpinn_dist.train.__main__ import main
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_mpi_bad_input_reported_once_without_hang(tmp_path, mpirun):
    # every rank rejects the width; the message appears once (rank 0's abort ends the others
    # during their grace period), the job ends non-zero, no folder is created
    p = mpirun(2, [sys.executable, "-m", "dtpinn_dist.train", "--n-points", "60", "--width",
                   "0", "--out", str(tmp_path / "o")])
    assert p.returncode != 0
    assert p.stderr.count("--width 0 is out of range") == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()

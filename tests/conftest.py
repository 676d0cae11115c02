"""Test-tree set-up shared by serial and MPI runs (the DOLFINx way).

The same tree runs as ``pytest tests`` and as ``mpirun -n K python -m pytest -m mpi tests``.
Under MPI every rank runs every selected test; ranks other than 0 keep quiet unless one of
their tests fails, and then their whole report is printed, prefixed by the rank. ``mpirun``
returns non-zero when any rank's pytest does, so a failure on any rank fails the run; the
per-test timeout (pytest-timeout, thread method) kills a rank stuck in a collective, which makes
mpirun tear the job down instead of hanging.

Environment honoured here:

``DTPINN_REFERENCE_DIR``
    folder with the authors' node sets (the variable the CLI honours too); default
    ``shared/reference`` beside the repository. Tests that are about that file skip without it;
    everything else runs on generated clouds, so a plain clone runs the whole suite.
``DTPINN_TEST_THREADS``
    thread count for torch, OpenMP and OpenBLAS (default: OMP_NUM_THREADS and
    OPENBLAS_NUM_THREADS as given, else 1, and torch follows OMP_NUM_THREADS), to check that no
    assertion depends on one thread count's round-off.
``DTPINN_SPREAD_LOG``
    append the measured size of the tight comparisons (the ``spread`` fixture) to this file as
    JSON lines; ``tests/measure_spread.py`` runs them under 1 and 2 threads and prints the table.
"""
import contextlib
import io
import json
import subprocess
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

AUTHORS_FILE = "DiskPoissonNodes.mat"
THREADS = os.environ.get("DTPINN_TEST_THREADS")

# before numpy/torch load their thread pools
os.environ.setdefault("OMP_NUM_THREADS", THREADS or "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", THREADS or "1")
# Idle OpenMP threads sleep instead of spinning: with 2 threads on a busy 2-core machine the
# spinning made the heat Jacobian tests ~10x slower (past the 300 s test timeout). Numerics
# are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


from dtpinn_dist.comm.launch import launch_rank_size  # noqa: E402 (reads the launcher's env)

RANK, SIZE = launch_rank_size()
_quiet_buffer = None
_exitstatus = 0


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    global _quiet_buffer
    if SIZE > 1 or THREADS:
        import torch

        torch.set_num_threads(int(THREADS or 1))
        if RANK != 0:
            # The terminal reporter is created after this hook and writes to sys.stdout.
            _quiet_buffer = io.StringIO()
            sys.stdout = _quiet_buffer


def pytest_sessionfinish(session, exitstatus):
    global _exitstatus
    _exitstatus = int(exitstatus)


def pytest_unconfigure(config):
    if _quiet_buffer is not None:
        sys.stdout = sys.__stdout__
        if _exitstatus not in (0, 5):
            text = _quiet_buffer.getvalue()
            sys.stderr.write("".join(f"[rank {RANK}] {line}\n" for line in text.splitlines()))


@contextlib.contextmanager
def mount_tmpfs(where: Path, size: str, readonly: bool = False):
    """A small tmpfs at ``where`` (root only; skips where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def files_under(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too), as relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def assert_no_tmp(folder: Path) -> None:
    """No ``*.tmp`` file anywhere under ``folder``."""
    left = [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


def reference_dir() -> Path:
    """``$DTPINN_REFERENCE_DIR``, else ``shared/reference`` beside the repository."""
    return Path(os.environ.get("DTPINN_REFERENCE_DIR") or SHARED / "reference")


@pytest.fixture(scope="session")
def shared_reference():
    """Folder with the authors' node sets, for the tests that are about that file; they skip
    when it is absent (``DTPINN_REFERENCE_DIR`` points elsewhere)."""
    ref = reference_dir()
    if not (ref / AUTHORS_FILE).exists():
        pytest.skip(f"reference node sets not found in {ref} (set DTPINN_REFERENCE_DIR)")
    return ref


@pytest.fixture
def spread(request):
    """``spread(name, err, tol)``: record a tight comparison's measured size next to its
    tolerance when ``DTPINN_SPREAD_LOG`` is set (for ``tests/measure_spread.py``); a no-op
    otherwise. The test still asserts ``err <= tol`` itself."""
    path = os.environ.get("DTPINN_SPREAD_LOG")

    def record(name, err, tol):
        if path:
            import torch

            rec = {"test": request.node.nodeid, "name": name, "err": float(err),
                   "tol": float(tol), "ranks": SIZE, "rank": RANK,
                   "threads": torch.get_num_threads()}
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    return record


@pytest.fixture(scope="session")
def comm():
    """The run's communicator: SerialComm in plain pytest, MPIComm under mpirun."""
    from dtpinn_dist.comm import get_comm

    return get_comm("mpi" if SIZE > 1 else "serial")


def mpi_env():
    """Environment for tests that launch ``mpirun`` themselves (root, oversubscription, threads)."""
    env = dict(os.environ)
    # the launched processes import this checkout, not whatever install the venv points at
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    return env


@pytest.fixture
def mpirun():
    """Run ``mpirun -n K <args>`` as a subprocess under a timeout; returns CompletedProcess.

    For tests of whole-job behaviour (CLI runs, abort on error). Skipped when the test tree itself
    runs under mpirun (no nested launches).
    """
    import shutil
    import subprocess

    if SIZE > 1:
        pytest.skip("launches its own mpirun; runs in the serial pass")
    launcher = shutil.which("mpirun") or shutil.which("mpiexec")
    if launcher is None:
        pytest.skip("no mpirun on PATH")

    version = subprocess.run([launcher, "--version"], capture_output=True, text=True).stdout
    # OpenMPI 5 ignores the oversubscribe environment variable: say it on the command line
    oversub = ["--oversubscribe"] if "open mpi" in version.lower() else []

    def run(n, args, timeout=120, cwd=None):
        cmd = [launcher, *oversub, "-n", str(n), *map(str, args)]
        return subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)

    return run

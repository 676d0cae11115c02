"""The job that continues itself after its time limit (``jobs/train_cpu_resubmit.slurm``).

A real cycle under Slurm takes minutes (4 min measured here, the warning sent with
``scancel --batch --signal=USR1``, two jobs of 2 srun ranks, on a shared 2-core machine), so this
runs the job script itself the way Slurm does (bash in the repository root,
SLURM_* variables set, the trainer launched with ``mpirun``) and plays Slurm's part in the two
places it acts: it sends the batch shell SIGUSR1, as ``#SBATCH --signal=B:USR1@120`` does before
the limit, and ``sbatch``/``squeue`` are stand-ins on PATH that record the resubmission and give
a time limit. The trainer, its checkpoint and the resume are the real ones: the recorded
submission is then run as the next job, which must continue the run from its checkpoint.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, SIZE, mpi_env

pytestmark = pytest.mark.skipif(SIZE > 1, reason="starts its own processes; serial pass only")

FLAGS = ["--n-points", "100", "--test-points", "100", "--width", "8", "--depth", "2",
         "--max-iter", "5", "--steps", "5000", "--eval-every", "1000", "--checkpoint-every", "1"]

FAKE_SBATCH = """#!/bin/bash
# stand-in for sbatch: records its arguments (one a line) and what the next job would inherit
{ printf '%s\\n' "$@"; echo "DTPINN_RESUBMIT_COUNT=${DTPINN_RESUBMIT_COUNT:-}";
  echo "SLURM_JOB_ID=${SLURM_JOB_ID:-}"; } > "$FAKE_SBATCH_LOG"
echo "4243;dtpinntest"
"""
FAKE_SQUEUE = "#!/bin/sh\necho 30:00\n"  # `squeue -h -j ID -o %l`: the job's time limit


@pytest.fixture
def job_env(tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("no mpirun on PATH")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in mpi_env().items()
           if not k.startswith(("SLURM_", "SBATCH_", "DTPINN_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_SBATCH_LOG=str(tmp_path / "sbatch.txt"),
               SLURM_JOB_ID="4242", SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1",
               SLURM_CPUS_PER_TASK="1", SLURM_JOB_PARTITION="dtpinn",
               DTPINN_LAUNCHER="mpirun", DTPINN_PYTHON=sys.executable)
    return env


def _job(script_args, env, log):
    return subprocess.Popen(["bash", *script_args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _until(what, ok, proc, log, timeout=180):
    t_end = time.monotonic() + timeout
    while not ok():
        assert proc.poll() is None, f"the job ended before {what}:\n{log.read_text()}"
        assert time.monotonic() < t_end, f"no {what} after {timeout}s:\n{log.read_text()}"
        time.sleep(0.05)


def _finish(proc, log, timeout=120):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the job and what it started
        raise AssertionError(f"the job did not end:\n{log.read_text()}")


@pytest.mark.timeout(600)
def test_time_limit_warning_checkpoints_and_resubmits(job_env, tmp_path):
    from dtpinn_dist.optimizer.checkpoint import read

    run = tmp_path / "run"
    record = tmp_path / "sbatch.txt"
    log1 = tmp_path / "job1.log"
    with open(log1, "w") as fh:
        job = _job(["jobs/train_cpu_resubmit.slurm", *FLAGS, "--out", str(run)], job_env, fh)
    try:
        _until("a checkpoint", (run / "checkpoint.pt").exists, job, log1)
        job.send_signal(signal.SIGUSR1)  # Slurm, 120 s before the limit (B: the batch shell)
        rc = _finish(job, log1)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = log1.read_text()
    assert rc == 0, text
    assert "time limit near" in text and "checkpointed in" in text, text
    assert "Traceback" not in text, text
    k = read(run)["state"]["step"]
    assert 1 <= k < 5000
    # the continuation: after this job, same allocation shape and limit, same flags and folder
    sub = record.read_text().splitlines()
    script = sub.index("jobs/train_cpu_resubmit.slurm")
    opts, args = sub[:script], sub[script + 1:-2]
    assert {"--dependency=afterany:4242", "--ntasks=1", "--nodes=1", "--cpus-per-task=1",
            "--partition=dtpinn", "--time=30:00", f"--chdir={REPO}"} <= set(opts), opts
    assert args == [*FLAGS, "--out", str(run)], args
    assert sub[-2:] == ["DTPINN_RESUBMIT_COUNT=1", "SLURM_JOB_ID="]  # this job's ids stay here

    # the next job, as sbatch would start it: it resumes the run; at its own warning it
    # checkpoints again, and having reached DTPINN_MAX_RESUBMITS it does not resubmit
    record.unlink()
    env2 = dict(job_env, SLURM_JOB_ID="4243", DTPINN_RESUBMIT_COUNT="1", DTPINN_MAX_RESUBMITS="1")
    log2 = tmp_path / "job2.log"
    with open(log2, "w") as fh:
        job = _job(sub[script:-2], env2, fh)
    try:
        _until("the resume", lambda: f"resumed from {run} at step {k}" in log2.read_text(),
               job, log2)
        _until("a later checkpoint", lambda: read(run)["state"]["step"] > k, job, log2)
        job.send_signal(signal.SIGUSR1)
        rc = _finish(job, log2)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = log2.read_text()
    assert rc == 138, text  # 128 + SIGUSR1: stopped, to be continued by hand
    assert f"--resume {run}" in text and "not resubmitting: 1 continuations already" in text
    assert not record.exists()
    assert read(run)["state"]["step"] > k

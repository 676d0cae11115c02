# Sourced by the job scripts in jobs/ (inside a Slurm allocation, working directory = the
# repository root): prepares the environment ONCE on the batch host, then starts the trainer on
# every task with `dtpinn_train [trainer flags]`. Not meant to be run on its own.
#
# Knobs (set them when submitting, e.g. `DTPINN_LAUNCHER=mpirun sbatch jobs/train_cpu.slurm`;
# sbatch passes the submitting shell's environment to the job):
#   DTPINN_LAUNCHER  srun (default): Slurm starts the ranks; needs a Slurm MPI plugin that your MPI
#                    speaks (DTPINN_SRUN_MPI). mpirun: the MPI's own launcher inside the allocation
#                    (OpenMPI's mpirun reads the allocation from Slurm and starts its daemons with
#                    srun; works whatever MPI plugins Slurm has).
#   DTPINN_SRUN_MPI  `srun --mpi=` plugin, default pmix. Which one works depends on how the MPI was
#                    built (`srun --mpi=list` shows Slurm's side; docs/cluster.md has the table).
#                    Tested: Debian 12's OpenMPI 4.1 (PMIx 4.2) with Slurm 22.05: pmix works,
#                    pmi2 and none fail ("OMPI was not built with SLURM's PMI support"); OpenMPI 5
#                    speaks only PMIx. MPICH, Intel MPI, MVAPICH usually want pmi2 (not tested).
#   DTPINN_PYTHON    Python to run (default: .venv/bin/python, built or checked once by
#                    scripts/setup.sh). Set it to `python` after activating your own environment in
#                    the job script's site block; then scripts/setup.sh is not run.
#   Trainer flags come after the script name; a later --out replaces the default
#   runs/slurm-<jobid> (e.g. `sbatch jobs/train_cpu.slurm --problem heat --out runs/heat`).

# Threads: what the allocation gives each task (1 on the CPU scripts: ranks, not threads, share
# the cores).
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" OPENBLAS_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
# OpenMPI busy-polls while a rank waits in a collective. Started by srun it cannot tell whether
# its core is shared (more ranks than cores, other jobs or daemons on the node) and keeps spinning,
# taking the core from the rank it waits for. Measured with srun on a 2-core machine (docs/
# cluster.md): 4 ranks, 42 s of training spinning against 11-15 s yielding; 2 ranks under other
# load, 20-38 s against 13-17 s. Yielding was never clearly slower (dedicated cores: not measured),
# so it is the default here; export OMPI_MCA_mpi_yield_when_idle=0 before sbatch to spin.
export OMPI_MCA_mpi_yield_when_idle="${OMPI_MCA_mpi_yield_when_idle:-1}"
export PYTHONUNBUFFERED=1

if [ -z "${DTPINN_PYTHON:-}" ]; then
  # Once, on the batch host, before any rank starts: when .venv/ is in place it only checks that
  # it imports (seconds). Several nodes: .venv/ must be on a filesystem all nodes see.
  bash scripts/setup.sh
  DTPINN_PYTHON="$PWD/.venv/bin/python"
fi

dtpinn_train() {
  local out="runs/slurm-${SLURM_JOB_ID:?not inside a Slurm job}"
  local launch
  case "${DTPINN_LAUNCHER:-srun}" in
    srun)
      # --cpus-per-task again: srun 22.05 no longer takes it from the batch allocation.
      launch=(srun --mpi="${DTPINN_SRUN_MPI:-pmix}" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}")
      ;;
    mpirun)
      launch=(mpirun -n "${SLURM_NTASKS:?no task count in this allocation}")
      if mpirun --version 2>&1 | grep -qi "open mpi"; then
        # OpenMPI refuses root without these; one rank per slot, its cores bound to it
        if [ "$(id -u)" = 0 ]; then
          export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
        fi
        launch+=(--map-by "slot:PE=${SLURM_CPUS_PER_TASK:-1}")
      fi
      ;;
    *)
      echo "dtpinn job: error: DTPINN_LAUNCHER=${DTPINN_LAUNCHER} is not srun or mpirun" >&2
      return 2
      ;;
  esac
  # --- restart after the time limit: placeholder ---------------------------------------------
  # Needs checkpoint/restart (issue 11 section 3), not built yet. Planned here: when "$out" holds
  # a checkpoint, add `--resume "$out"`; with `#SBATCH --signal=B:USR1@120` in the job script, a
  # trap that resubmits this script (or `scontrol requeue "$SLURM_JOB_ID"`) before the limit.
  # ----------------------------------------------------------------------------------------------
  echo "dtpinn job ${SLURM_JOB_ID}: ${SLURM_NTASKS:-?} task(s) on ${SLURM_JOB_NODELIST:-?}:" \
       "${launch[*]} ${DTPINN_RANK_WRAPPER[*]:-} $DTPINN_PYTHON -m dtpinn_dist.train --out $out $*"
  "${launch[@]}" ${DTPINN_RANK_WRAPPER[@]+"${DTPINN_RANK_WRAPPER[@]}"} \
    "$DTPINN_PYTHON" -m dtpinn_dist.train --out "$out" "$@"
}

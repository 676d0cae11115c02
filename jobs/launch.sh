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
#   When that folder already holds a checkpoint.pt, the job continues that run (--resume).
#   DTPINN_RESUBMIT  1: before the time limit (Slurm's `--signal=B:USR1@T` warning) the run
#                    checkpoints and stops, and the job submits itself again to continue it
#                    (jobs/train_cpu_resubmit.slurm sets it; DTPINN_JOB_SCRIPT names the script).
#   DTPINN_MAX_RESUBMITS  at most this many continuations (default 10).
#   DTPINN_SBATCH_ARGS    extra sbatch options for the continuations (e.g. --output=...).

if [ "${DTPINN_RESUBMIT:-0}" = 1 ]; then
  # a time-limit warning during the set-up below: remembered, acted on before training starts
  trap '_dtpinn_warned=1' USR1
fi

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

# The run folder: the default, or the last --out among the trainer flags.
_dtpinn_out_dir() {
  local out="$1"
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --out) out="${2:-}"; shift ;;
      --out=*) out="${1#--out=}" ;;
    esac
    shift
  done
  printf '%s\n' "$out"
}

dtpinn_train() {
  local out="runs/slurm-${SLURM_JOB_ID:?not inside a Slurm job}"
  out="$(_dtpinn_out_dir "$out" "$@")"
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
        # mpirun passes SIGINT/SIGTERM on as SIGCONT, then SIGTERM after this many seconds, then
        # SIGKILL after as long again (measured, Open MPI 4.1; docs/cluster.md): the default 1 s
        # kills the ranks before they can checkpoint and write their outputs.
        export OMPI_MCA_odls_base_sigkill_timeout="${OMPI_MCA_odls_base_sigkill_timeout:-15}"
      fi
      ;;
    *)
      echo "dtpinn job: error: DTPINN_LAUNCHER=${DTPINN_LAUNCHER} is not srun or mpirun" >&2
      return 2
      ;;
  esac
  # --- restart: a folder with a checkpoint is continued, not started again -------------------
  local resume=()
  if [ -f "$out/checkpoint.pt" ]; then
    resume=(--resume "$out")
  fi
  echo "dtpinn job ${SLURM_JOB_ID}: ${SLURM_NTASKS:-?} task(s) on ${SLURM_JOB_NODELIST:-?}:" \
       "${launch[*]} ${DTPINN_RANK_WRAPPER[*]:-} $DTPINN_PYTHON -m dtpinn_dist.train --out $out" \
       "$* ${resume[*]}"
  if [ "${DTPINN_RESUBMIT:-0}" != 1 ]; then
    "${launch[@]}" ${DTPINN_RANK_WRAPPER[@]+"${DTPINN_RANK_WRAPPER[@]}"} \
      "$DTPINN_PYTHON" -m dtpinn_dist.train --out "$out" "$@" ${resume[@]+"${resume[@]}"}
    return
  fi
  # Resubmitting: the trainer runs in the background so that the shell can take Slurm's USR1
  # warning while it trains (bash runs a trap only between commands, or during `wait`).
  _dtpinn_out="$out"
  _dtpinn_args=("$@")
  _dtpinn_next=""
  _dtpinn_pid=""
  if [ -n "${_dtpinn_warned:-}" ]; then  # warned before the run started: only pass it on
    _dtpinn_time_limit_near
    return 0
  fi
  trap _dtpinn_time_limit_near USR1
  "${launch[@]}" ${DTPINN_RANK_WRAPPER[@]+"${DTPINN_RANK_WRAPPER[@]}"} \
    "$DTPINN_PYTHON" -m dtpinn_dist.train --out "$out" "$@" ${resume[@]+"${resume[@]}"} &
  _dtpinn_pid=$!
  while kill -0 "$_dtpinn_pid" 2>/dev/null; do
    wait "$_dtpinn_pid" || true  # returns early when the trap runs
  done
  local rc=0
  wait "$_dtpinn_pid" || rc=$?
  trap - USR1
  if [ -n "$_dtpinn_next" ]; then
    if [ "$rc" = 0 ]; then  # finished before it had to stop: nothing to continue
      scancel "$_dtpinn_next" 2>/dev/null || true
      echo "dtpinn job ${SLURM_JOB_ID}: the run finished; continuation job $_dtpinn_next cancelled"
    elif [ "$rc" = 138 ]; then  # 128 + SIGUSR1: it stopped cleanly, with a checkpoint
      echo "dtpinn job ${SLURM_JOB_ID}: checkpointed in $out; job $_dtpinn_next continues it"
      rc=0
    fi
  fi
  return "$rc"
}

# The trap of Slurm's time-limit warning (`#SBATCH --signal=B:USR1@120`): tell the trainer to
# checkpoint and stop after its current step (it exits with 138), and submit this job script
# again, to start when this job ends, with the same flags and run folder (it then resumes).
_dtpinn_time_limit_near() {
  trap '' USR1  # once
  echo "dtpinn job ${SLURM_JOB_ID}: time limit near: the run checkpoints and stops"
  if [ -n "$_dtpinn_pid" ]; then  # srun and mpirun pass USR1 on to the ranks
    kill -USR1 "$_dtpinn_pid" 2>/dev/null || true
  fi
  # the flags without their --out (the continuation gets the run folder as its --out)
  local args=() skip=0 a
  for a in ${_dtpinn_args[@]+"${_dtpinn_args[@]}"}; do
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    case "$a" in
      --out) skip=1 ;;
      --out=*) ;;
      *) args+=("$a") ;;
    esac
  done
  local n="${DTPINN_RESUBMIT_COUNT:-0}" max="${DTPINN_MAX_RESUBMITS:-10}"
  if [ "$n" -ge "$max" ]; then
    echo "dtpinn job ${SLURM_JOB_ID}: not resubmitting: $n continuations already" \
         "(DTPINN_MAX_RESUBMITS=$max); continue by hand: sbatch ${DTPINN_JOB_SCRIPT:-<script>}" \
         "${args[*]} --out $_dtpinn_out" >&2
    return 0
  fi
  # the same shape of allocation (sbatch options given on the command line are not in the
  # script's #SBATCH lines); the time limit as squeue reports it (e.g. 30:00, 1-00:00:00)
  local opts=(--parsable "--dependency=afterany:${SLURM_JOB_ID}" "--chdir=$PWD"
              "--nodes=${SLURM_JOB_NUM_NODES:-1}")
  if [ -n "${SLURM_NTASKS_PER_NODE:-}" ]; then
    opts+=("--ntasks-per-node=${SLURM_NTASKS_PER_NODE}")
  else
    opts+=("--ntasks=${SLURM_NTASKS:-1}")
  fi
  [ -z "${SLURM_CPUS_PER_TASK:-}" ] || opts+=("--cpus-per-task=${SLURM_CPUS_PER_TASK}")
  [ -z "${SLURM_JOB_PARTITION:-}" ] || opts+=("--partition=${SLURM_JOB_PARTITION}")
  [ -z "${SLURM_JOB_ACCOUNT:-}" ] || opts+=("--account=${SLURM_JOB_ACCOUNT}")
  [ -z "${SLURM_JOB_QOS:-}" ] || opts+=("--qos=${SLURM_JOB_QOS}")
  local limit
  limit="$(squeue -h -j "$SLURM_JOB_ID" -o %l 2>/dev/null || true)"
  if [[ "$limit" =~ ^[0-9][0-9:-]*$ ]]; then
    opts+=("--time=$limit")
  fi
  # shellcheck disable=SC2206  # DTPINN_SBATCH_ARGS: words, as on a command line
  opts+=(${DTPINN_SBATCH_ARGS:-})
  # this job's SLURM_* variables must not reach the next job's srun (SLURM_CONF stays)
  local clean=() v
  for v in $(compgen -e); do
    case "$v" in SLURM_CONF) ;; SLURM_*) clean+=(-u "$v") ;; esac
  done
  local next
  if next="$(env ${clean[@]+"${clean[@]}"} DTPINN_RESUBMIT_COUNT=$((n + 1)) \
             sbatch "${opts[@]}" "${DTPINN_JOB_SCRIPT:?set DTPINN_JOB_SCRIPT to the job script}" \
             ${args[@]+"${args[@]}"} --out "$_dtpinn_out")"; then
    _dtpinn_next="${next%%;*}"
    echo "dtpinn job ${SLURM_JOB_ID}: submitted job $_dtpinn_next to continue (after this one)"
  else
    echo "dtpinn job ${SLURM_JOB_ID}: error: sbatch failed; continue by hand: sbatch" \
         "$DTPINN_JOB_SCRIPT ${args[*]} --out $_dtpinn_out" >&2
  fi
}

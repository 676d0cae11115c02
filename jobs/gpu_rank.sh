#!/bin/bash
# Runs a command with one GPU visible: the one of this MPI rank. Used by jobs/train_gpu.slurm
# as `bash jobs/gpu_rank.sh python -m dtpinn_dist.train ...` on every rank.
#   srun --gpus-per-task=1: Slurm already shows each task one GPU; it is kept.
#   mpirun (or --gres=gpu:N): every rank sees all the job's GPUs on its node; the rank with node-
#   local index i takes the i-th of CUDA_VISIBLE_DEVICES (or device i when that is unset).
set -euo pipefail
local_rank="${OMPI_COMM_WORLD_LOCAL_RANK:-${MPI_LOCALRANKID:-${SLURM_LOCALID:-0}}}"
if [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
  export CUDA_VISIBLE_DEVICES="$local_rank"
else
  IFS=, read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
  if [ "${#gpus[@]}" -gt 1 ]; then
    export CUDA_VISIBLE_DEVICES="${gpus[local_rank % ${#gpus[@]}]}"
  fi
fi
exec "$@"

#!/usr/bin/env bash
# Runs the main job: DT-PINN training with its built-in default (linear Poisson on the unit disk,
# p = 4, fp64, L-BFGS), after setting up what is missing. Arguments go to the trainer, e.g.
#   bash scripts/run.sh --problem heat --out runs/heat
# Set NP=4 to run the same job on 4 MPI ranks (PETSc backend).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
py="$root/.venv/bin/python"
if [ "${NP:-1}" -gt 1 ]; then
  # One thread per rank: ranks, not threads, share the cores.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
  if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
  export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
  oversub=()
  mpirun --version 2>&1 | grep -qi "open mpi" && oversub=(--oversubscribe)
  exec mpirun "${oversub[@]}" -n "$NP" "$py" -m dtpinn_dist.train "$@"
fi
exec "$py" -m dtpinn_dist.train "$@"

#!/usr/bin/env bash
# Runs the whole test suite: serially, then the MPI-marked tests under real mpirun at 2 and 3
# ranks (3 catches uneven partitions) and 4 ranks oversubscribed. Sets up what is missing first.
# Every pass runs even when an earlier one fails (one failure must not hide the others); at the
# end one summary line per pass, and the exit status is non-zero when any pass failed.
# Extra arguments go to every pytest call (e.g. -x, -k name).
#   DTPINN_MPI_TEST_TIMEOUT  seconds per MPI pass (default 900)
#   DTPINN_REFERENCE_DIR     the authors' node sets, for the tests about that file (else skipped)
#   DTPINN_TEST_THREADS      torch/OpenMP/OpenBLAS threads of the serial pass (default 1)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh || { echo "setup failed: no tests run" >&2; exit 1; }
py="$root/.venv/bin/python"

# OpenMPI refuses root without these; more ranks than cores needs oversubscription.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
threads=${DTPINN_TEST_THREADS:-1}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads PYTHONUNBUFFERED=1
mpi_timeout=${DTPINN_MPI_TEST_TIMEOUT:-900}
# OpenMPI 5 ignores the environment variable above: say it on the command line too.
oversub=()
mpirun --version 2>&1 | grep -qi "open mpi" && oversub=(--oversubscribe)

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
summary=()
failed=0

# run_pass NAME ALLOW_EMPTY COMMAND...: run one pass, keep its output, record one summary line.
run_pass() {
  local name=$1 allow_empty=$2
  shift 2
  echo "== $name"
  "$@" 2>&1 | tee "$logs/pass.log"
  local rc=${PIPESTATUS[0]}
  # pytest's last line: "3 failed, 180 passed, 12 skipped in 201.98s" (with or without ===)
  local last
  last=$(grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran' "$logs/pass.log" \
         | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
  local verdict=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    verdict="TIMED OUT"
  elif [ "$rc" -eq 5 ] && [ "$allow_empty" = 1 ]; then
    verdict=ok  # pytest exits 5 when nothing was selected: not a failure of an MPI pass
  elif [ "$rc" -ne 0 ]; then
    verdict="FAILED (exit $rc)"
  fi
  if [ "$verdict" != ok ]; then
    failed=1
    # the failing tests of this pass, for the summary at the end
    grep -E '^(FAILED|ERROR) ' "$logs/pass.log" | sed "s/^/    /" > "$logs/$name.failures" || true
  fi
  summary+=("$(printf '%-16s %-18s %s' "$name" "$verdict" "${last:-no pytest summary}")")
  [ -s "$logs/$name.failures" ] && summary+=("$(cat "$logs/$name.failures")")
  return 0
}

run_pass serial 0 "$py" -m pytest tests "$@"
for n in 2 3 4; do
  run_pass "mpi-$n-ranks" 1 timeout -k 10 "$mpi_timeout" mpirun "${oversub[@]}" -n "$n" \
    "$py" -m pytest -m mpi -q --color=no -p no:cacheprovider tests "$@"
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "some passes FAILED"
  exit 1
fi
echo "all passes ok"

"""Measure the tight comparisons of the test suite under 1 and 2 threads and print them.

Every assertion whose tolerance is below ~1e-8 records its measured size next to its tolerance
through the ``spread`` fixture (tests/conftest.py). This script runs the given tests (default:
the whole serial suite without the slow launched-``mpirun`` tests) once per thread count, with
``DTPINN_TEST_THREADS`` / ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` set, and prints for each
record the measured value at each thread count, the tolerance and the margin (tolerance over the
largest measured value; the suite's rule is at least 10x for measured tolerances). With
``--ranks K`` it runs the ``mpi``-marked tests under ``mpirun -n K`` instead (one thread per rank).

    python tests/measure_spread.py                      # serial, threads 1 and 2
    python tests/measure_spread.py tests/test_jacobian.py
    python tests/measure_spread.py --ranks 3 --threads 1  # mpirun -n 3, pytest -m mpi
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(targets, threads, ranks, log):
    env = dict(os.environ, DTPINN_SPREAD_LOG=str(log), DTPINN_TEST_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets]
    if ranks > 1:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1")
        launcher = shutil.which("mpirun") or "mpirun"
        cmd = [launcher, "--oversubscribe", "-n", str(ranks), *cmd, "-m", "mpi"]
    else:
        cmd += ["-k", "not mpirun and not cli_under and not failure_on_one_rank "
                      "and not cli_error and not cli_petsc"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    tail = (res.stdout + res.stderr).strip().splitlines()[-1:]
    print(f"# threads={threads} ranks={ranks}: {' '.join(tail)}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", default=["tests"])
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (1,2)")
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    table = defaultdict(dict)
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.threads:
            log = Path(tmp) / f"t{t}.jsonl"
            run(args.targets, t, args.ranks, log)
            if not log.exists():
                continue
            for line in log.read_text().splitlines():
                r = json.loads(line)
                key = (r["test"].split("::", 1)[-1], r["name"])
                prev = table[key].get(t)
                # under MPI: the largest over ranks
                table[key][t] = (max(prev[0], r["err"]) if prev else r["err"], r["tol"])
    heads = "".join(f"{'threads=' + str(t):>12}" for t in args.threads)
    print(f"{'test':58} {'quantity':34}{heads}{'tolerance':>12}{'margin':>10}")
    for (test, name), per in sorted(table.items()):
        errs = [per[t][0] if t in per else float("nan") for t in args.threads]
        tol = max(v[1] for v in per.values())
        worst = max((e for e in errs if e == e), default=0.0)
        margin = f"{tol / worst:10.3g}" if worst > 0 else f"{'inf':>10}"
        vals = "".join(f"{e:12.3g}" for e in errs)
        print(f"{test[:58]:58} {name[:34]:34}{vals}{tol:12.3g}{margin}")


if __name__ == "__main__":
    main()

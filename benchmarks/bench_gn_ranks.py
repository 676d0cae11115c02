"""One Gauss-Newton CG iteration on 1 rank and on k ranks (issue 13: 2 ranks vs 1 at N = 19638).

Times, on the authors' cloud of ``--n`` nodes with the paper's 4 x 50 network, over PETSc with
any rank count (run it under ``mpirun -n 1`` and ``mpirun -n 2``):

* ``linearize``: the residual and the layer factors at the current weights;
* ``cg_iteration``: one ``J^T J v`` (``J v = A (Ju v)``, ``J^T y = Ju^T (A^T y)``, one
  P-vector ``comm.sum``): what a ``cg`` / ``lagged`` LM step pays per (P)CG iteration;
* ``lm_step``: ``--lm-steps`` steps of LM ``step="cg"`` with ``cg_maxiter`` iterations each
  (optional).

Wall seconds, the maximum over ranks (the ranks run in lockstep), median of ``--repeat``; and
process CPU seconds of rank 0. Prints one JSON line.

Usage::

    mpirun -n 2 python benchmarks/bench_gn_ranks.py --n 19638 --repeat 10
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dtpinn_dist as dt  # noqa: E402
from dtpinn_dist.comm import as_comm  # noqa: E402
from dtpinn_dist.model import MLP  # noqa: E402
from dtpinn_dist.optimizer.gauss_newton_cg import normal_matvec  # noqa: E402
from dtpinn_dist.optimizer.least_squares import PINNLeastSquares  # noqa: E402
from dtpinn_dist.optimizer.lm import LevenbergMarquardt  # noqa: E402

from benchmarks.authors import authors_cloud  # noqa: E402



def timed(comm, fn, repeat):
    walls, cpus = [], []
    for _ in range(repeat):
        comm.sum(torch.zeros(1, dtype=torch.float64))  # line the ranks up
        t, c = time.perf_counter(), time.process_time()
        fn()
        w = time.perf_counter() - t
        cpus.append(time.process_time() - c)
        walls.append(max(comm.allgather(w)))
    return {"wall_s": statistics.median(walls), "cpu_s_rank0": statistics.median(cpus)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=19638)
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--lm-steps", type=int, default=0)
    ap.add_argument("--cg-maxiter", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    comm = as_comm(None)
    cloud = authors_cloud(args.n, test=False)
    disc = dt.discretize(dt.paper_problem("poisson"), cloud, args.order, comm=comm,
                         backend="petsc")
    model = MLP(2, 50, 4, seed=0)
    lsq = PINNLeastSquares(model, disc)
    th = lsq.get_params()
    out = {"ranks": comm.size, "N": args.n, "P": th.numel(),
           "load": list(os.getloadavg())}
    out["linearize"] = timed(comm, lambda: lsq.linearize(th), max(1, args.repeat // 3))
    lin = lsq.linearize(th)
    assert lin.kind == "factors"
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(th.numel(), generator=gen, dtype=th.dtype)
    out["cg_iteration"] = timed(comm, lambda: normal_matvec(lin, comm, v), args.repeat)
    if args.lm_steps:
        lm = LevenbergMarquardt(lsq, step="cg", cg_maxiter=args.cg_maxiter)
        t = time.perf_counter()
        for _ in range(args.lm_steps):
            lm.step()
        out["lm_cg_steps"] = {"steps": args.lm_steps, "wall_s": max(comm.allgather(
            time.perf_counter() - t)), "cg_iters": lm.cg_iters, "loss": lm.last_loss}
    if comm.rank == 0:
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

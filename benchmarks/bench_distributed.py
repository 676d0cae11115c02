"""Time per L-BFGS step of a DT-PINN, serial vs distributed (PETSc MPIAIJ), issue 5 figures.

    python benchmarks/bench_distributed.py --backend torch          # 1 process, torch CSR
    python benchmarks/bench_distributed.py --backend petsc          # 1 rank, PETSc
    mpirun -n 2 python benchmarks/bench_distributed.py --backend petsc
    python benchmarks/bench_distributed.py --compare 1,2            # all of these, with ratios
    ... -log_view                                                   # PETSc's event log

Cloud: the authors' N = 19638 disk (DiskPoissonNodesLarge.mat) by default; paper network
(4 x 50 tanh, 7851 parameters), torch L-BFGS with strong-Wolfe line search (the CLI default),
max_iter 20 (one step = up to 25 closure evaluations), linear Poisson. Steps run for a fixed number of closure evaluations so the
work is the same at every rank count. Prints one JSON line (rank 0).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mat", default=str(REPO.parent / "shared/reference/DiskPoissonNodesLarge.mat"))
    ap.add_argument("--n", type=int, default=19638, help="N = Ni + Nb of the node set")
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--backend", default="petsc", choices=["petsc", "torch"])
    ap.add_argument("--kind", default="poisson")
    ap.add_argument("--steps", type=int, default=3, help="timed L-BFGS steps (after 1 warm-up)")
    ap.add_argument("--partitioner", default="auto")
    ap.add_argument("--no-line-search", action="store_true",
                    help="the paper's L-BFGS (lr 0.04, no line search; diverges at this N); "
                         "default: strong-Wolfe, as the CLI")
    ap.add_argument("--json", default=None)
    ap.add_argument("--compare", default=None, metavar="RANKS",
                    help="e.g. '1,2': run torch serial, then PETSc on each rank count (mpirun), "
                         "back to back, and print the step-time ratios")
    args, _petsc_opts = ap.parse_known_args(argv)  # unknown args (-log_view ...) are PETSc's
    if args.compare:
        return compare(args, [int(r) for r in args.compare.split(",")])

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sys.path.insert(0, str(REPO))
    from dtpinn_dist.comm import get_comm
    from dtpinn_dist.geometry import load_mat
    from dtpinn_dist.optimizer import TrainConfig, Trainer
    from dtpinn_dist.problem import discretize, paper_problem

    comm = get_comm("auto")
    if args.backend == "petsc":
        from dtpinn_dist.comm import init_petsc

        init_petsc(_petsc_opts)
    t0 = time.perf_counter()
    cloud = load_mat(args.mat, n=args.n)
    if args.backend == "torch" and comm.size > 1:
        sys.exit("--backend torch is single-process")
    disc = discretize(paper_problem(args.kind), cloud, args.order, comm=comm,
                      backend=args.backend, partitioner=args.partitioner)
    system = disc.system
    t_setup = time.perf_counter() - t0
    cfg = TrainConfig(steps=10 ** 6, eval_every=0, verbose=False,
                      line_search=not args.no_line_search)
    tr = Trainer(disc, cfg)
    evals = []

    def closure():
        loss = tr.closure()
        evals.append(time.perf_counter())
        return loss

    tr.optimizer.step(closure)  # warm-up (first products create PETSc's scatter / dense blocks)
    comm.barrier()
    n0 = len(evals)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tr.optimizer.step(closure)
    comm.barrier()
    t_steps = time.perf_counter() - t0
    n_evals = len(evals) - n0
    info = system.info
    out = {"backend": args.backend, "ranks": comm.size, "n_nodes": cloud.n_nodes,
           "order": args.order, "params": sum(p.numel() for p in tr.params),
           "setup_s": round(t_setup, 3), "steps": args.steps, "closure_evals": n_evals,
           "time_per_step_s": t_steps / args.steps, "time_per_eval_s": t_steps / max(n_evals, 1),
           "loss": tr._last_loss, "halo": info.get("halo"), "owned": info.get("owned"),
           "partitioner": info.get("partitioner")}
    if comm.rank == 0:
        print(json.dumps(out), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))


def compare(args, ranks):
    """Launch this script for torch (1 process) and PETSc at each rank count; print ratios."""
    import shutil
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    common = [__file__, "--mat", args.mat, "--n", str(args.n), "--order", str(args.order),
              "--kind", args.kind, "--steps", str(args.steps), "--partitioner", args.partitioner]
    if args.no_line_search:
        common.append("--no-line-search")
    runs = [("torch, 1 process", [sys.executable, *common, "--backend", "torch"])]
    runs += [(f"petsc, {r} rank(s)", [mpirun, "-n", str(r), sys.executable, *common,
                                      "--backend", "petsc"]) for r in ranks]
    rows = []
    for label, cmd in runs:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"{label} failed:\n{res.stderr[-2000:]}")
        rows.append((label, json.loads(res.stdout.strip().splitlines()[-1])))
    base = rows[1][1]["time_per_eval_s"] if len(rows) > 1 else rows[0][1]["time_per_eval_s"]
    print(f"N = {rows[0][1]['n_nodes']}, p = {args.order}, {args.kind}; speed-up against PETSc on "
          f"{ranks[0]} rank(s)")
    print(f"{'run':20s} {'s/step':>8s} {'s/eval':>8s} {'speed-up':>9s} {'halo (max)':>11s}")
    for label, o in rows:
        halo = max(o["halo"]) if o.get("halo") else 0
        print(f"{label:20s} {o['time_per_step_s']:8.3f} {o['time_per_eval_s']:8.4f} "
              f"{base / o['time_per_eval_s']:9.2f} {halo:11d}")


if __name__ == "__main__":
    main()

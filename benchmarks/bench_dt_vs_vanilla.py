"""DT-PINN vs vanilla PINN on one process: step cost, the MLP floor, time to best error.

Not a test. Prints, side by side, for DT fp64, DT fp32, vanilla fp32 and vanilla fp64:
time per loss+gradient evaluation (closure) and per L-BFGS step, the DT closure time over the
bare MLP forward+backward on the same points (the floor no PINN can beat), and, from a
time-bounded training, the best test error and the training time to reach it.

    python benchmarks/bench_dt_vs_vanilla.py --n 4975 --budget 40
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtpinn_dist.geometry import load_mat, make_cloud  # noqa: E402
from dtpinn_dist.optimizer import TrainConfig, Trainer  # noqa: E402
from dtpinn_dist.problem import discretize, paper_problem  # noqa: E402

# shared/reference beside the repository, or $DTPINN_REFERENCE_DIR
REF = Path(os.environ.get("DTPINN_REFERENCE_DIR",
                          Path(__file__).resolve().parents[2] / "shared" / "reference"))


def get_cloud(n: int):
    """The authors' cloud of that size if present (test set: their 21748 points), else generated."""
    for f in ("DiskPoissonNodes.mat", "DiskPoissonNodesLarge.mat"):
        try:
            c = load_mat(REF / f, n=n)
            t = load_mat(REF / "DiskPoissonNodesLarge.mat", index=-1, ghost=False)
            c.test = t.collocation
            return c, f"authors' {f} N={n}"
        except (ValueError, OSError):
            continue
    return make_cloud("disk", n=n, seed=0, n_test=20000), f"generated disk N~{n}"


def timeit(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4975)
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--problem", default="poisson")
    ap.add_argument("--budget", type=float, default=40.0, help="training seconds per variant")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paper-lr", action="store_true",
                    help="L-BFGS without line search at the paper's rates (default: strong Wolfe)")
    ap.add_argument("--variants", default="dt-fp64,dt-fp32,vanilla-fp32,vanilla-fp64")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cloud, desc = get_cloud(args.n)
    print(f"cloud: {desc}: Ni={cloud.n_interior} Nb={cloud.n_boundary} (+{cloud.n_ghost} ghost), "
          f"p={args.order}, {args.problem}, torch {torch.__version__}, {args.threads} thread(s)")
    problem = paper_problem(args.problem)
    rows = []
    for variant in args.variants.split(","):
        method, prec = variant.split("-")
        dtype = torch.float64 if prec == "fp64" else torch.float32
        disc = discretize(problem, cloud, args.order, method=method, dtype=dtype)
        cfg = TrainConfig(steps=10 ** 9, time_budget=args.budget, eval_every=5, verbose=False,
                          line_search=not args.paper_lr)
        tr = Trainer(disc, cfg)
        model = tr.model
        X = disc.data["X"]

        def floor():
            model.zero_grad()
            u = model(X)
            (u * u).sum().backward()

        t_floor = timeit(floor, args.reps)
        t_closure = timeit(tr.closure, args.reps)
        tr.evals = 0
        res = tr.train()
        rows.append(dict(variant=variant, closure=t_closure, floor=t_floor,
                         step=res.train_time_s / max(res.steps, 1), evals=res.evals,
                         steps=res.steps, best=res.best_rel_l2, t_best=res.time_to_best_s,
                         hist=res.history))
        print(f"  {variant:13s} closure {t_closure * 1e3:8.2f} ms  floor {t_floor * 1e3:7.2f} ms  "
              f"ratio {t_closure / t_floor:5.2f}  step {rows[-1]['step'] * 1e3:8.1f} ms  "
              f"steps {res.steps:4d}  best rel_l2 {res.best_rel_l2:.3e} at {res.time_to_best_s:.1f}s",
              flush=True)

    print("\nvariant        closure[ms]  floor[ms]  closure/floor  step[ms]  evals/step  "
          "best_rel_l2  t_best[s]")
    for r in rows:
        print(f"{r['variant']:13s} {r['closure'] * 1e3:11.2f} {r['floor'] * 1e3:10.2f} "
              f"{r['closure'] / r['floor']:14.2f} {r['step'] * 1e3:9.1f} "
              f"{r['evals'] / max(r['steps'], 1):11.1f} {r['best']:12.3e} {r['t_best']:10.1f}")
    by = {r["variant"]: r for r in rows}
    if "dt-fp64" in by and "vanilla-fp32" in by:
        dt, va = by["dt-fp64"], by["vanilla-fp32"]
        target = va["best"]
        reach = next((h["time_s"] for h in dt["hist"] if h["rel_l2"] is not None
                      and h["rel_l2"] <= target), None)
        print(f"\ntime-to-best: vanilla fp32 {va['t_best']:.1f}s ({va['best']:.2e}) vs DT fp64 "
              f"{dt['t_best']:.1f}s ({dt['best']:.2e}): {va['t_best'] / max(dt['t_best'], 1e-9):.1f}x")
        if reach is not None:
            print(f"DT fp64 reaches vanilla fp32's best error {target:.2e} after {reach:.1f}s: "
                  f"{va['t_best'] / max(reach, 1e-9):.1f}x faster")
        else:
            print(f"DT fp64 never reached vanilla fp32's best error {target:.2e}")
        print(f"per-step cost: vanilla fp32 closure / DT fp64 closure = "
              f"{va['closure'] / dt['closure']:.2f}x")


if __name__ == "__main__":
    main()

"""A user PDE end to end: the floor (direct solve) and what L-BFGS and Levenberg-Marquardt reach.

Not a test. ``-div((1+x^2) grad u) + 0.5 u_x + u^3 = f`` on an L-shaped domain (non-convex),
Neumann on the bottom edge and Dirichlet elsewhere, exact ``u = sin(pi x) cos(pi y / 2) + x y``,
N ~ 2000, p = 4 (issue 10 section 5). Prints the direct solution's error at the nodes, and for
each optimizer the best test error and the training time to reach it.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_user_pde.py --budget 240
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import dtpinn_dist as dt  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per optimizer")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    domain = dt.Polygon([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)])
    cloud = dt.make_cloud(domain, n=a.n, seed=0, n_test=8000)
    problem = dt.Problem("-div((1 + x**2)*grad(u)) + 0.5*dx(u) + u**3",
                         bc={"edge0": dt.Neumann(), "*": dt.Dirichlet()},
                         exact="sin(pi*x)*cos(pi*y/2) + x*y")
    disc = dt.discretize(problem, cloud, a.order)
    sol = dt.solve_discrete(disc)
    out = {"N": cloud.n_interior + cloud.n_boundary, "order": a.order,
           "load": os.getloadavg(), "direct": sol.summary()}
    print(f"N = {out['N']}, p = {a.order}: direct solve rel_l2 (nodes) {sol.rel_l2_nodes:.3e} "
          f"in {sol.time_s:.2f}s ({sol.iterations} Newton steps)", flush=True)
    for name, settings in (("lbfgs", dict(optimizer="lbfgs", steps=10 ** 6)),
                           ("lbfgs:20,lm", dict(schedule="lbfgs:20,lm:100000"))):
        res = dt.fit(disc, time_budget=a.budget, eval_every=5, verbose=False, **settings).result
        out[name] = {"best_rel_l2": res.best_rel_l2, "time_to_best_s": res.time_to_best_s,
                     "final_rel_l2": res.final_rel_l2, "steps": res.steps,
                     "stop": res.stop_reason, "train_time_s": res.train_time_s}
        print(f"{name:12s} best rel_l2 {res.best_rel_l2:.3e} at {res.time_to_best_s:.1f}s "
              f"(test points; {res.steps} steps, {res.stop_reason})", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

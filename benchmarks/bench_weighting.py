"""The loss's row weighting, before (the paper's ``count``) and after (``symbol``), side by side.

Not a test. Three problems, each trained with both weightings and the default optimizer
(L-BFGS, strong Wolfe) for the same time budget in one run, one thread:

* ``lshape``: bench_user_pde's problem (L-shaped domain, variable coefficient, u^3, Neumann on
  the bottom edge, Dirichlet elsewhere), N ~ 2000, p = 4;
* ``disk-dirichlet``: the paper's linear Poisson problem on the disk with Dirichlet conditions;
* ``disk-robin``: the paper's problem as published (Robin).

The disk uses the authors' 1663-node cloud and test set when ``DTPINN_REFERENCE_DIR`` (or
shared/reference) holds them, else a generated disk of ~1663 nodes. For each run: best test
error and when, the final loss, the error split at the nodes against the direct solve (which
block limits the network), and ``loss_to_error`` = sqrt(loss) / RMS nodal error (what a
weighting is for: of order one).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_weighting.py --budget 120 \
        --json benchmarks/results/weighting.json
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


def disk_cloud():
    from benchmarks.authors import authors_cloud
    try:
        return authors_cloud(1663), "authors' 1663-node disk"
    except (FileNotFoundError, OSError, ValueError):
        return dt.make_cloud(dt.Disk(), n=1663, seed=0, n_test=6000), "generated disk (~1663)"


def problems(names, exact=False):
    """name -> (cloud, problem, description); ``exact``: the Dirichlet parts imposed exactly
    (dt.Dirichlet(exact=True))."""
    out = {}
    if "lshape" in names:
        dom = dt.Polygon([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)])
        out["lshape"] = (dt.make_cloud(dom, n=2000, seed=0, n_test=8000),
                         dt.Problem("-div((1 + x**2)*grad(u)) + 0.5*dx(u) + u**3",
                                    bc={"edge0": dt.Neumann(), "*": dt.Dirichlet(exact=exact)},
                                    exact="sin(pi*x)*cos(pi*y/2) + x*y"), "L-shape, N ~ 2000")
    if {"disk-dirichlet", "disk-robin"} & set(names):
        cloud, what = disk_cloud()
        if "disk-dirichlet" in names:
            out["disk-dirichlet"] = (cloud, dt.paper_problem(
                "poisson", bc=dt.Dirichlet(exact=exact)), what)
        if "disk-robin" in names and not exact:
            out["disk-robin"] = (cloud, dt.paper_problem("poisson"), what)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds per run")
    ap.add_argument("--problems", default="lshape,disk-dirichlet,disk-robin")
    ap.add_argument("--weightings", default="count,symbol,exact",
                    help="count, symbol, and exact (symbol with the Dirichlet parts imposed "
                         "exactly: dt.Dirichlet(exact=True))")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {"budget_s": a.budget, "runs": []}
    names = a.problems.split(",")
    cases = {}
    for rule in a.weightings.split(","):
        for name, case in problems(names, exact=rule == "exact").items():
            cases.setdefault(name, []).append((rule, case))
    for name, runs in cases.items():
        for rule, (cloud, problem, what) in runs:
            disc = dt.discretize(problem, cloud, 4,
                                 weighting="symbol" if rule == "exact" else rule)
            sol = dt.solve_discrete(disc)
            load0 = os.getloadavg()[0]
            res = dt.fit(disc, time_budget=a.budget, steps=10 ** 6, eval_every=5,
                         verbose=False)
            r = res.result
            split = res.error_split(sol)
            row = {"problem": name, "cloud": what, "N": cloud.n_interior + cloud.n_boundary,
                   "weighting": rule, "floor_rel_l2_nodes": sol.rel_l2_nodes,
                   "best_rel_l2": r.best_rel_l2, "time_to_best_s": r.time_to_best_s,
                   "final_loss": r.final_loss, "steps": r.steps, "split": split,
                   "load": [load0, os.getloadavg()[0]]}
            out["runs"].append(row)
            print(f"{name:15s} {rule:7s} best {r.best_rel_l2:.2e} at {r.time_to_best_s:5.1f}s "
                  f"(floor {sol.rel_l2_nodes:.2e}; {r.steps} steps) loss {r.final_loss:.2e} "
                  f"sqrt(loss)/error {split['loss_to_error']:.2f}; split "
                  + ", ".join(f"{k} {v:.1e}" for k, v in split["blocks"].items())
                  + f" -> {split['limiting']}; load {load0:.1f}-{os.getloadavg()[0]:.1f}",
                  flush=True)
    runs = out["runs"]
    for name in dict.fromkeys(r["problem"] for r in runs):
        by = {r["weighting"]: r for r in runs if r["problem"] == name}
        for rule in by:
            if rule != "count" and "count" in by:
                print(f"{name}: count / {rule} best error = "
                      f"{by['count']['best_rel_l2'] / by[rule]['best_rel_l2']:.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

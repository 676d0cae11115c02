"""Levenberg-Marquardt vs L-BFGS on the paper's problems (issue 6), on the authors' node sets.

Cases (``--cases``, comma separated):

``linear``     linear Poisson, N = 1663 (DiskPoissonNodes.mat index 2), p = 4: the direct solve
               of the square system [L; B] u = [f; g] (its error at the nodes), LM's final test
               error and time, and the time to reach 4.0e-5 test error for L-BFGS and LM.
``large``      linear Poisson, N = 4977 (DiskPoissonNodesLarge.mat), p = 4: time to 1.8e-5.
``nonlinear``  nonlinear Poisson, N = 1663, p = 4: LM vs L-BFGS in the same time budget.
``heat``       heat, N = 828, p = 4, Nt = 24: matrix-free LM (GN-CG) vs L-BFGS.

Test error: relative L2 on the authors' 21748-node test set (DiskPoissonNodesLarge.mat), for
heat on the collocation nodes of all time slices (as the paper). L-BFGS is the trainer's
(torch L-BFGS, history 100, 20 iterations per step, strong-Wolfe line search with lr 1: the
paper's fixed learning rate without line search diverges at the first step here). Times are
training time only (metric evaluation excluded). DeepXDE is reported when importable (it is not installed here).

Usage::

    python benchmarks/bench_lm.py --cases linear,large --lbfgs-time 120 --lm-steps 80
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dtpinn_dist.geometry import load_mat  # noqa: E402
from dtpinn_dist.optimizer import fit  # noqa: E402
from dtpinn_dist.problem import discretize, paper_problem  # noqa: E402
from dtpinn_dist.problem.solve import solve_discrete  # noqa: E402

REF = Path(os.environ.get("DTPINN_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
DEEPXDE_S = {"linear": 31.0, "large": 153.0}  # measured on this machine (issue 6)


def _test_points():
    t = load_mat(REF / "DiskPoissonNodesLarge.mat", n=21748, ghost=False)
    return np.vstack([t.interior, t.boundary])


def _disc(path, n, order, kind, test=True, **kw):
    cloud = load_mat(path, n=n)
    if test:
        cloud = dataclasses.replace(cloud, test=_test_points())
    return cloud, discretize(paper_problem(kind, **kw), cloud, order)


def first_time_below(history, target, tkey, ekey="rel_l2"):
    for h in history:
        e = h.get(ekey)
        if e is not None and e <= target:
            return h[tkey]
    return None


def run_lbfgs(disc, time_budget, seed=0, eval_every=10):
    # strong-Wolfe line search (the default): the paper's fixed lr (no line search)
    # diverges at the first step from this initialisation on these clouds
    res = fit(disc, optimizer="lbfgs", steps=10 ** 6, time_budget=time_budget,
              eval_every=eval_every, seed=seed, verbose=False).result
    return res.history, res


def run_lm(disc, steps, time_budget, seed=0, **opts):
    """LM in the training loop, evaluated (outside the timed region) after every step."""
    out = fit(disc, optimizer="lm", steps=steps, time_budget=time_budget, eval_every=1,
              seed=seed, verbose=False, lm=opts)
    return out.result.history, out


def fmt(x, spec=".2e"):
    return "n/a" if x is None else format(x, spec)


def case_poisson(name, path, n, target, args, kind="poisson"):
    cloud, disc = _disc(path, n, args.order, kind)
    out = {"case": name, "N": n, "order": args.order, "target": target}
    out["direct_solve_rel_l2_nodes"] = solve_discrete(disc).rel_l2_nodes
    t = time.perf_counter()
    if args.lm_steps <= 0:  # L-BFGS only
        return _lbfgs_part(name, disc, target, args, out)
    hist, res = run_lm(disc, args.lm_steps, args.lm_time, step=args.lm_step)
    r = res.result
    wall = time.perf_counter() - t
    lm = res.trainer.optimizer
    out["lm"] = {"steps": r.steps, "final_rel_l2": r.final_rel_l2,
                 "best_rel_l2": r.best_rel_l2, "train_time_s": r.train_time_s,
                 "wall_s": wall, "time_to_target_s": first_time_below(hist, target, "time_s"),
                 "steps_to_target": first_time_below(hist, target, "step"),
                 "final_loss": r.final_loss, "stop": r.stop_reason,
                 "step_kind": lm.resolve_step()}
    print(f"[{name}] LM: {r.steps} steps, final rel L2 {fmt(r.final_rel_l2)}, "
          f"train {r.train_time_s:.1f}s, to {target:g}: "
          f"{fmt(out['lm']['time_to_target_s'], '.1f')}s", flush=True)
    _lbfgs_part(name, disc, target, args, out)
    if "direct_solve_rel_l2_nodes" in out:
        d = out["direct_solve_rel_l2_nodes"]
        out["lm_within_3x_direct"] = out["lm"]["best_rel_l2"] <= 3 * d
        print(f"[{name}] direct solve rel L2 (nodes) {d:.2e}; LM best/direct = "
              f"{out['lm']['best_rel_l2'] / d:.2f}", flush=True)
    if name in DEEPXDE_S:
        out["deepxde_reference_s"] = DEEPXDE_S[name]
        try:
            import deepxde  # noqa: F401
            out["deepxde"] = "importable, not run by this script"
        except ImportError:
            out["deepxde"] = "not installed: skipped (reference figure from issue 6)"
    return out


def _lbfgs_part(name, disc, target, args, out):
    if args.lbfgs_time > 0:
        hist_b, res = run_lbfgs(disc, args.lbfgs_time)
        out["lbfgs"] = {"steps": res.steps, "final_rel_l2": res.final_rel_l2,
                        "best_rel_l2": res.best_rel_l2, "train_time_s": res.train_time_s,
                        "time_to_target_s": first_time_below(hist_b, target, "time_s"),
                        "stop": res.stop_reason}
        print(f"[{name}] L-BFGS: {res.steps} steps, best rel L2 {fmt(res.best_rel_l2)}, train "
              f"{res.train_time_s:.1f}s, to {target:g}: "
              f"{fmt(out['lbfgs']['time_to_target_s'], '.1f')}s", flush=True)
    return out


def case_heat(args):
    cloud, disc = _disc(REF / "DiskPoissonNodes.mat", 828, args.order, "heat", test=False,
                        nt=24)
    out = {"case": "heat", "N": 828, "order": args.order, "nt": 24}
    hist, res_lm = run_lm(disc, args.lm_steps, args.lm_time, step="cg",
                          cg_maxiter=args.cg_maxiter)
    r = res_lm.result
    out["lm"] = {"steps": r.steps, "final_rel_l2": r.final_rel_l2,
                 "train_time_s": r.train_time_s, "final_loss": r.final_loss,
                 "stop": r.stop_reason}
    print(f"[heat] LM-CG: {r.steps} steps, rel L2 {fmt(r.final_rel_l2)}, train "
          f"{r.train_time_s:.1f}s", flush=True)
    if args.lbfgs_time > 0:
        budget = max(args.lbfgs_time, r.train_time_s)
        _, res = run_lbfgs(disc, budget)
        out["lbfgs"] = {"steps": res.steps, "final_rel_l2": res.final_rel_l2,
                        "best_rel_l2": res.best_rel_l2, "train_time_s": res.train_time_s}
        print(f"[heat] L-BFGS: {res.steps} steps, best rel L2 {fmt(res.best_rel_l2)}, train "
              f"{res.train_time_s:.1f}s", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="linear,large,nonlinear,heat")
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--lm-steps", type=int, default=60)
    ap.add_argument("--lm-time", type=float, default=300.0, help="LM training-time budget (s)")
    ap.add_argument("--lm-step", default="auto", choices=["auto", "dense", "cg", "lagged"])
    ap.add_argument("--cg-maxiter", type=int, default=100)
    ap.add_argument("--lbfgs-time", type=float, default=120.0,
                    help="L-BFGS training-time budget per case (s); 0 skips L-BFGS")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for c in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if c == "linear":
            results.append(case_poisson("linear", REF / "DiskPoissonNodes.mat", 1663, 4.0e-5, args))
        elif c == "large":
            results.append(case_poisson("large", REF / "DiskPoissonNodesLarge.mat", 4977, 1.8e-5,
                                        args))
        elif c == "nonlinear":
            results.append(case_poisson("nonlinear", REF / "DiskPoissonNodes.mat", 1663, 4.0e-5,
                                        args, kind="nonlinear-poisson"))
        elif c == "heat":
            results.append(case_heat(args))
        else:
            raise SystemExit(f"unknown case {c!r}: use linear, large, nonlinear, heat")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()

"""Gauss-Newton at scale (issue 13): DeepXDE, our L-BFGS, our LM/GN and the direct solve in one run.

For each case (the authors' disk clouds, p = 4, the paper's 4 x 50 tanh network, seed 0, test
error = relative L2 on the authors' 21748 test points):

* ``direct``  the discrete solution (``dt.solve_discrete``: Newton + sparse LU): the
              discretisation error floor at the nodes, and its time;
* ``lbfgs``   our L-BFGS (strong-Wolfe line search, tolerances 0: it runs to the budget);
* ``gn``      LM / damped Gauss-Newton from the random initialisation, ``step="auto"`` (matrix-free
              CG while CG converges within ``cg_maxiter``, then CG preconditioned by a lagged
              Cholesky factor);
* ``hybrid``  ``schedule="lbfgs:K,gn:M"``: the same L-BFGS iterates until ``--switch`` of the
              budget (K read off the ``lbfgs`` run's history), then GN ``auto``;
* ``deepxde`` DeepXDE (fp32, its strong-Wolfe L-BFGS) through ``benchmarks/peers/deepxde_runner.py``
              as a SUBPROCESS (importing DeepXDE changes process-global torch settings), linear
              Poisson only (``--deepxde``).

Methods run back to back in one process (DeepXDE in a child), one thread each; the load average
is recorded before and after every method (2 shared cores here: wall time is what the trainer
measures, so a loaded machine inflates every method's times alike, roughly). Reported per method:
best error and when, the time to each target (DeepXDE's best in this run, the issue's 1.8e-5,
3x the direct solve's error at the nodes), and the ratios against DeepXDE and L-BFGS.

``--reduced`` (default): N = 4977, linear and nonlinear Poisson, 60 s per method. ``--full``:
N = 4977 and 19638, 300 s per method, heat (N = 828, Nt = 24) against L-BFGS as well.

``--kinds`` (issue 17): the LM step kinds side by side, linear Poisson, ``--kinds-cases``
``N:ENTRY:BUDGET`` (ENTRY ``lm`` = ``optimizer="lm"`` from the random start, or a schedule such
as ``lbfgs:3,lm``). Methods: ``old-default`` (the package at ``--old-commit``, unpacked with
``git archive``, default LM flags), ``auto`` (this tree, default flags), ``dense``, ``cg``,
``lagged`` (this tree, the kind by hand). Each method runs in its own process, one at a time,
one thread; reported: time to fixed errors (DeepXDE's best in 90-s and 300-s runs from
``docs/RESULTS.md``, 2.4e-5, 3x the floor), best error and when, and the LM counters. Budgets
and times are the process's CPU seconds (``--clock cpu``, the default: on a shared machine wall
time measures the share each process got) or wall seconds (``--clock wall``).

Usage::

    python benchmarks/bench_gauss_newton.py --reduced --deepxde \
        --json benchmarks/results/gauss_newton/reduced.json
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if os.environ.get("DTPINN_BENCH_TREE"):  # --kinds child: the package of another commit
    sys.path.insert(0, os.environ["DTPINN_BENCH_TREE"])

import dtpinn_dist as dt  # noqa: E402

from benchmarks.authors import authors_cloud, load  # noqa: E402
from benchmarks.authors import run_deepxde as _run_deepxde  # noqa: E402

ISSUE_TARGET = 1.8e-5
#: DeepXDE at N = 4977 as measured by deepxde_runner earlier on this machine (cited when the
#: run does not include DeepXDE or its budget is too short to reach its best).
DEEPXDE_EARLIER = {"best_rel_l2": "3.5e-5 to 4.0e-5", "at_cpu_s": "270-300"}


def make_disc(kind, n, order=4, nt=None):
    cloud = authors_cloud(n, test=kind != "heat")
    return dt.discretize(dt.paper_problem(kind, nt=nt), cloud, order)


def summarize(name, hist, res, extra=None):
    """Best error, times to targets are filled in later (they need all methods' results)."""
    best = min((h for h in hist if h.get("rel_l2") is not None), key=lambda h: h["rel_l2"],
               default=None)
    out = {"method": name, "steps": res.steps, "train_time_s": res.train_time_s,
           "eval_time_s": res.eval_time_s, "stop": res.stop_reason,
           "best_rel_l2": None if best is None else best["rel_l2"],
           "best_at_s": None if best is None else best["time_s"],
           "final_rel_l2": res.final_rel_l2,
           "curve": [[h["time_s"], h.get("rel_l2")] for h in hist]}
    if extra:
        out.update(extra)
    return out


def run_fit(disc, budget, **settings):
    t_cpu, t_wall, l0 = time.process_time(), time.monotonic(), load()
    out = dt.fit(disc, steps=10 ** 6, time_budget=budget, seed=0, verbose=False, **settings)
    res = out.result
    lm = getattr(out.trainer, "optimizer", None)
    info = {"load_before": l0, "load_after": load(),
            "process_cpu_s": time.process_time() - t_cpu,
            "wall_s": time.monotonic() - t_wall}
    return res.history, res, lm, info


def lm_summary(lm):
    if lm is None or not hasattr(lm, "history"):
        return {}
    kinds = [h["kind"] for h in lm.history]
    return {"gn_steps": lm.steps, "gn_kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
            "gn_cg_iters": lm.cg_iters, "gn_rebuilds": lm.rebuilds,
            "gn_rejected": lm.n_rejected, "gn_final_lam": lm.lam,
            "gn_time_s": lm.elapsed}


def run_deepxde(n, budget, kind="poisson"):
    dx = _run_deepxde(kind, n, budget)
    if "error" in dx or "skipped" in dx:
        return {"method": "deepxde", "error": dx.get("error") or dx.get("skipped")}
    return {"method": "deepxde", "raw": dx}


def deepxde_curve(dx):
    """(time, error) pairs from the runner's JSON (its keys, tolerant of naming)."""
    raw = dx.get("raw", {})
    hist = raw.get("history") or raw.get("curve") or []
    out = []
    for h in hist:
        if isinstance(h, dict):
            t = h.get("train_time_s", h.get("time_s", h.get("time")))
            e = h.get("rel_l2", h.get("test_rel_l2", h.get("error")))
        else:
            t, e = h[0], h[1]
        if t is not None and e is not None:
            out.append([float(t), float(e)])
    return out


def case(kind, n, budget, args, with_deepxde):
    print(f"== {kind}, N = {n}: budget {budget:g} s per method, load {load()}", flush=True)
    disc = make_disc(kind, n)
    rows = {}
    sol = dt.solve_discrete(disc)
    rows["direct"] = {"method": "direct", "rel_l2_nodes": sol.rel_l2_nodes,
                      "time_s": sol.time_s, "newton_iterations": sol.iterations}
    floor = sol.rel_l2_nodes
    print(f"  direct: {floor:.3e} at the nodes in {sol.time_s:.2f} s", flush=True)

    hist, res, _, info = run_fit(disc, budget, optimizer="lbfgs", eval_every=args.eval_every)
    rows["lbfgs"] = summarize("lbfgs", hist, res, info)
    hist_lbfgs = hist

    if "gn" in args.methods:
        hist, res, lm, info = run_fit(disc, budget, optimizer="gn", eval_every=1,
                                      lm={"step": "auto"})
        rows["gn"] = summarize("gn", hist, res, {**info, **lm_summary(lm)})

    # hybrid: the L-BFGS run's iterates until switch * budget, then GN auto
    if "hybrid" not in args.methods:
        t_switch = None
    else:
        t_switch = args.switch * budget
    if t_switch is not None:
        k = max([h["step"] for h in hist_lbfgs if h["time_s"] <= t_switch] + [1])
        hist, res, lm, info = run_fit(disc, budget, schedule=f"lbfgs:{k},gn:{10 ** 6}",
                                      eval_every=1, lm={"step": "auto"})
        rows["hybrid"] = summarize("hybrid", hist, res,
                                   {**info, **lm_summary(lm), "lbfgs_steps": k})

    if with_deepxde:
        print("  deepxde (subprocess) ...", flush=True)
        rows["deepxde"] = run_deepxde(n, args.deepxde_time or budget, kind)
        curve = deepxde_curve(rows["deepxde"])
        rows["deepxde"]["curve"] = curve
        if curve:
            b = min(curve, key=lambda c: c[1])
            rows["deepxde"].update(best_rel_l2=b[1], best_at_s=b[0])

    # targets and ratios
    targets = {"3x_direct": 3 * floor, "issue_1.8e-5": ISSUE_TARGET}
    if rows.get("deepxde", {}).get("best_rel_l2"):
        targets["deepxde_best"] = rows["deepxde"]["best_rel_l2"]
    for name, r in rows.items():
        if name == "direct" or "curve" not in r:
            continue
        r["time_to"] = {t: next((c[0] for c in r["curve"] if c[1] is not None and c[1] <= v),
                                None) for t, v in targets.items()}
    ratios = {}
    for base in ("deepxde", "lbfgs"):
        for name in ("lbfgs", "gn", "hybrid"):
            if name == base or base not in rows or name not in rows:
                continue
            for t in targets:
                a, b = rows[base].get("time_to", {}).get(t), rows[name].get("time_to", {}).get(t)
                if a and b:
                    ratios[f"{base}/{name} at {t}"] = a / b
    for name, r in rows.items():
        if name == "direct":
            continue
        tt = r.get("time_to", {})
        be, bt = r.get("best_rel_l2"), r.get("best_at_s")
        print(f"  {name:8s} best {'-' if be is None else f'{be:.3e}'} at "
              f"{'-' if bt is None else f'{bt:.1f}'} s; to targets: "
              + ", ".join(f"{t} {'-' if v is None else f'{v:.1f} s'}" for t, v in tt.items())
              + (f"; GN kinds {r['gn_kinds']}, CG its {r['gn_cg_iters']}, rebuilds "
                 f"{r['gn_rebuilds']}" if "gn_kinds" in r else ""), flush=True)
    for k_, v in ratios.items():
        print(f"  speed-up {k_}: {v:.2f}x", flush=True)
    return {"kind": kind, "N": n, "budget_s": budget, "targets": targets, "methods": rows,
            "ratios": ratios}


#: DeepXDE's best errors on the 1663-node disk and when (docs/RESULTS.md section 2, same
#: machine): 90-s runs and 300-s runs. Errors the kinds are timed to, besides 3x the floor.
DEEPXDE_1663 = {"1.04e-4": (1.04e-4, 85.2), "4.29e-5": (4.29e-5, 120.0)}
KIND_METHODS = ("old-default", "auto", "dense", "cg", "lagged")


def kinds_one(spec):
    """One run of ``--kinds`` (in a child process): summary as a dict. With ``clock="cpu"``
    the trainer's and LM's clock (``time.perf_counter``) is this process's CPU time, so the
    time budget and every time reported are CPU seconds of the method: on a machine shared by
    more processes than cores, wall time measures the share a process got, not the method."""
    if spec.get("clock") == "cpu":
        time.perf_counter = time.process_time
    torch.set_num_threads(1)
    disc = make_disc("poisson", spec["n"])
    lm_opts = {} if spec["step"] == "default" else {"step": spec["step"]}
    entry = spec["entry"]
    kw = {"optimizer": "lm"} if entry == "lm" else {"schedule": entry + ":" + str(10 ** 6)}
    hist, res, lm, info = run_fit(disc, spec["budget"], eval_every=1, lm=lm_opts, **kw)
    out = summarize(spec["method"], hist, res, {**info, **lm_summary(lm)})
    if lm is not None and hasattr(lm, "history"):
        out["lm_records"] = [{k: h.get(k) for k in ("kind", "cg_iters", "rejects", "rebuilt",
                                                     "switched", "lam_step", "time")}
                             for h in lm.history]
        out["lm_plan"] = list(lm.plan()) if hasattr(lm, "plan") else None
        out["lm_costs"] = getattr(lm, "costs", None)
    return out


def kinds_case(n, entry, budget, args, old_tree):
    import subprocess

    floor = dt.solve_discrete(make_disc("poisson", n)).rel_l2_nodes
    targets = {k: v[0] for k, v in DEEPXDE_1663.items()} if n == 1663 else {}
    targets.update({"2.4e-5": 2.4e-5, "3x_floor": 3 * floor})
    print(f"== kinds: poisson N = {n}, entry {entry}, {budget:g} s per method, floor "
          f"{floor:.3e}, load {load()}", flush=True)
    rows = {}
    for method in args.kind_methods:
        spec = {"n": n, "entry": entry, "budget": budget, "method": method, "clock": args.clock,
                "step": "default" if method in ("old-default", "auto") else method}
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        env.pop("DTPINN_BENCH_TREE", None)
        if method == "old-default":
            env["DTPINN_BENCH_TREE"] = old_tree
        proc = subprocess.run([sys.executable, __file__, "--kinds-one", json.dumps(spec)],
                              env=env, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            rows[method] = {"method": method, "error": proc.stderr[-2000:]}
            print(f"  {method}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["time_to"] = {t: next((c[0] for c in r["curve"] if c[1] is not None and c[1] <= v),
                                None) for t, v in targets.items()}
        rows[method] = r
        kinds = r.get("gn_kinds")
        print(f"  {method:11s} best {r['best_rel_l2']:.2e} at {r['best_at_s']:6.1f} s; "
              + ", ".join(f"t({t}) {'-' if v is None else f'{v:.1f}'}"
                          for t, v in r["time_to"].items())
              + f"; kinds {kinds}, CG its {r.get('gn_cg_iters')}, rebuilds "
              f"{r.get('gn_rebuilds')}, rejected {r.get('gn_rejected')}; load "
              f"{r['load_before'][0]:.1f}->{r['load_after'][0]:.1f}", flush=True)
    speedups = {}
    if n == 1663:
        for t, (_, t_dx) in DEEPXDE_1663.items():
            for method, r in rows.items():
                v = r.get("time_to", {}).get(t)
                if v:
                    speedups[f"deepxde/{method} at {t}"] = t_dx / v
    for k_, v in speedups.items():
        print(f"  speed-up {k_}: {v:.1f}x", flush=True)
    return {"kind": "poisson", "N": n, "entry": entry, "budget_s": budget, "floor": floor,
            "targets": targets, "methods": rows, "deepxde_speedups": speedups}


def kinds_cases(text):
    """``"1663:lm:60,1663:lbfgs:3,lm:60"`` -> [(1663, "lm", 60.0), (1663, "lbfgs:3,lm", 60.0)]
    (an entry may itself hold ':' and ','; a case starts at each ``N:`` with N an integer)."""
    import re

    out = []
    for m in re.finditer(r"(\d+):(.+?):(\d+(?:\.\d*)?)(?=,\d+:|$)", text):
        out.append((int(m.group(1)), m.group(2), float(m.group(3))))
    return out


def old_package(commit: str) -> str:
    """The package of ``commit`` unpacked into a temporary folder (``git archive``)."""
    import subprocess
    import tempfile

    tmp = tempfile.mkdtemp(prefix="dtpinn_old_")
    arch = subprocess.run(["git", "archive", commit, "dtpinn_dist"], cwd=REPO, check=True,
                          capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=arch, check=True)
    return tmp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--reduced", action="store_true", help="N = 4977, 60 s per method")
    mode.add_argument("--full", action="store_true", help="N = 4977 and 19638, heat, 300 s")
    ap.add_argument("--budget", type=float, default=None, help="seconds per method")
    ap.add_argument("--switch", type=float, default=0.4,
                    help="hybrid: fraction of the budget spent in L-BFGS before GN")
    ap.add_argument("--eval-every", type=int, default=5, help="L-BFGS evaluation interval")
    ap.add_argument("--deepxde", action="store_true", help="run DeepXDE (subprocess)")
    ap.add_argument("--deepxde-time", type=float, default=None)
    ap.add_argument("--methods", default="gn,hybrid",
                    help="GN runs besides L-BFGS and the direct solve: gn, hybrid")
    ap.add_argument("--cases", default=None,
                    help="KIND:N list, e.g. 'poisson:4977' (default: by mode)")
    ap.add_argument("--json", default=None)
    mode.add_argument("--kinds", action="store_true",
                      help="LM step kinds side by side (old default, auto, dense, cg, lagged)")
    ap.add_argument("--kinds-cases", default="1663:lm:60,1663:lbfgs:3,lm:60,4977:lm:120",
                    help="N:ENTRY:BUDGET list; ENTRY 'lm' or a schedule ending in 'lm'")
    ap.add_argument("--kind-methods", default=",".join(KIND_METHODS))
    ap.add_argument("--old-commit", default="a746240",
                    help="commit whose package is the 'old-default' method")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="--kinds: budgets and times in process CPU seconds (default) or wall")
    ap.add_argument("--kinds-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.kinds_one:
        print(json.dumps(kinds_one(json.loads(args.kinds_one)), default=float))
        return
    if args.kinds:
        args.kind_methods = [m.strip() for m in args.kind_methods.split(",") if m.strip()]
        old_tree = old_package(args.old_commit) if "old-default" in args.kind_methods else ""
        out = {"host": platform.node(), "threads": 1, "mode": "kinds", "clock": args.clock,
               "old_commit": args.old_commit, "load_start": load(), "cases": []}
        for c in kinds_cases(args.kinds_cases):
            out["cases"].append(kinds_case(*c, args, old_tree))
            if args.json:  # after every case: a partial run still leaves its figures
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        out["load_end"] = load()
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=float))
            print(f"wrote {args.json}")
        return
    torch.set_num_threads(1)
    full = args.full
    budget = args.budget or (300.0 if full else 60.0)
    cases = [("poisson", 4977), ("nonlinear-poisson", 4977)]
    if full:
        cases += [("poisson", 19638)]
    if args.cases:
        cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    out = {"host": platform.node(), "threads": 1, "mode": "full" if full else "reduced",
           "budget_s": budget, "load_start": load(), "deepxde_earlier": DEEPXDE_EARLIER,
           "cases": []}
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for kind, n in cases:
        out["cases"].append(case(kind, n, budget, args,
                                 args.deepxde and kind == "poisson"))
    if full:  # heat: GN (matrix-free, autograd products) against L-BFGS
        disc = make_disc("heat", 828, nt=24)
        rows = {}
        hist, res, _, info = run_fit(disc, budget, optimizer="lbfgs", eval_every=args.eval_every)
        rows["lbfgs"] = summarize("lbfgs", hist, res, info)
        hist, res, lm, info = run_fit(disc, budget, optimizer="gn", eval_every=1,
                                      lm={"step": "auto"})
        rows["gn"] = summarize("gn", hist, res, {**info, **lm_summary(lm)})
        out["cases"].append({"kind": "heat", "N": 828, "nt": 24, "methods": rows})
        for k, r in rows.items():
            print(f"  heat {k}: best {r['best_rel_l2']:.3e} at {r['best_at_s']:.1f} s")
    out["load_end"] = load()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

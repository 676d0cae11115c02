"""The peers side by side in one run: DeepXDE, our DT-PINN (L-BFGS; L-BFGS then LM) and the direct
solve of the same discrete system, serial and under mpirun (issue 12 section 2).

Not a test. For each problem (the paper's linear and nonlinear Poisson on the unit disk, p = 4, on
the authors' node set; test error on their 21748 test points) it runs, one after another on one
thread each:

``direct``      ``dt.solve_discrete``: Newton on the discrete system with scipy's sparse LU (one
                process); its error at the nodes is the floor no DT-PINN on these operators can
                beat, its time the time to beat;
``direct-mpi``  the same with PETSc (KSP gmres + ASM/ILU) under ``mpirun -n NP`` (``--np``);
``deepxde``     DeepXDE with its defaults (fp32, Glorot, its strong-Wolfe L-BFGS), as a subprocess
                (``benchmarks/peers/deepxde_runner.py``: importing DeepXDE changes process-global
                torch settings); skipped with a note when DeepXDE is not installed
                (``pip install -e .[bench]``);
``lbfgs``       our DT-PINN, fp64, L-BFGS with the strong-Wolfe line search;
``lbfgs+lm``    our DT-PINN, 20 L-BFGS steps then Levenberg-Marquardt.

It prints, per method, the time to reach 1e-3, 1e-4, DeepXDE's best error and 3x the floor, and
the ratio DeepXDE time / our time at each, plus best errors and final losses. Every training run
has the same wall-clock budget (``--time``); times are training seconds (metric evaluation
excluded on both sides). The machine's load average is recorded: on a shared machine compare the
ratios of one run, not absolute seconds across runs.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_peers.py --time 90 --json peers.json
    python benchmarks/bench_peers.py --problems poisson --n 4977 --time 300   # larger cloud
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import dtpinn_dist as dt  # noqa: E402
from benchmarks.authors import FILES, authors_cloud, first_time_below  # noqa: E402
from benchmarks.authors import run_deepxde as _run_deepxde  # noqa: E402


def run_direct_mpi(problem: str, n: int, np_: int) -> dict:
    """This script in ``--solve-only`` mode under mpirun: PETSc's Newton-KSP on NP ranks."""
    launcher = shutil.which("mpirun")
    if launcher is None:
        return {"skipped": "no mpirun"}
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1",
               OMPI_MCA_mpi_yield_when_idle="1")
    with tempfile.TemporaryDirectory() as tmp:
        js = Path(tmp) / "solve.json"
        cmd = [launcher, "--oversubscribe", "-n", str(np_), sys.executable, __file__,
               "--solve-only", "--problems", problem, "--n", str(n), "--json", str(js)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            return {"failed": p.stderr[-500:]}
        return json.loads(js.read_text())


def run_deepxde(problem: str, n: int, budget: float, seed: int) -> dict:
    r = _run_deepxde(problem, n, budget, seed)
    if "history" not in r:
        return r
    hist = [{"time_s": h["train_time_s"], "cpu_s": h.get("train_cpu_s"), "rel_l2": h["rel_l2"],
             "loss": h.get("loss")} for h in r["history"]]
    return {"best_rel_l2": r["best_rel_l2"], "time_to_best_s": r["time_to_best_s"],
            "train_time_s": r["train_time_s"], "final_loss": hist[-1].get("loss"),
            "history": hist}


def run_ours(disc, name: str, budget: float, seed: int) -> dict:
    settings = {"lbfgs": dict(optimizer="lbfgs", steps=10 ** 6, eval_every=5),
                "lbfgs+lm": dict(schedule="lbfgs:20,lm:100000", eval_every=1)}[name]
    res = dt.fit(disc, time_budget=budget, seed=seed, verbose=False, **settings).result
    hist = [{"time_s": h["time_s"], "rel_l2": h.get("rel_l2"), "loss": h.get("loss"),
             "step": h.get("step")} for h in res.history]
    return {"best_rel_l2": res.best_rel_l2, "time_to_best_s": res.time_to_best_s,
            "train_time_s": res.train_time_s, "final_loss": res.final_loss,
            "steps": res.steps, "stop": res.stop_reason, "history": hist}


def fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def report(problem: str, n: int, r: dict) -> list[str]:
    floor = r["direct"]["rel_l2_nodes"]
    dx_best = (r.get("deepxde") or {}).get("best_rel_l2")
    targets = [("1e-3", 1e-3), ("1e-4", 1e-4)]
    if dx_best is not None:
        targets.append((f"DeepXDE best {dx_best:.1e}", dx_best))
    targets.append((f"3x floor {3 * floor:.1e}", 3 * floor))
    lines = [f"\n{problem}, N = {n}, p = 4 (load {r['load'][0]:.1f}); floor (direct solve, nodes) "
             f"{floor:.2e} in {r['direct']['time_s']:.2f} s serial"
             + (f", {r['direct-mpi']['time_s']:.2f} s on {r['np']} ranks (PETSc)"
                if "time_s" in r.get("direct-mpi", {}) else ""),
             f"{'method':10s} {'best':>9s} {'t(best)':>8s} {'loss':>9s} "
             + " ".join(f"{lbl:>26s}" for lbl, _ in targets)]
    r["time_to"] = {}
    for m in ("deepxde", "lbfgs", "lbfgs+lm"):
        x = r.get(m) or {}
        if "history" not in x:
            lines.append(f"{m:10s} {x.get('skipped') or x.get('failed', '')[:80]}")
            continue
        cells = []
        r["time_to"][m] = {}
        for lbl, t in targets:
            tt = first_time_below(x["history"], t)
            r["time_to"][m][lbl] = tt
            dxt = r["time_to"].get("deepxde", {}).get(lbl)
            ratio = f" ({dxt / tt:.1f}x)" if (m != "deepxde" and tt and dxt) else ""
            cells.append(f"{'-' if tt is None else f'{tt:.1f} s{ratio}':>26s}")
        lines.append(f"{m:10s} {fmt(x['best_rel_l2']):>9s} {fmt(x['time_to_best_s'], '.1f'):>7s}s "
                     f"{fmt(x['final_loss']):>9s} " + " ".join(cells))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", default="poisson,nonlinear-poisson")
    ap.add_argument("--n", type=int, default=1663, choices=sorted(FILES))
    ap.add_argument("--time", type=float, default=90.0, help="training seconds per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--np", type=int, default=2, help="ranks of the PETSc direct solve")
    ap.add_argument("--json", default=None)
    ap.add_argument("--solve-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.solve_only:  # under mpirun: the distributed direct solve only
        from dtpinn_dist.comm import as_comm
        comm = as_comm(None)
        disc = dt.discretize(dt.paper_problem(a.problems), authors_cloud(a.n), 4, comm=comm)
        sol = dt.solve_discrete(disc).summary()
        if comm.rank == 0:
            Path(a.json).write_text(json.dumps(sol))
        return
    out = {"torch": torch.__version__, "dtpinn_dist": dt.__version__, "cpu_count": os.cpu_count(),
           "time_budget_s": a.time, "threads": 1, "results": {}}
    lines = []
    for problem in a.problems.split(","):
        r = {"load": os.getloadavg(), "np": a.np}
        disc = dt.discretize(dt.paper_problem(problem), authors_cloud(a.n), 4)
        r["direct"] = dt.solve_discrete(disc).summary()
        r["direct-mpi"] = run_direct_mpi(problem, a.n, a.np)
        r["deepxde"] = run_deepxde(problem, a.n, a.time, a.seed)
        for m in ("lbfgs", "lbfgs+lm"):
            r[m] = run_ours(disc, m, a.time, a.seed)
        r["load_after"] = os.getloadavg()
        block = report(problem, a.n, r)
        print("\n".join(block), flush=True)
        lines += block
        out["results"][problem] = r
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

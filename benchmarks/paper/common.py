"""Shared parts of the paper benchmarks (``benchmarks/paper/fig*.py``, issue 12 section 1).

Clouds (the authors' node sets when present, else generated), the two L-BFGS settings, one
training run with its record, statistics over seeds, timing, the machine description and the
JSON / PNG / table output. Everything goes through the public API (``dt.discretize``, ``dt.fit``,
``dt.solve_discrete``, ``dt.make_cloud``, ``load_cloud``).

Time to best error is TRAINING time (the trainer clocks optimizer steps only; metric evaluation
is timed separately as ``eval_time_s``), unlike the authors' scripts, whose cumulative epoch
clock also ran through their per-epoch evaluation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # import this checkout's dtpinn_dist, not an installed one
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import dtpinn_dist as dt  # noqa: E402
from dtpinn_dist.geometry import load_cloud  # noqa: E402
from dtpinn_dist.geometry.io import mat_sizes  # noqa: E402
from dtpinn_dist.problem import PAPER  # noqa: E402

MODES = ("smoke", "reduced", "full")
#: the authors' files (unit disk), searched in this order for a node set of size N
DISK_FILES = ("DiskPoissonNodes.mat", "DiskPoissonNodesLarge.mat")
#: the authors' test set: N = 21748 of DiskPoissonNodesLarge.mat (section 4, "Setup")
TEST_N = 21748

#: The two L-BFGS settings every training figure reports (section 4: "L-BFGS ... with manually
#: fine-tuned learning rates"; the authors' scripts: torch defaults, no line search).
SETTINGS = {
    "paper": ("the authors' setting: torch L-BFGS without line search at their fixed rates "
              "(PAPER[...]['lr']), torch's default tolerances (grad 1e-7, change 1e-9), history "
              "100, 20 iterations per epoch; after a blow-up the run restarts at half the rate "
              "(their scripts do this)"),
    "wolfe": ("this library's default: torch L-BFGS with a strong-Wolfe line search, lr 1, "
              "tolerances 0, history 100, 20 iterations per epoch; after a blow-up (in fp32 a "
              "NaN trial point of the line search ends the run) it restarts at half the rate, "
              "as the paper setting does"),
}
MAX_RESTARTS = 6  # a run that blows up restarts at half the rate at most this many times


# ---------------------------------------------------------------------------------- clouds
def reference_dir() -> Path:
    """``$DTPINN_REFERENCE_DIR`` (as the CLI and the tests), else ``shared/reference`` beside
    the repository."""
    return Path(os.environ.get("DTPINN_REFERENCE_DIR") or REPO.parent / "shared" / "reference")


def _authors_file(n: int):
    ref = reference_dir()
    for name in DISK_FILES:
        path = ref / name
        if path.is_file() and n in mat_sizes(path):
            return path
    return None


def test_points(n_fallback: int):
    """(points, source): the authors' 21748-node test set (interior + boundary), else an
    independent generated disk set of about ``n_fallback`` points."""
    path = _authors_file(TEST_N)
    if path is not None:
        t = load_cloud(path, n=TEST_N, ghost=False)
        return np.vstack([t.interior, t.boundary]), f"authors' {path.name} N={TEST_N}"
    c = dt.make_cloud("disk", n=n_fallback, seed=12345, ghost=False)
    return np.vstack([c.interior, c.boundary]), f"generated disk N~{n_fallback} (seed 12345)"


def disk_cloud(n: int, *, test: bool = True, n_test_fallback: int = TEST_N):
    """The unit-disk cloud of N = ``n`` nodes and a description of where it came from.

    The authors' node set of that size when their files are found (``reference_dir()``), else
    a generated quasi-uniform disk cloud of about ``n`` nodes (seed 0). With ``test``, the
    test points are the authors' 21748-node set (or a generated one).
    """
    path = _authors_file(n)
    if path is not None:
        cloud, src = load_cloud(path, n=n), f"authors' {path.name} N={n}"
    else:
        cloud = dt.make_cloud("disk", n=n, seed=0)
        src = f"generated disk N={cloud.n_interior + cloud.n_boundary} (asked {n}, seed 0)"
    if test:
        pts, tsrc = test_points(n_test_fallback)
        cloud.test = pts
        src += f"; test: {tsrc}"
    return cloud, src


def star_cloud(n: int, *, seed: int = 0, n_test: int = 20000):
    """A generated cloud of about ``n`` nodes on ``dt.Star()`` (r < 1 + 0.2 cos 5 theta) with an
    independent test set of about ``n_test`` points (appendix A.1.3 used a star from the
    authors' node generator; its parameters are not given in the paper)."""
    dom = dt.Star()
    cloud = dt.make_cloud(dom, n=n, seed=seed, n_test=n_test)
    src = (f"generated {dom!r} N={cloud.n_interior + cloud.n_boundary} (asked {n}, seed {seed});"
           f" test: {len(cloud.test)} generated points")
    return cloud, src


# ---------------------------------------------------------------------------------- training
def paper_lr(problem: str, method: str) -> float:
    """The authors' L-BFGS rate for ``problem`` ('poisson', 'nonlinear-poisson', 'heat') and
    ``method`` ('dt', 'vanilla')."""
    return float(PAPER[problem]["lr"][method])


def _compact_history(history) -> list:
    return [[h["step"], h["time_s"], h["rel_l2"], h["loss"]] for h in history]


def train(disc, setting: str, *, problem: str, steps: int, seed: int, eval_every: int,
          log=None) -> dict:
    """One training run of ``disc`` in ``setting`` ('paper' or 'wolfe'); the record of it.

    Returns
    -------
    dict
        ``best_rel_l2``, ``final_rel_l2``, ``epochs_to_best`` (optimizer steps to the best
        evaluated error), ``time_to_best_s`` (training time to it), ``train_time_s``,
        ``eval_time_s``, ``steps``, ``evals`` (loss+gradient evaluations), ``stop_reason``,
        ``lr`` (the rate that ran), ``restarts`` and ``restart_train_s`` (training time of the
        attempts that blew up; each restart halves the rate), ``history`` ([step, train time, rel_l2, loss]).
    """
    # the paper's network sees raw coordinates (and time)
    common = dict(steps=steps, seed=seed, eval_every=eval_every, verbose=False, inputs="raw")
    if setting == "wolfe":
        attempts = [dict(line_search=True, lr=1.0 / 2 ** k) for k in range(MAX_RESTARTS + 1)]
    elif setting == "paper":
        lr0 = paper_lr(problem, disc.method)
        attempts = [dict(line_search=False, lr=lr0 / 2 ** k, tolerance_grad=1e-7,
                         tolerance_change=1e-9) for k in range(MAX_RESTARTS + 1)]
    else:
        raise ValueError(f"unknown setting {setting!r}: use one of {', '.join(SETTINGS)}")
    wasted, res = 0.0, None
    for k, opts in enumerate(attempts):
        out = dt.fit(disc, **common, **opts, log=log or (lambda msg: None))
        res = out.result
        blew_up = res.stop_reason.startswith(("diverged", "non-finite"))
        if not blew_up or k == len(attempts) - 1:
            break
        wasted += res.train_time_s
    return {"setting": setting, "seed": seed, "lr": out.trainer.lr, "restarts": k,
            "restart_train_s": wasted, "best_rel_l2": res.best_rel_l2,
            "final_rel_l2": res.final_rel_l2, "epochs_to_best": res.best_step,
            "time_to_best_s": res.time_to_best_s, "train_time_s": res.train_time_s,
            "eval_time_s": res.eval_time_s, "steps": res.steps, "evals": res.evals,
            "stop_reason": res.stop_reason, "history": _compact_history(res.history)}


def time_to_reach(history, target) -> float | None:
    """Training time of the first evaluation with rel_l2 <= ``target`` (None: never)."""
    if target is None:
        return None
    for step, t, err, _ in history:
        if err is not None and err <= target:
            return t
    return None


def direct_floor(disc_cpu) -> dict:
    """The direct solve of the same discrete system (``dt.solve_discrete``): the error a
    DT-PINN on these operators can at best reach, at the nodes, and its time."""
    sol = dt.solve_discrete(disc_cpu)
    return {"rel_l2_nodes": sol.rel_l2_nodes, "time_s": sol.time_s,
            "newton_iterations": sol.iterations}


# ---------------------------------------------------------------------------------- statistics
def stats(values) -> dict | None:
    """median, mean, std, min, max and count of the finite numbers among ``values``."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None
    return {"n": len(v), "median": statistics.median(v), "mean": statistics.fmean(v),
            "std": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v), "max": max(v)}


def med(s) -> float | None:
    return None if s is None else s["median"]


def ratio(a, b) -> float | None:
    """a / b; None when either is missing or not positive (a time of 0 s is a run that never
    improved on its initial error: no speed-up is defined against or for it)."""
    return None if a is None or b is None or a <= 0 or b <= 0 else a / b


# ---------------------------------------------------------------------------------- timing
def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, *, min_total: float = 0.2, max_reps: int = 50, rounds: int = 3) -> float:
    """Median over ``rounds`` of the mean time of ``fn()`` (seconds), after one warm-up call;
    each round repeats until ``min_total`` seconds or ``max_reps`` calls."""
    fn()
    sync(device)
    out = []
    for _ in range(rounds):
        reps, t0 = 0, time.perf_counter()
        while True:
            fn()
            reps += 1
            sync(device)
            el = time.perf_counter() - t0
            if el >= min_total or reps >= max_reps:
                break
        out.append(el / reps)
    return statistics.median(out)


# ---------------------------------------------------------------------------------- machine
def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device) -> dict:
    """Where and with what this ran (load average at the start; ``finish`` adds the end)."""
    import matplotlib
    import scipy

    info = {"host": platform.node(), "platform": platform.platform(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "load_avg_start": list(os.getloadavg()),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "numpy": np.__version__, "scipy": scipy.__version__,
                         "matplotlib": matplotlib.__version__, "dtpinn_dist": dt.__version__},
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ---------------------------------------------------------------------------------- CLI
def parser(doc: str) -> argparse.ArgumentParser:
    """The options every figure script shares; a script adds its own."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, default="reduced",
                    help="smoke: seconds (for the test); reduced: minutes on 2 CPU cores; "
                         "full: the paper's sizes (a GPU machine)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default runs/paper/<figure>-<mode>)")
    ap.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides mode)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def ints(text: str | None):
    """'1,2,3' -> (1, 2, 3); None stays None."""
    return None if text is None else tuple(int(v) for v in text.split(",") if v.strip())


def setup(args, figure: str, mode_settings: dict) -> dict:
    """Apply threads/device, make the output folder; the resolved settings of this run."""
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here "
                         f"(torch {torch.__version__})")
    torch.set_num_threads(args.threads)
    args.out = args.out or REPO / "runs" / "paper" / f"{figure}-{args.mode}"
    args.out.mkdir(parents=True, exist_ok=True)
    s = dict(mode_settings)
    if args.seeds is not None:
        s["seeds"] = args.seeds
    return s


class Log:
    """Progress lines to stderr (stdout carries the table), with the elapsed wall time."""

    def __init__(self, quiet: bool):
        self.quiet, self.t0 = quiet, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None  # JSON has no inf/nan
    return o


def finish(args, figure: str, payload: dict, table: str, comparison: str, t_start: float,
           mach: dict) -> Path:
    """Write ``<figure>.json`` (settings, machine with load at start and end, versions, all
    numbers, the comparison paragraph) and print the table and the paragraph."""
    mach["load_avg_end"] = list(os.getloadavg())
    doc = {"figure": figure, "mode": args.mode, "machine": mach,
           "wall_time_s": time.perf_counter() - t_start, **payload,
           "table": table, "comparison": comparison}
    path = args.out / f"{figure}.json"
    path.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    load = ", ".join(f"{v:.2f}" for v in mach["load_avg_start"])
    print(f"{figure} ({args.mode}): {mach['cpu']} x{mach['cpu_count']}, device {mach['device']}, "
          f"{mach['torch_threads']} torch thread(s), load average at start {load}, "
          f"torch {mach['versions']['torch']}, wall {doc['wall_time_s']:.0f}s")
    print(table)
    print("\nWhat we see vs the paper:\n" + comparison)
    print(f"\nwritten: {path} and {', '.join(sorted(p.name for p in args.out.glob('*.png')))}")
    return path


def fmt(v, spec=".2e", none="-") -> str:
    return none if v is None else format(v, spec)


def render(header: list, rows: list) -> str:
    """A plain fixed-width table (also valid Markdown)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.rjust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
                     + [line(r) for r in cells[1:]])


# ---------------------------------------------------------------------------------- plots
def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def errorbar(ax, x, stat_list, label, **kw):
    """Median with min..max whiskers of per-seed statistics (None entries are skipped)."""
    pts = [(xi, s) for xi, s in zip(x, stat_list) if s is not None]
    if not pts:
        return
    xs = [p[0] for p in pts]
    m = np.array([p[1]["median"] for p in pts])
    lo = m - np.array([p[1]["min"] for p in pts])
    hi = np.array([p[1]["max"] for p in pts]) - m
    ax.errorbar(xs, m, yerr=[lo, hi], marker="o", capsize=3, label=label, **kw)


def save(fig, args, name: str) -> None:
    fig.tight_layout()
    fig.savefig(args.out / name, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)


# ---------------------------------------------------------------------------------- the grid
#: variant name -> (method, dtype); DT variants run at every order p, vanilla ones once
VARIANTS = {"dt-fp64": ("dt", "fp64"), "dt-fp32": ("dt", "fp32"),
            "vanilla-fp32": ("vanilla", "fp32"), "vanilla-fp64": ("vanilla", "fp64")}
#: the order whose operators a vanilla discretisation carries (used only for the metric
#: ``discrete_pde_res`` in its history; vanilla training is all autograd)
VANILLA_ORDER = 4


def closure_times(discs: dict, device, *, rounds: int = 5, reps: int = 3) -> dict:
    """Seconds of one loss + gradient evaluation (what an L-BFGS iteration costs) of each
    discretisation, with the paper's 4 x 50 network: the median over ``rounds`` rounds that
    each time every discretisation in turn (``reps`` calls), so that load changes on a shared
    machine hit all alike. Keys ``"variant|p"``."""
    fns = {}
    for (v, p), disc in discs.items():
        model = dt.MLP(disc.input_dim, 50, 4, dtype=disc.dtype, seed=0, device=device)

        def fn(disc=disc, model=model):
            model.zero_grad(set_to_none=False)
            r = disc.residual(model)
            (r * r).sum().backward()
        fns[f"{v}|{p}"] = fn
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(device)
            times[k].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def run_grid(log, clouds: dict, problem, problem_name: str, *, variants, orders, settings,
             seeds: int, steps: int, eval_every: int, device: str = "cpu",
             backend: str | None = None, with_floor: bool = True):
    """Train every variant x order x setting x seed on every cloud; the run records and the
    direct-solve floors.

    The loop nests cloud > seed > setting > variant, so load changes on a shared machine hit
    all variants of a seed alike. Discretisations are built once per (cloud, variant, p).

    Returns
    -------
    runs : list of dict
        :func:`train` records with ``N`` (cloud label), ``variant``, ``p`` (None for vanilla),
        ``setup_time_s``.
    floors : dict
        ``"N|p"`` -> :func:`direct_floor` of the fp64 DT discretisation (steady problems).
    closures : dict
        ``"N"`` -> :func:`closure_times` of every discretisation of that cloud.
    """
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}: use {', '.join(VARIANTS)}")
    for s in settings:
        if s not in SETTINGS:
            raise SystemExit(f"unknown setting {s!r}: use {', '.join(SETTINGS)}")
    runs, floors, closures = [], {}, {}
    for label, cloud in clouds.items():
        discs = {}
        for v in variants:
            method, prec = VARIANTS[v]
            for p in (orders if method == "dt" else (None,)):
                t0 = time.perf_counter()
                # the paper's loss, eq. (4)/(12)/(16): its per-block weights
                discs[v, p] = dt.discretize(problem, cloud, p or VANILLA_ORDER, method=method,
                                            dtype=prec, device=device, backend=backend,
                                            weighting="count")
                discs[v, p].setup_s = time.perf_counter() - t0
        if with_floor and not problem.time_dependent:
            for p in orders:
                d = discs.get(("dt-fp64", p))
                if d is None or torch.device(device).type != "cpu" or backend not in (None,
                                                                                      "torch"):
                    d = dt.discretize(problem, cloud, p, method="dt", dtype="fp64")
                floors[f"{label}|{p}"] = direct_floor(d)
                log(f"N={label} p={p}: direct solve {floors[f'{label}|{p}']['rel_l2_nodes']:.2e}"
                    f" at the nodes in {floors[f'{label}|{p}']['time_s']:.3f}s")
        closures[label] = closure_times(discs, device)
        log(f"N={label}: one loss+gradient evaluation, interleaved medians: " + ", ".join(
            f"{k} {1e3 * t:.1f} ms" for k, t in closures[label].items()))
        for seed in range(seeds):
            for setting in settings:
                for (v, p), disc in discs.items():
                    rec = train(disc, setting, problem=problem_name, steps=steps, seed=seed,
                                eval_every=eval_every, log=lambda m: log("  trainer: " + m))
                    rec.update(N=label, variant=v, p=p, setup_time_s=disc.setup_s)
                    runs.append(rec)
                    log(f"N={label} seed={seed} {setting:5s} {v:12s} p={p or '-'}: best "
                        f"{fmt(rec['best_rel_l2'])} at epoch {rec['epochs_to_best']} "
                        f"({rec['time_to_best_s']:.2f}s of {rec['train_time_s']:.2f}s; "
                        f"lr {rec['lr']:g}, {rec['restarts']} restart(s); {rec['stop_reason']})")
    return runs, floors, closures


def aggregate(runs) -> dict:
    """``"N|setting|variant|p"`` -> statistics over seeds of the run records, plus the
    equal-error speed-up against vanilla fp32 of the same N and setting (see ``speedups``)."""
    groups = {}
    for r in runs:
        groups.setdefault((r["N"], r["setting"], r["variant"], r["p"]), []).append(r)
    out = {}
    for (n, s, v, p), rs in groups.items():
        out[f"{n}|{s}|{v}|{p}"] = {
            "N": n, "setting": s, "variant": v, "p": p, "seeds": len(rs),
            "best_rel_l2": stats(r["best_rel_l2"] for r in rs),
            "final_rel_l2": stats(r["final_rel_l2"] for r in rs),
            "epochs_to_best": stats(r["epochs_to_best"] for r in rs),
            "time_to_best_s": stats(r["time_to_best_s"] for r in rs),
            "train_time_s": stats(r["train_time_s"] for r in rs),
            "time_per_epoch_s": stats(r["train_time_s"] / r["steps"] for r in rs if r["steps"]),
            "evals_per_epoch": stats(r["evals"] / r["steps"] for r in rs if r["steps"]),
            "restarts": sum(r["restarts"] for r in rs),
            "lr": sorted({r["lr"] for r in rs}),
            "stop_reasons": sorted({r["stop_reason"] for r in rs})}
    for key, g in out.items():
        base = out.get(f"{g['N']}|{g['setting']}|vanilla-fp32|None")
        if base is None or g["variant"] == "vanilla-fp32":
            continue
        g.update(speedups(g, base, [r for r in runs if (r["N"], r["setting"], r["variant"],
                                                         r["p"]) == (g["N"], g["setting"],
                                                                     g["variant"], g["p"])]))
    return out


def speedups(g: dict, base: dict, runs) -> dict:
    """Two speed-ups over vanilla fp32 (same cloud and setting):

    * ``speedup_best``: the paper's (Fig. 3c): median time to ITS best error of vanilla fp32
      over that of this variant, whatever the two best errors are;
    * ``speedup_equal_error``: median time of vanilla fp32 to its best error over this
      variant's median time to reach that same error (None when no seed of it reached it;
      ``reached`` counts the seeds that did) -- the comparison at equal accuracy.
    """
    target = med(base["best_rel_l2"])
    reach = [time_to_reach(r["history"], target) for r in runs]
    got = [t for t in reach if t is not None]
    t_eq = statistics.median(got) if got else None
    return {"speedup_best": ratio(med(base["time_to_best_s"]), med(g["time_to_best_s"])),
            "speedup_equal_error": ratio(med(base["time_to_best_s"]), t_eq),
            "equal_error_target": target, "time_to_target_s": t_eq,
            "reached": f"{len(got)}/{len(reach)}"}


def grid_table(groups: dict, floors: dict | None = None) -> str:
    """The standard table of a training figure: one row per (setting, N, variant, p)."""
    head = ["setting", "N", "variant", "p", "best rel L2 (median [min, max])", "epochs to best",
            "time to best [s]", "s/epoch", "loss+grad [ms]", "speed-up (paper def.)",
            "speed-up (equal error)", "restarts", "direct solve (nodes)"]
    rows = []
    order = {"vanilla-fp32": 0, "vanilla-fp64": 1, "dt-fp64": 2, "dt-fp32": 3}
    for g in sorted(groups.values(), key=lambda g: (g["setting"] != "paper", _num(g["N"]),
                                                      order[g["variant"]], g["p"] or 0)):
        b = g["best_rel_l2"]
        fl = (floors or {}).get(f"{g['N']}|{g['p']}")
        rows.append([g["setting"], g["N"], g["variant"], g["p"] or "-",
                     "-" if b is None else f"{b['median']:.2e} [{b['min']:.1e}, {b['max']:.1e}]",
                     fmt(med(g["epochs_to_best"]), ".0f"), fmt(med(g["time_to_best_s"]), ".2f"),
                     fmt(med(g["time_per_epoch_s"]), ".3f"),
                     fmt(g.get("closure_s") and 1e3 * g["closure_s"], ".1f"),
                     fmt(g.get("speedup_best"), ".2f"),
                     fmt(g.get("speedup_equal_error"), ".2f") + (
                         f" ({g['reached']})" if "reached" in g else ""),
                     g["restarts"], fmt(fl and fl["rel_l2_nodes"])])
    return render(head, rows)


def _num(label):
    try:
        return float(label)
    except (TypeError, ValueError):
        return math.inf


def series(groups: dict, setting: str, variant: str, p, key: str, xs: list):
    """Statistics of ``key`` at each x (cloud label) for one curve."""
    return [groups.get(f"{x}|{setting}|{variant}|{p}", {}).get(key) for x in xs]


def runs_of(runs, **match):
    return [r for r in runs if all(r.get(k) == v for k, v in match.items())]


def plot_training(args, groups: dict, name: str, *, xs: list, xlabel: str, settings, curves,
                  panels, title: str):
    """One row per setting, one column per panel: ``panels`` is a list of (key, ylabel, log);
    ``curves`` a list of (variant, p, label). ``key`` 'speedup_best' / 'speedup_equal_error'
    are plotted as plain values, the others as median with min..max whiskers."""
    plt = pyplot()
    fig, axes = plt.subplots(len(settings), len(panels), squeeze=False,
                             figsize=(4.4 * len(panels), 3.4 * len(settings)))
    xnum = [_num(x) for x in xs]
    for i, s in enumerate(settings):
        for j, (key, ylabel, logy) in enumerate(panels):
            ax = axes[i][j]
            for k, (variant, p, label) in enumerate(curves):
                vals = series(groups, s, variant, p, key, xs)
                color = f"C{k % 10}"  # fixed per curve, whatever a panel leaves out
                if key.startswith("speedup"):
                    pts = [(x, v) for x, v in zip(xnum, vals) if v is not None]
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=label, color=color)
                else:
                    errorbar(ax, xnum, vals, label, color=color)
            if key.startswith("speedup"):
                ax.axhline(1.0, color="gray", lw=0.8, ls=":")
            if logy:
                ax.set_yscale("log")
            if max(xnum) > 3 * min(xnum):
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{s} setting", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save(fig, args, name)


def span(vals, spec=".2f") -> str:
    """'lo..hi (median m)' of the numbers among ``vals`` ('n/a' when none)."""
    v = sorted(x for x in vals if x is not None)
    if not v:
        return "n/a"
    return (f"{v[0]:{spec}}" if len(v) == 1 else
            f"{v[0]:{spec}}..{v[-1]:{spec}} (median {statistics.median(v):{spec}})")


def training_main(argv, *, doc: str, figure: str, problem, problem_name: str, modes: dict,
                  variants: tuple, clouds, plots, compare, paper: dict) -> dict:
    """The command line of a training figure (Fig. 3/4/8, 5, 6, 9/10).

    Parameters
    ----------
    problem : Problem or callable(settings) -> Problem
    clouds : callable(settings, log) -> (dict label -> PointCloud, dict label -> source)
    plots : callable(args, groups, settings, labels, clouds)
    compare : callable(groups, runs, settings, labels) -> str
        The 'what we see vs the paper' paragraph.
    paper : dict
        The paper's claims, quoted into the JSON.
    """
    ap = parser(doc)
    ap.add_argument("--sizes", help="comma-separated N (overrides the mode)")
    ap.add_argument("--orders", help="comma-separated p (overrides the mode)")
    ap.add_argument("--steps", type=int, help="L-BFGS epochs per run (overrides the mode)")
    ap.add_argument("--variants", default=",".join(variants), help="default: %(default)s")
    ap.add_argument("--settings", default="paper,wolfe", help="default: %(default)s")
    ap.add_argument("--backend", default=None, help="operators: torch (default) or cupy")
    timed = any("nt" in m for m in modes.values())
    if timed:
        ap.add_argument("--nt", type=int, help="time steps (overrides the mode)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    s = setup(args, figure, modes[args.mode])
    for k in ("sizes", "orders"):
        if getattr(args, k):
            s[k] = ints(getattr(args, k))
    if args.steps:
        s["steps"] = args.steps
    if timed and args.nt:
        s["nt"] = args.nt
    if callable(problem):
        problem = problem(s)
    s.update(variants=tuple(args.variants.split(",")), settings=tuple(args.settings.split(",")),
             device=args.device, backend=args.backend or "torch",
             setting_text={k: SETTINGS.get(k) for k in args.settings.split(",")})
    mach = machine(args.device)
    log = Log(args.quiet)
    cl, sources = clouds(s, log)
    runs, floors, closures = run_grid(log, cl, problem, problem_name, variants=s["variants"],
                                      orders=s["orders"], settings=s["settings"],
                                      seeds=s["seeds"], steps=s["steps"],
                                      eval_every=s["eval_every"], device=args.device,
                                      backend=args.backend)
    groups = aggregate(runs)
    for g in groups.values():
        g["closure_s"] = closures[g["N"]].get(f"{g['variant']}|{g['p']}")
    labels = list(cl)
    plots(args, groups, s, labels, cl)
    finish(args, figure, {"settings": s, "clouds": sources, "problem": {
        "name": problem_name, "pde": problem.pde, "exact": problem.exact,
        "time": problem.time, "nt": problem.nt if problem.time_dependent else None},
        "paper": paper, "floors": floors, "closure_s": closures, "groups": groups,
        "runs": runs},
        grid_table(groups, floors), compare(groups, runs, s, labels), t_start, mach)
    return {"groups": groups, "runs": runs}


def disk_clouds(s, log):
    """The ``clouds`` callable of the disk figures: one authors' set per size in ``s``."""
    out, src = {}, {}
    for n in s["sizes"]:
        cloud, text = disk_cloud(n, test=s.get("test", True),
                                 n_test_fallback=s.get("n_test_fallback", TEST_N))
        label = str(cloud.n_interior + cloud.n_boundary)
        out[label], src[label] = cloud, text
        log(f"cloud {text}")
    return out, src


def accuracy_speed_text(groups, setting, labels, orders, dt_variant="dt-fp64",
                        base="vanilla-fp32") -> str:
    """The common sentences: error of DT over vanilla per p, the two speed-ups (p > 2), the
    epochs ratio, the restarts -- all medians over seeds, ranges over the clouds."""
    def g(v, p, n):
        return groups.get(f"{n}|{setting}|{v}|{p}")

    def best(v, p, n):
        x = g(v, p, n)
        return med(x["best_rel_l2"]) if x else None

    acc = [f"p={p}: {span([ratio(best(dt_variant, p, n), best(base, None, n)) for n in labels])}x"
           for p in orders]
    hi = [(p, n) for n in labels for p in orders if p > 2 and g(dt_variant, p, n)]
    sp = [g(dt_variant, p, n).get("speedup_best") for p, n in hi]
    eq = [g(dt_variant, p, n).get("speedup_equal_error") for p, n in hi]
    ep = [ratio(med(g(dt_variant, p, n)["epochs_to_best"]), med(g(base, None, n)["epochs_to_best"]))
          for p, n in hi if g(base, None, n)]
    pe = [ratio(med(g(base, None, n)["time_per_epoch_s"]),
                med(g(dt_variant, p, n)["time_per_epoch_s"])) for p, n in hi if g(base, None, n)]
    ce = [ratio(g(base, None, n).get("closure_s"), g(dt_variant, p, n).get("closure_s"))
          for p, n in hi if g(base, None, n)]
    rst = sum(x["restarts"] for x in groups.values() if x["setting"] == setting)
    return (f"[{setting} setting] Best error of {dt_variant} over {base} (medians over seeds, "
            f"range over N): {'; '.join(acc)}. Speed-up of {dt_variant} (p > 2) over {base}, the "
            f"paper's definition (time to each one's own best): {span(sp)}; at equal error "
            f"(time to {base}'s best error): {span(eq)}. Time per epoch, {base} over "
            f"{dt_variant}: {span(pe)}; one loss+gradient evaluation (timed interleaved, the "
            f"load-robust figure): {span(ce)}. Epochs to best, {dt_variant} over {base}: {span(ep)}. "
            f"Restarts after a blow-up (all runs): {rst}.")

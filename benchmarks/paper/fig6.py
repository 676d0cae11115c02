"""Fig. 6 of the paper: the heat equation (5)-(7) on the unit disk, N = 828, Nt = 24, against p.

u = 1 + sin(pi x) cos(pi y) sin(pi t) on t in [0, 1] (eq. (20)), Robin alpha = beta = 1; the
DT-PINN discretises space with RBF-FD and takes du/dt by autograd (eq. (13)-(16)). fp64 DT-PINNs
(p = 2..5) against fp32 vanilla PINNs: relative L2 error at the collocation points of all time
slices (as the paper), training time to the best error and the speed-up, over several seeds,
in the authors' L-BFGS setting (no line search, DT rate 0.4, vanilla 0.2) and this library's
(strong Wolfe). The reduced mode uses fewer time steps (``--nt``).

    python benchmarks/paper/fig6.py --mode reduced
    python benchmarks/paper/fig6.py --mode full --device cuda

Writes ``fig6.json`` and ``fig6_error_speedup.png`` into ``--out``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's dtpinn_dist
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import dtpinn_dist as dt  # noqa: E402

FIGURE = "fig6"
VARIANTS = ("dt-fp64", "vanilla-fp32")
MODES = {
    "smoke": dict(sizes=(582,), nt=1, orders=(3,), seeds=1, steps=1, eval_every=1, test=False),
    # 828 x 25 space-time points cost ~0.4 s per loss+gradient on one core: Nt = 4 here
    "reduced": dict(sizes=(828,), nt=4, orders=(2, 3, 4, 5), seeds=2, steps=8, eval_every=1,
                    test=False),
    "full": dict(sizes=(828,), nt=24, orders=(2, 3, 4, 5), seeds=5, steps=5000, eval_every=10,
                 test=False),
}
PAPER_CLAIMS = {
    "fig6a": "Similar results to the 2D Poisson equation, with p > 2 achieving relative errors "
             "similar to fp32 [vanilla-PINNs].",
    "fig6b": "2-4x speed-ups over vanilla-PINNs; the speed-up appears to increase with the "
             "number of time steps Nt (results not shown).",
    "setup": "N = 828 spatial points, Nt = 24 (25 slices, 20700 space-time points), errors at "
             "the collocation points, error bars over 5 random runs.",
}


def compare(groups, runs, s, labels) -> str:
    parts = [C.accuracy_speed_text(groups, setting, labels, s["orders"])
             for setting in s["settings"]]
    parts.append(
        f"Paper: {PAPER_CLAIMS['fig6a']} {PAPER_CLAIMS['fig6b']} Differences in set-up: Nt = "
        f"{s['nt']} here (paper 24), {s['steps']} epochs (paper 5000), {s['seeds']} seed(s) "
        f"(paper 5), device {s['device']}; times are training time only; with few epochs the "
        f"best error is set by the step budget.")
    return "\n".join(parts)


def plots(args, groups, s, xs, clouds):
    plt = C.pyplot()
    n = xs[0]
    panels = [("best_rel_l2", "best relative L2 error", True),
              ("time_to_best_s", "training time to best [s]", True),
              ("speedup", "speed-up over vanilla fp32", False)]
    fig, axes = plt.subplots(len(s["settings"]), len(panels), squeeze=False,
                             figsize=(4.4 * len(panels), 3.4 * len(s["settings"])))
    orders = list(s["orders"])
    for i, st in enumerate(s["settings"]):
        dtg = [groups.get(f"{n}|{st}|dt-fp64|{p}") or {} for p in orders]
        van = groups.get(f"{n}|{st}|vanilla-fp32|None") or {}
        for j, (key, ylabel, logy) in enumerate(panels):
            ax = axes[i][j]
            if key == "speedup":
                for k, lab in (("speedup_best", "paper's definition"),
                               ("speedup_equal_error", "at vanilla's error")):
                    pts = [(p, g.get(k)) for p, g in zip(orders, dtg) if g.get(k) is not None]
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=lab)
                ax.axhline(1.0, color="gray", lw=0.8, ls=":")
            else:
                C.errorbar(ax, orders, [g.get(key) for g in dtg], "DT fp64")
                v = van.get(key)
                if v is not None:
                    ax.axhline(v["median"], color="k", ls="--", lw=1, label="vanilla fp32")
                    ax.axhspan(v["min"], v["max"], color="k", alpha=0.1)
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel("order p")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{st} setting", fontsize=9)
            ax.set_xticks(orders)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 6: heat, N = {n}, Nt = {s['nt']} (median, min..max)", fontsize=10)
    C.save(fig, args, "fig6_error_speedup.png")


def main(argv=None):
    return C.training_main(argv, doc=__doc__, figure=FIGURE,
                           problem=lambda s: dt.paper_problem("heat", nt=s["nt"]),
                           problem_name="heat", modes=MODES, variants=VARIANTS,
                           clouds=C.disk_clouds, plots=plots, compare=compare,
                           paper=PAPER_CLAIMS)


if __name__ == "__main__":
    main()

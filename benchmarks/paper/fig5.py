"""Fig. 5 of the paper: the nonlinear Poisson equation (1), lap(u) - exp(u) = f, on the unit disk.

fp64 DT-PINNs (p = 3, 4, 5; the paper omits p = 2 and fp64 vanilla PINNs as poor cost-accuracy
trade-offs) against fp32 vanilla PINNs on the authors' node sets: best relative L2 error on the
authors' 21748 test points, training time to it and the speed-up, over several seeds, in the
authors' L-BFGS setting (no line search, DT rate 0.01, vanilla 0.2) and in this library's
(strong Wolfe). Also the direct (Newton) solve of the same discrete system.

    python benchmarks/paper/fig5.py --mode reduced
    python benchmarks/paper/fig5.py --mode full --device cuda

Writes ``fig5.json`` and ``fig5_error_time_speedup.png`` into ``--out``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's dtpinn_dist
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import dtpinn_dist as dt  # noqa: E402

FIGURE = "fig5"
VARIANTS = ("dt-fp64", "vanilla-fp32")
MODES = {
    "smoke": dict(sizes=(582,), orders=(3,), seeds=1, steps=2, eval_every=1, n_test_fallback=2000),
    "reduced": dict(sizes=(582, 828), orders=(3, 4, 5), seeds=2, steps=12, eval_every=1),
    "full": dict(sizes=(582, 828, 1663, 2236, 3196, 4977, 6114, 8767, 19638), orders=(3, 4, 5),
                 seeds=5, steps=5000, eval_every=10),
}
PAPER_CLAIMS = {
    "fig5a": "Despite some outliers, fp64 DT-PINNs achieve comparable relative errors to fp32 "
             "vanilla-PINNs.",
    "fig5b": "DT-PINNs are still trained faster than vanilla-PINNs.",
    "fig5c": "The average speed-up is higher for the linear Poisson equation (Fig. 3c): DT-PINNs "
             "may not offer speed-ups if terms not involving differential operators dominate "
             "training times.",
    "setup": "5000 epochs of L-BFGS, 4 x 50 tanh, error bars over 5 random runs, RTX 2070.",
}


def compare(groups, runs, s, labels) -> str:
    parts = [C.accuracy_speed_text(groups, setting, labels, s["orders"])
             for setting in s["settings"]]
    parts.append(
        f"Paper: {PAPER_CLAIMS['fig5a']} {PAPER_CLAIMS['fig5b']} {PAPER_CLAIMS['fig5c']} "
        f"(compare the speed-ups here with fig3.json of the same mode.) Differences in set-up: "
        f"{s['steps']} epochs here (paper 5000), {s['seeds']} seed(s) (paper 5), N = "
        f"{', '.join(labels)}, device {s['device']}; times are training time only; with few "
        f"epochs the best error is set by the step budget (compare the direct-solve column).")
    return "\n".join(parts)


def plots(args, groups, s, xs, clouds):
    curves = ([("dt-fp64", p, f"DT fp64 p={p}") for p in s["orders"]]
              + [("vanilla-fp32", None, "vanilla fp32")])
    C.plot_training(args, groups, "fig5_error_time_speedup.png", xs=xs, xlabel="N",
                    settings=s["settings"], curves=curves,
                    panels=[("best_rel_l2", "best relative L2 error", True),
                            ("time_to_best_s", "training time to best [s]", True),
                            ("speedup_best", "speed-up over vanilla fp32", False),
                            ("speedup_equal_error", "speed-up at vanilla's error", False)],
                    title="Fig. 5: nonlinear Poisson, fp64 DT-PINN vs fp32 vanilla "
                          "(median, min..max)")


def main(argv=None):
    return C.training_main(argv, doc=__doc__, figure=FIGURE,
                           problem=dt.paper_problem("nonlinear-poisson"),
                           problem_name="nonlinear-poisson", modes=MODES, variants=VARIANTS,
                           clouds=C.disk_clouds, plots=plots, compare=compare,
                           paper=PAPER_CLAIMS)


if __name__ == "__main__":
    main()

"""What the declaration costs per evaluation: the declared paper Poisson closure against eq. (12)
written out by hand with the same operators and data (the floor of that computation).

Not a test. Prints, interleaved over rounds so load changes hit both alike, the time of one
loss + gradient evaluation (residual, backward) for the declared problem and for the hand-written
``||L u - [exp(u)] - f||^2 / N + ||B u - g||^2 / Nb``, and their ratio.

    python benchmarks/bench_declared.py --n 4975 --problem poisson
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dtpinn_dist as dt  # noqa: E402
from dtpinn_dist.operators.linear import spmv  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4975, help="generated disk cloud of about N nodes")
    ap.add_argument("--problem", default="poisson", choices=["poisson", "nonlinear-poisson"])
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cloud = dt.make_cloud("disk", n=a.n, seed=0)
    disc = dt.discretize(dt.paper_problem(a.problem), cloud, a.order)
    model = dt.MLP(2, 50, 4, seed=0)
    d, s = disc.data, disc.system
    L, B, X = s.ops["L"], s.ops["B"], d["X"]
    f, g, rows = d["f_rows"], d["g"], d["rows_idx"]
    sL, sB = math.sqrt(s.n_collocation), math.sqrt(s.n_boundary)
    nonlin = a.problem == "nonlinear-poisson"

    def declared():
        model.zero_grad()
        r = disc.residual(model)
        (r * r).sum().backward()

    def by_hand():
        model.zero_grad()
        U = model(X).reshape(-1)
        rp = spmv(L, U) - f
        if nonlin:
            rp = rp - torch.exp(U[rows])
        r = torch.cat([rp / sL, (spmv(B, U) - g) / sB])
        (r * r).sum().backward()

    times = {"declared": [], "by hand": []}
    for fn in (declared, by_hand):
        fn()  # warm up
    for _ in range(a.rounds):
        for name, fn in (("declared", declared), ("by hand", by_hand)):
            t0 = time.perf_counter()
            for _ in range(a.reps):
                fn()
            times[name].append((time.perf_counter() - t0) / a.reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.problem}, N = {cloud.n_interior + cloud.n_boundary}, p = {a.order}, "
          f"{a.threads} thread(s), median of {a.rounds} rounds x {a.reps} evaluations")
    for k, v in med.items():
        print(f"  {k:9s} {1e3 * v:8.3f} ms per loss + gradient")
    print(f"  ratio declared / by hand: {med['declared'] / med['by hand']:.3f}")


if __name__ == "__main__":
    main()

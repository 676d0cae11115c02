"""Halo / owned of a large 2D cloud cut into many parts, from the partitioner alone (issue 5).

The cloud is a jittered square lattice clipped to the unit disk plus equispaced boundary nodes
(with normals) and their ghosts: same density and stencils as a quasi-uniform cloud, generated in
a second for 10^6 nodes (the quasi-uniform generator is too slow at that size for a benchmark).
Stencils are the RBF-FD ones of order p (the n nearest nodes: 43 for the Laplacian, 31 for the
boundary operator at p = 4 in 2D); the halo of a part is the set of distinct off-part columns its
L and B rows reference, i.e. exactly what MatMult receives.

    python benchmarks/bench_partition.py --n 1000000 --parts 64 --order 4 [--methods hilbert,ptscotch]
    mpirun -n 2 python benchmarks/bench_partition.py ...   (graph partitioner in parallel)
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def lattice_disk_cloud(n: int, seed: int = 0, jitter: float = 0.2):
    """About ``n`` = Ni + Nb nodes in the unit disk: jittered lattice + boundary + ghosts."""
    from dtpinn_dist.geometry import PointCloud

    rng = np.random.default_rng(seed)
    h = np.sqrt(np.pi / n)  # area per node = pi / n
    g = np.arange(-1 + h / 2, 1, h)
    X = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    X += rng.uniform(-jitter * h, jitter * h, X.shape)
    X = X[np.linalg.norm(X, axis=1) < 1 - 0.5 * h]
    nb = int(round(2 * np.pi / h))
    t = 2 * np.pi * np.arange(nb) / nb
    B = np.stack([np.cos(t), np.sin(t)], 1)
    return PointCloud(X, B, B.copy()).with_ghost()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=64)
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--methods", default="auto,hilbert")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)

    from dtpinn_dist.comm import get_comm
    from dtpinn_dist.partition import cloud_halo_report, partition_cloud, stencil_size

    comm = get_comm("auto")
    t0 = time.perf_counter()
    cloud = lattice_disk_cloud(args.n)
    t_cloud = time.perf_counter() - t0
    out = {"n_nodes": cloud.n_nodes, "n_interior": cloud.n_interior, "n_boundary": cloud.n_boundary,
           "parts": args.parts, "order": args.order, "ranks": comm.size,
           "stencil_L": stencil_size(args.order, 2, 2), "stencil_B": stencil_size(args.order, 1, 2),
           "cloud_s": t_cloud, "results": {}}
    for method in args.methods.split(","):
        comm.barrier()
        t0 = time.perf_counter()
        P = partition_cloud(cloud, args.parts, method=method, comm=comm, order=args.order)
        t_part = time.perf_counter() - t0
        if comm.rank == 0:
            t0 = time.perf_counter()
            rep = cloud_halo_report(cloud, P, order=args.order)
            t_rep = time.perf_counter() - t0
            s = P.sizes()
            res = {"method": P.method, "partition_s": round(t_part, 2), "report_s": round(t_rep, 2),
                   "owned_min": int(s.min()), "owned_max": int(s.max()),
                   "imbalance": float(s.max() / s.mean()),
                   "halo_total": int(rep["halo"].sum()), "halo_max": int(rep["halo"].max()),
                   "halo_fraction": rep["halo_fraction"], "max_halo_fraction": rep["max_halo_fraction"],
                   "neighbours_mean": float(rep["neighbours"].mean()),
                   "neighbours_max": int(rep["neighbours"].max())}
            out["results"][method] = res
            print(f"{method:>9s} ({P.method}): {args.parts} parts of {cloud.n_nodes} nodes, "
                  f"partition {t_part:.1f}s; owned {s.min()}..{s.max()} (imbalance "
                  f"{res['imbalance']:.3f}); halo/owned total {100 * rep['halo_fraction']:.2f}% "
                  f"worst part {100 * rep['max_halo_fraction']:.2f}%; neighbours mean "
                  f"{res['neighbours_mean']:.1f} max {res['neighbours_max']}", flush=True)
    if comm.rank == 0:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        print(json.dumps({k: v for k, v in out.items() if k != "results"}))


if __name__ == "__main__":
    main()

"""Assemble RBF-FD operators from the command line.

    python -m dtpinn_dist.operators --domain disk --n 2000 --order 4 --out ops.npz
    python -m dtpinn_dist.operators --nodes DiskPoissonNodes.mat --index 4 --order 4 --out ops.npz

The output is ONE .npz (format: :mod:`dtpinn_dist.operators.io`; read it with
:func:`~dtpinn_dist.operators.io.load_operators`). An existing ``--out`` is kept unless
``--overwrite``; ``--out`` is checked for writability before any work; the file is written
atomically. Bad input (a missing, truncated or corrupt cloud file, an unwritable ``--out``) is
one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time

from .io import load_operators, save_operators

__all__ = ["main", "load_operators", "save_operators"]  # the functions live in .io


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dtpinn_dist.operators", allow_abbrev=False,
                                 description="Assemble RBF-FD Laplacian and Robin operators.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--domain", help="built-in domain (disk, star, annulus, ellipse, rectangle, "
                                      "ball, box)")
    src.add_argument("--nodes", help="point-cloud file (.mat authors' format or .npz)")
    ap.add_argument("--n", type=int, help="target node count for --domain")
    ap.add_argument("--index", type=int, help="entry of a .mat file (default: last)")
    ap.add_argument("--order", type=int, default=4, help="accuracy order p (2..6)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = ap.parse_args(argv)
    if a.domain and a.n is None:
        ap.error("--domain needs --n")

    from ..atomic import check_out_file
    from ..geometry import load_cloud, make_cloud
    from .rbffd import boundary_matrix, laplacian_matrix

    t0 = time.perf_counter()
    try:
        check_out_file(a.out, (".npz",), a.overwrite)  # before any work
        if a.domain:
            cloud = make_cloud(a.domain, n=a.n, seed=a.seed)
        else:
            cloud = load_cloud(a.nodes, index=a.index)
        cloud.validate()
        t1 = time.perf_counter()
        L = laplacian_matrix(cloud, a.order)
        t2 = time.perf_counter()
        B = boundary_matrix(cloud, a.order, a.alpha, a.beta)
        t3 = time.perf_counter()
        save_operators(a.out, cloud, L, B, a.order, a.alpha, a.beta)
    except ValueError as e:  # OutputError, ResourceError and the loaders' errors included
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{cloud}  (nodes {t1 - t0:.2f}s)")
    print(f"L: {L.shape[0]} x {L.shape[1]}, nnz {L.nnz}, {t2 - t1:.3f}s")
    print(f"B: {B.shape[0]} x {B.shape[1]}, nnz {B.nnz}, {t3 - t2:.3f}s")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

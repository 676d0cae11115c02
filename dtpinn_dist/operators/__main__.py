"""Assemble RBF-FD operators from the command line.

    python -m dtpinn_dist.operators --domain disk --n 2000 --order 4 --out ops.npz
    python -m dtpinn_dist.operators --nodes DiskPoissonNodes.mat --index 4 --order 4 --out ops.npz

The output is ONE .npz (load with ``np.load(path, allow_pickle=False)``) holding

* ``L_data, L_indices, L_indptr, L_shape`` -- the Laplacian in CSR form (rows Ni+Nb),
* ``B_data, B_indices, B_indptr, B_shape`` -- the Robin operator alpha n.grad + beta (rows Nb),
* ``interior, boundary, normals, ghost`` -- the nodes (columns = interior, boundary, ghost),
* ``order, alpha, beta`` -- scalars.

Rebuild a matrix with ``scipy.sparse.csr_matrix((z["L_data"], z["L_indices"], z["L_indptr"]),
shape=tuple(z["L_shape"]))`` or :func:`load_operators`.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import scipy.sparse as sp


def save_operators(path, cloud, L, B, order, alpha=1.0, beta=1.0) -> None:
    """Write L, B and the nodes to one .npz (format in the module docstring)."""
    arrays = {"interior": cloud.interior, "boundary": cloud.boundary, "normals": cloud.normals,
              "order": np.int64(order), "alpha": np.float64(alpha), "beta": np.float64(beta)}
    if cloud.ghost is not None:
        arrays["ghost"] = cloud.ghost
    for name, A in (("L", L), ("B", B)):
        A = sp.csr_matrix(A)
        arrays.update({f"{name}_data": A.data, f"{name}_indices": A.indices,
                       f"{name}_indptr": A.indptr, f"{name}_shape": np.array(A.shape, np.int64)})
    np.savez(path, **arrays)


def load_operators(path):
    """Read a file written by :func:`save_operators`; returns ``(L, B, cloud)``."""
    from ..geometry import PointCloud
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("L_data", "L_indices", "L_indptr", "L_shape", "B_data",
                               "B_indices", "B_indptr", "B_shape", "interior", "boundary",
                               "normals") if k not in z.files]
        if missing:
            raise ValueError(f"{path} lacks {missing}; write it with python -m "
                             "dtpinn_dist.operators ... --out")
        mats = [sp.csr_matrix((z[f"{n}_data"], z[f"{n}_indices"], z[f"{n}_indptr"]),
                              shape=tuple(int(s) for s in z[f"{n}_shape"])) for n in "LB"]
        cloud = PointCloud(z["interior"], z["boundary"], z["normals"],
                           ghost=z["ghost"] if "ghost" in z.files else None)
    return mats[0], mats[1], cloud


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dtpinn_dist.operators",
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
    a = ap.parse_args(argv)

    from ..geometry import load_cloud, make_cloud
    from .rbffd import boundary_matrix, laplacian_matrix

    t0 = time.perf_counter()
    try:
        if a.domain:
            if a.n is None:
                ap.error("--domain needs --n")
            cloud = make_cloud(a.domain, n=a.n, seed=a.seed)
        else:
            cloud = load_cloud(a.nodes, index=a.index)
        cloud.validate()
        t1 = time.perf_counter()
        L = laplacian_matrix(cloud, a.order)
        t2 = time.perf_counter()
        B = boundary_matrix(cloud, a.order, a.alpha, a.beta)
        t3 = time.perf_counter()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_operators(a.out, cloud, L, B, a.order, a.alpha, a.beta)
    print(f"{cloud}  (nodes {t1 - t0:.2f}s)")
    print(f"L: {L.shape[0]} x {L.shape[1]}, nnz {L.nnz}, {t2 - t1:.3f}s")
    print(f"B: {B.shape[0]} x {B.shape[1]}, nnz {B.nnz}, {t3 - t2:.3f}s")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Assembly time and memory of the RBF-FD operators L and B vs N (one core).

    python benchmarks/bench_rbffd.py                       # 2D p=2..5 and 3D p=2..4, N 1e3..2e5
    python benchmarks/bench_rbffd.py --dim 2 --orders 4 --nmax 1e6
    python benchmarks/bench_rbffd.py --authors             # the authors' 19638-node set, p=2..5

Prints, per (d, p, N): node-generation time, assembly time of L (Laplacian) and B (Robin),
nodes/second, nnz, peak traced memory of the assembly (tracemalloc) and the process peak RSS.
Not a test: no asserts.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, set before numpy loads BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dtpinn_dist.geometry import load_mat, make_cloud  # noqa: E402
from dtpinn_dist.operators.rbffd import boundary_matrix, laplacian_matrix  # noqa: E402

GiB = 2.0 ** 30


def run(cloud, p, label):
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    L = laplacian_matrix(cloud, p)
    t1 = time.perf_counter()
    boundary_matrix(cloud, p)  # timed, not kept
    t2 = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    N = cloud.n_interior + cloud.n_boundary
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{label:>12} d={cloud.dim} p={p} N={N:>8}  L {t1 - t0:8.3f}s  B {t2 - t1:7.3f}s  "
          f"{N / (t2 - t0):9.0f} nodes/s  nnz(L)={L.nnz:>10}  peak {peak / GiB:6.2f} GiB  "
          f"maxRSS {rss / GiB:6.2f} GiB", flush=True)
    return t2 - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, choices=(2, 3), nargs="*", default=[2, 3])
    ap.add_argument("--orders", type=int, nargs="*", help="orders p (default 2..5 in 2D, 2..4 in 3D)")
    ap.add_argument("--nmin", type=float, default=1e3)
    ap.add_argument("--nmax", type=float, default=2e5)
    ap.add_argument("--authors", action="store_true", help="time the authors' 19638-node set")
    a = ap.parse_args(argv)

    if a.authors:
        mat = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "DiskPoissonNodesLarge.mat"
        cloud = load_mat(mat, n=19638)
        for p in a.orders or [2, 3, 4, 5]:
            run(cloud, p, "authors")
        return
    for d in a.dim:
        orders = a.orders or ([2, 3, 4, 5] if d == 2 else [2, 3, 4])
        sizes = [n for n in (1e3, 1e4, 1e5, 2e5, 1e6) if a.nmin <= n <= a.nmax]
        for n in sizes:
            t = time.perf_counter()
            cloud = make_cloud("disk" if d == 2 else "ball", n=int(n), seed=0)
            tg = time.perf_counter() - t
            for p in orders:
                run(cloud, p, f"gen {tg:6.1f}s")


if __name__ == "__main__":
    main()

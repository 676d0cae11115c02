"""Assembly time and memory of the RBF-FD operators L and B vs N (one core).

    python benchmarks/bench_rbffd.py                       # 2D p=2..5 and 3D p=2..4, N 1e3..2e5
    python benchmarks/bench_rbffd.py --dim 2 --orders 4 --nmax 1e6
    python benchmarks/bench_rbffd.py --authors             # the authors' 19638-node set, p=2..5
    python benchmarks/bench_rbffd.py --compare a746240     # this code vs a git revision's, side
                                                           # by side in one process, with ratio

Prints, per (d, p, N): node-generation time, assembly time of L (Laplacian) and B (Robin),
nodes/second, nnz, peak traced memory of the assembly (tracemalloc) and the process peak RSS.
Not a test: no asserts.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, set before numpy loads BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dtpinn_dist.geometry import load_mat, make_cloud  # noqa: E402
from dtpinn_dist.operators import rbffd  # noqa: E402
from dtpinn_dist.operators.rbffd import boundary_matrix, laplacian_matrix  # noqa: E402

GiB = 2.0 ** 30
ROOT = Path(__file__).resolve().parents[1]


def load_revision(rev: str, folder: str):
    """The RBF-FD module (rbffd.py with its polynomials.py) of git revision ``rev``, imported
    as a separate package from ``folder``: the baseline runs in the same process."""
    pkg = Path(folder) / f"rbffd_{rev}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("rbffd.py", "polynomials.py"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:dtpinn_dist/operators/{name}"],
                              check=True, capture_output=True, text=True).stdout
        (pkg / name).write_text(text)
    sys.path.insert(0, folder)
    return importlib.import_module(f"rbffd_{rev}.rbffd")


def compare(rev: str, dims, orders, n: int, repeat: int):
    """Assembly of L (rows interior + boundary) by this code and by revision ``rev`` on the same
    cloud, best of ``repeat`` process-CPU times each (load from other jobs inflates wall time
    more than CPU time), bitwise comparison of the matrices, and the speed ratio."""
    with tempfile.TemporaryDirectory() as folder:
        old = load_revision(rev, folder)
        for d in dims:
            cloud = make_cloud("disk" if d == 2 else "ball", n=n, seed=0)
            N = cloud.n_interior + cloud.n_boundary
            for p in orders or ([4] if d == 2 else [3, 4]):
                t = {}
                mats = {}
                for name, mod in (("old", old), ("new", rbffd)):
                    best = float("inf")
                    for _ in range(repeat):
                        c0 = time.process_time()
                        mats[name] = mod.laplacian_matrix(cloud, p)
                        best = min(best, time.process_time() - c0)
                    t[name] = best
                A, B = mats["old"], mats["new"]
                same = (A.shape == B.shape and np.array_equal(A.indptr, B.indptr)
                        and np.array_equal(A.indices, B.indices)
                        and np.array_equal(A.data.view(np.int64), B.data.view(np.int64)))
                print(f"d={d} p={p} N={N}: old ({rev}) {t['old']:.3f} s = {N / t['old']:8.0f} "
                      f"nodes/s/core; new {t['new']:.3f} s = {N / t['new']:8.0f} nodes/s/core; "
                      f"ratio {t['old'] / t['new']:.2f}x; matrices bit-for-bit equal: {same}",
                      flush=True)


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
    ap.add_argument("--compare", metavar="REV", help="time L against git revision REV's code")
    ap.add_argument("--n", type=int, default=20000, help="cloud size for --compare")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many, for --compare")
    a = ap.parse_args(argv)

    if a.compare:
        compare(a.compare, a.dim, a.orders, a.n, a.repeat)
        return

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

"""Every stage of a DT-PINN run at scale, timed, with the memory of every rank (issue 20).

    mpirun -n 2 python benchmarks/bench_scale.py --n 100000
    mpirun -n 2 python benchmarks/bench_scale.py --n 1000000 --json benchmarks/results/scale_1e6.json
    mpirun -n 2 python benchmarks/bench_scale.py --n 100000 --problem nonlinear-poisson

Stages, in the order a run meets them (the CLI's path: rank 0 generates, every rank gets the
cloud, the ranks partition, each assembles its own rows, trains, rank 0 writes the outputs):

* ``generation``: ``make_cloud`` on rank 0 (disk / ball), then ``bcast`` to the other ranks;
* ``write_files``, ``read_npz``, ``read_h5``: the same cloud written by rank 0 as ``.npz`` and
  HDF5, then read back by
  slices (:func:`dtpinn_dist.distributed.scatter.read_distributed`): each rank reads 1/size of
  the file, the ranks Hilbert-partition it among themselves and swap halos: the rank's share
  plus halo is all it holds;
* ``partition``: :func:`~dtpinn_dist.partition.partition_cloud` (``--partitioner``);
* ``assembly``: :func:`~dtpinn_dist.problem.discretize` with that partition (RBF-FD weights of
  the rank's rows, PETSc matrices, data);
* ``lbfgs``: ``--lbfgs-steps`` L-BFGS steps (strong Wolfe, up to 20 iterations each, the CLI's
  default), no evaluation in between;
* ``lm``: ``--lm-steps`` matrix-free Gauss-Newton / LM steps (``step = "cg"``) from there;
* ``outputs``: rank 0 writes model, ``solution.npz``, VTK and PNG plots at the CLI's test
  set (``min(20000, 4 N)`` generated points).

Per stage and rank: wall seconds (between barriers), the rank's CPU seconds (process time since
the previous stage: on a machine shared with other jobs the fairer figure), the process's peak
RSS so far and its current RSS, and bytes per node (current RSS / N). Prints one JSON object (rank 0); ``--json``
also writes it. Not a test: no asserts.

Memory: glibc's heap keeps the freed blocks of one closure's tensors fragmented, so RSS creeps
to 2-3x the working set over the first closures (measured: 50k nodes, one process, 436 MB ->
891 MB after 8 closures); ``MALLOC_MMAP_THRESHOLD_=65536`` in the environment gives large
tensors their own mappings, returned at once (443 MB after 8 closures), at ~50 % more CPU per
closure here (page faults). Set it for runs near the memory limit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_now() -> int:
    """Current resident set size in bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100000, help="nodes Ni + Nb")
    ap.add_argument("--dim", type=int, default=2, choices=(2, 3))
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--problem", default="poisson", help="a paper problem (poisson, "
                    "nonlinear-poisson)")
    ap.add_argument("--partitioner", default="auto")
    ap.add_argument("--lbfgs-steps", type=int, default=5, help="0: skip the stage")
    ap.add_argument("--lm-steps", type=int, default=2, help="0: skip the stage")
    ap.add_argument("--skip-read", action="store_true", help="skip the sliced-read stage")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from dtpinn_dist.comm import get_comm
    from dtpinn_dist.geometry import get_domain, make_cloud, make_test_points
    from dtpinn_dist.optimizer import fit
    from dtpinn_dist.outputs.run_outputs import write_outputs
    from dtpinn_dist.partition import partition_cloud
    from dtpinn_dist.problem import discretize, paper_problem

    comm = get_comm("auto")
    rank, size = comm.rank, comm.size
    load0 = os.getloadavg()
    stages = []

    cpu = [time.process_time()]

    def stage(name, t0, **extra):
        comm.barrier()
        wall = time.perf_counter() - t0
        c1 = time.process_time()
        mem = comm.allgather((rss_peak(), rss_now(), round(c1 - cpu[0], 3)))
        cpu[0] = c1
        rec = {"stage": name, "wall_s": round(wall, 3), "cpu_s": [m[2] for m in mem],
               "peak_rss_bytes": [m[0] for m in mem], "rss_bytes": [m[1] for m in mem],
               "bytes_per_node": [round(m[1] / a.n, 1) for m in mem], **extra}
        stages.append(rec)
        if rank == 0:
            print(json.dumps(rec), flush=True)

    comm.barrier()
    stage("start", time.perf_counter())
    domain = "disk" if a.dim == 2 else "ball"
    t0 = time.perf_counter()
    cloud = make_cloud(domain, n=a.n, seed=0) if rank == 0 else None
    t_gen = time.perf_counter() - t0
    cloud = comm.bcast(cloud)
    extra = {"make_cloud_s": round(t_gen, 3), "n_nodes": int(cloud.n_nodes),
             "n_interior": int(cloud.n_interior), "n_boundary": int(cloud.n_boundary)}
    if rank == 0:
        from dtpinn_dist.geometry.nodes import nearest_distances

        dist = nearest_distances(cloud.collocation)
        extra["min_over_mean_spacing"] = round(float(dist.min() / dist.mean()), 4)
        extra["max_over_mean_spacing"] = round(float(dist.max() / dist.mean()), 4)
    stage("generation", t0, **extra)

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = comm.bcast(tmp)  # rank 0's folder (one machine: shared)
        if not a.skip_read:
            from dtpinn_dist.distributed.scatter import read_distributed
            from dtpinn_dist.geometry import save_npz
            from dtpinn_dist.geometry.slices import save_h5

            t0 = time.perf_counter()
            if rank == 0:
                save_npz(Path(tmp) / "cloud.npz", cloud)
                save_h5(Path(tmp) / "cloud.h5", cloud)
            stage("write_files", t0)
            for suffix in ("npz", "h5"):
                comm.barrier()
                t0 = time.perf_counter()
                local = read_distributed(Path(tmp) / f"cloud.{suffix}", comm, order=a.order)
                stage(f"read_{suffix}", t0, owned=comm.allgather(int(local.n_owned)),
                      halo=comm.allgather(int(local.n_halo)))
                del local

        comm.barrier()
        t0 = time.perf_counter()
        part = partition_cloud(cloud, size, method=a.partitioner, comm=comm, order=a.order)
        stage("partition", t0, method=part.method, owned=[int(s) for s in part.sizes()])

        t0 = time.perf_counter()
        problem = paper_problem(a.problem)
        disc = discretize(problem, cloud, a.order, comm=comm, partition=part,
                          backend="petsc" if size > 1 else None)
        stage("assembly", t0, halo=disc.system.info.get("halo"))

        model = None  # the paper's network, initialised by fit
        if a.lbfgs_steps:
            t0 = time.perf_counter()
            res = fit(disc, steps=a.lbfgs_steps, eval_every=0, verbose=False)
            model = res.model
            stage("lbfgs", t0, steps=a.lbfgs_steps, loss=float(res.result.final_loss),
                  closure_evals=res.result.evals)
        if a.lm_steps:
            t0 = time.perf_counter()
            res = fit(disc, model=model, optimizer="lm", steps=a.lm_steps, eval_every=0,
                      verbose=False, lm={"step": "cg"})
            model = res.model
            stage("lm_cg", t0, steps=a.lm_steps, loss=float(res.result.final_loss))
        if model is not None:
            t0 = time.perf_counter()
            if rank == 0:
                test = make_test_points(get_domain(domain), min(20000, 4 * a.n), seed=7919)
                (Path(tmp) / "out").mkdir()
                write_outputs(Path(tmp) / "out", model, disc, test, [])
            stage("outputs", t0)

    out = {"n": a.n, "dim": a.dim, "order": a.order, "problem": a.problem, "ranks": size,
           "host": platform.node(), "cpus": os.cpu_count(), "load_avg_start": load0,
           "load_avg_end": os.getloadavg(),
           "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
           "stages": stages}
    if rank == 0:
        print(json.dumps({"summary": {s["stage"]: s["wall_s"] for s in stages},
                          "max_peak_rss_gb": max(max(s["peak_rss_bytes"]) for s in stages) / 1e9}))
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

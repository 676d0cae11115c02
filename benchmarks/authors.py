"""What the benchmarks on the authors' node sets share: where the sets are, the clouds with the
21748-point test set, DeepXDE in a subprocess, and the time a history first reaches an error.

Imported by ``bench_peers.py``, ``bench_gauss_newton.py`` and ``bench_gn_ranks.py`` (they put the
repository root on ``sys.path`` first). The sets are looked for in ``$DTPINN_REFERENCE_DIR``,
else in ``shared/reference`` beside the repository, as the command line does.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dtpinn_dist.geometry import load_mat

REPO = Path(__file__).resolve().parents[1]
REF = Path(os.environ.get("DTPINN_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
#: N of an authors' disk set -> the file holding it
FILES = {828: "DiskPoissonNodes.mat", 1663: "DiskPoissonNodes.mat",
         4977: "DiskPoissonNodesLarge.mat", 19638: "DiskPoissonNodesLarge.mat"}


def load() -> list[float]:
    return list(os.getloadavg())


def test_points() -> np.ndarray:
    """The authors' 21748-point test set (interior and boundary of the last large entry)."""
    t = load_mat(REF / "DiskPoissonNodesLarge.mat", n=21748, ghost=False)
    return np.vstack([t.interior, t.boundary])


def authors_cloud(n: int, test: bool = True):
    """The authors' disk set with N = n (with their test set unless ``test=False``)."""
    cloud = load_mat(REF / FILES[n], n=n)
    return dataclasses.replace(cloud, test=test_points()) if test else cloud


def first_time_below(history, target, key="time_s"):
    """``key`` of the first record whose ``rel_l2`` is at most ``target`` (None: never)."""
    for h in history:
        e = h.get("rel_l2")
        if e is not None and e <= target:
            return h[key]
    return None


def run_deepxde(problem: str, n: int, budget: float, seed: int = 0) -> dict:
    """``benchmarks/peers/deepxde_runner.py`` in a subprocess (importing DeepXDE changes
    process-global torch settings), one thread; its JSON plus the load and wall time, or
    ``{"skipped": why}`` / ``{"error": stderr}``."""
    import importlib.util
    if importlib.util.find_spec("deepxde") is None:
        return {"skipped": "DeepXDE not installed (pip install -e .[bench])"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dx.json"
        cmd = [sys.executable, "-m", "benchmarks.peers.deepxde_runner", "--problem", problem,
               "--n", str(n), "--time", str(budget), "--seed", str(seed), "--threads", "1",
               "--json", str(path), "--quiet", "--ref-dir", str(REF)]
        l0, t = load(), time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        wall = time.perf_counter() - t
        if proc.returncode != 0 or not path.exists():
            return {"error": (proc.stderr or proc.stdout)[-2000:]}
        dx = json.loads(path.read_text())
    dx["load_before"], dx["load_after"], dx["wall_s"] = l0, load(), wall
    return dx

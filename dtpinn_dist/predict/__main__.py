"""Evaluate a trained run's network at given points.

    python -m dtpinn_dist.predict RUN_DIR --points pts.npz --out pred.npz
    python -m dtpinn_dist.predict RUN_DIR --points pts.csv --t 0.5 --out pred.csv

``RUN_DIR`` is a folder written by ``python -m dtpinn_dist.train`` (``model.pt`` +
``model.json``). Points: ``.npz`` (array ``points``, or its only array) or ``.csv`` (one point a
row; a header line is skipped), shape (n, d); a time-dependent model also takes ``--t T`` or
(n, d + 1) points with t as the last column. The output ``.npz`` holds ``points``, ``u`` (and
``t``); a ``.csv`` output has the point columns and ``u``. Nothing is unpickled; an existing
``--out`` is kept unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dtpinn_dist.predict", allow_abbrev=False,
                                description="Evaluate a saved DT-PINN at given points.")
    p.add_argument("run_dir", help="a run folder of python -m dtpinn_dist.train")
    p.add_argument("--points", required=True, help="points file: .npz (array 'points') or .csv")
    p.add_argument("--t", type=float, default=None,
                   help="time (time-dependent models; else give t as the last column)")
    p.add_argument("--out", required=True, help="output file: .npz or .csv")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def _write(path: Path, P: np.ndarray, u: np.ndarray, t, inputs) -> None:
    from ..atomic import atomic_write

    if path.suffix.lower() == ".csv":
        names = (inputs or [f"x{k}" for k in range(P.shape[1])])[:P.shape[1]]
        buf = io.StringIO()
        np.savetxt(buf, np.column_stack([P, u]), delimiter=",", fmt="%.17g",
                   header=",".join([*names, "u"]), comments="")
        with atomic_write(path, "w", what="predictions") as fh:
            fh.write(buf.getvalue())
        return
    arrays = {"points": P, "u": u}
    if t is not None:
        arrays["t"] = np.float64(t)
    with atomic_write(path, "wb", what="predictions") as fh:
        np.savez(fh, **arrays)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    from ..atomic import OutputError, check_out_file
    from ..outputs import ModelFileError, PointsError, load_run, read_points
    from ..resources import ResourceError

    out = Path(a.out)
    try:
        check_out_file(out, (".npz", ".csv"), a.overwrite)
        t0 = time.perf_counter()
        run = load_run(a.run_dir)
        P = read_points(a.points)
        u = run.predict(P, t=a.t)
        _write(out, P, u, a.t, run.inputs)
    except (ModelFileError, PointsError, OutputError, ResourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{run}: {len(u)} points in {time.perf_counter() - t0:.2f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

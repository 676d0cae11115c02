"""PNG plots of a run (matplotlib, Agg backend; the ``[io]`` extra).

* ``solution.png`` -- the network at the test points (scatter coloured by ``u``; 3-D clouds as
  a 3-D scatter; time-dependent problems: the first, middle and last time slices);
* ``error.png`` -- ``|u - u_exact|`` the same way, titled with the relative L2 error (only with
  an exact solution);
* ``history.png`` -- loss and relative L2 error against the optimizer step (log scale).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .solution import SolutionFields

__all__ = ["write_plots"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    try:
        with atomic_write(path, "wb", what="plot") as fh:
            fig.savefig(fh, format="png", dpi=120)  # tight_layout already: no second drawing
    finally:
        plt.close(fig)
    return path


def _picked(fields: SolutionFields):
    """(title suffix, u, u_exact) of the slices to show: all of a steady problem, else the
    first, middle and last time slices."""
    sl = list(fields.slices())
    if not fields.time_dependent:
        return [("", sl[0][1], sl[0][2])]
    ks = sorted({0, len(sl) // 2, len(sl) - 1})
    return [(f" at t = {sl[k][0]:.3g}", sl[k][1], sl[k][2]) for k in ks]


def _field_figure(plt, P: np.ndarray, panels, label: str, cmap: str):
    n = len(panels)
    three_d = P.shape[1] == 3
    fig = plt.figure(figsize=(5.0 * n, 4.0))
    size = max(0.5, min(20.0, 6000.0 / max(len(P), 1)))
    lo = min(float(np.min(v)) for _, v in panels)
    hi = max(float(np.max(v)) for _, v in panels)
    for k, (title, v) in enumerate(panels):
        if three_d:
            ax = fig.add_subplot(1, n, k + 1, projection="3d")
            sc = ax.scatter(P[:, 0], P[:, 1], P[:, 2], c=v, s=size, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_zlabel("z")
        else:
            ax = fig.add_subplot(1, n, k + 1)
            sc = ax.scatter(P[:, 0], P[:, 1], c=v, s=size, cmap=cmap, vmin=lo, vmax=hi,
                            linewidths=0)
            ax.set_aspect("equal")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title(title, fontsize=10)
        fig.colorbar(sc, ax=ax, shrink=0.8, label=label, pad=0.12 if three_d else 0.05)
    fig.tight_layout()
    return fig


def _history_figure(plt, history: list):
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "rel_l2", "relative L2 error")):
        vals = [h.get(key) for h in history]
        pts = [(s, v) for s, v in zip(steps, vals)
               if v is not None and math.isfinite(v) and v > 0]
        if pts:
            ax.semilogy(*zip(*pts), marker=".", lw=1)
        else:
            ax.text(0.5, 0.5, f"no {label}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def write_plots(folder, fields: SolutionFields, history: list, created=None) -> list[Path]:
    """Write the PNG files into ``folder``; returns the paths written. ``created``: a callable
    told every path before it is written. Raises ImportError when matplotlib is missing."""
    plt = _pyplot()
    folder = Path(folder)
    note = created or (lambda p: None)
    written = []
    picked = _picked(fields)
    n = len(fields.points)
    fig = _field_figure(plt, fields.points, [(f"network u{s} ({n} points)", u)
                                             for s, u, _ in picked], "u", "viridis")
    note(folder / "solution.png")
    written.append(_save(plt, fig, folder / "solution.png"))
    if fields.u_exact is not None:
        overall = " over all times" if fields.time_dependent else ""
        panels = [(f"|u - u_exact|{s}" + (f" (relative L2{overall} {fields.rel_l2:.2e})"
                                           if k == 0 else ""), np.abs(u - ue))
                  for k, (s, u, ue) in enumerate(picked)]
        fig = _field_figure(plt, fields.points, panels, "|error|", "plasma")
        note(folder / "error.png")
        written.append(_save(plt, fig, folder / "error.png"))
    if history:
        note(folder / "history.png")
        written.append(_save(plt, _history_figure(plt, history), folder / "history.png"))
    return written

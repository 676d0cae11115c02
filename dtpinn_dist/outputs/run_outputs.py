"""Everything a finished run leaves besides ``metrics.json``: the model, the solution and its
error at the test points (``.npz``, VTK), and the PNG plots. Rank 0 only; every file atomic.

VTK needs meshio and the plots matplotlib (the ``[io]`` extra); without them those files are
skipped with one warning line and the run still succeeds. A write that fails (full disk,
unwritable folder) raises :class:`~dtpinn_dist.atomic.OutputError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

from .model_io import save_model
from .plots import write_plots
from .solution import solution_fields, write_solution_npz
from .vtk import write_vtk

__all__ = ["write_outputs"]


def write_outputs(folder, model, disc, points, history, log=None, created=None) -> dict:
    """Write ``model.pt``, ``model.json``, ``solution.npz``, the VTK file(s) and the PNG plots
    into ``folder``.

    Parameters
    ----------
    folder : path
    model : torch.nn.Module
        The trained network (the same on every rank).
    disc : Discretization
        For the time slices, the exact solution and the input layout.
    points : (n, d) array
        Where to evaluate (the whole test set: rank 0 evaluates it alone, no communication).
    history : list of dict
        The evaluation records (for ``history.png``).
    log : callable, optional
        Gets ``log.warn(line)`` (or ``log("warning: ...")``) for skipped optional files.
    created : callable, optional
        Told every path before it is written (see :meth:`RunDir.file`).

    Returns
    -------
    dict
        ``name -> path`` of the files written.
    """
    folder = Path(folder)
    note = created or (lambda p: None)
    out = {}
    lifted = getattr(disc, "lift", None) is not None
    for name in ("model.pt", "model.json", "solution.npz") + (("lift.npz",) if lifted else ()):
        note(folder / name)
    out["model.pt"], out["model.json"] = save_model(folder, model, disc)
    if lifted:
        out["lift.npz"] = folder / "lift.npz"
    fields = solution_fields(model, disc, points)
    out["solution.npz"] = write_solution_npz(folder / "solution.npz", fields)
    missing = []
    for pkg, write in (("meshio", lambda: write_vtk(folder, fields, note)),
                       ("matplotlib", lambda: write_plots(folder, fields, history, note))):
        try:
            for p in write():
                out[str(p.relative_to(folder))] = p
        except ImportError:  # the package or one it needs: an optional file, never a failure
            missing.append(pkg)
    if missing:
        what = {"meshio": "VTK files", "matplotlib": "PNG plots"}
        line = (f"{' and '.join(missing)} not installed: skipped the "
                f"{' and '.join(what[m] for m in missing)} (pip install 'dtpinn-dist[io]')")
        if hasattr(log, "warn"):
            log.warn(line)
        elif log is not None:
            log("warning: " + line)
    return out

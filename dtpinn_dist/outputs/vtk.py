"""The solution as VTK point clouds for ParaView (meshio; the ``[io]`` extra).

* steady problem: ``solution.vtu`` -- the test points as ``vertex`` cells with point data ``u``
  and, with an exact solution, ``u_exact``, ``error`` (``u - u_exact``) and ``abs_error``;
* time-dependent problem: one ``vtk/solution_KKKK.vtu`` per time slice and ``solution.pvd``, a
  ParaView collection that lists them with their times (open it: the time slider steps through
  the slices).

2-D points get ``z = 0`` (VTK points are 3-D). In ParaView, show the data "Point Gaussian" or
"Points" and colour by ``u`` or ``error``.
"""
from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from ..atomic import atomic_path, atomic_write
from .rundir import VTK_DIR, vtk_slice_name
from .solution import SolutionFields

__all__ = ["write_vtk"]


def _mesh(meshio, P: np.ndarray, data: dict):
    pts = np.zeros((len(P), 3), dtype=np.float64)
    pts[:, :P.shape[1]] = P
    cells = [("vertex", np.arange(len(P), dtype=np.int64).reshape(-1, 1))]
    return meshio.Mesh(pts, cells, point_data={k: np.ascontiguousarray(v, dtype=np.float64)
                                               for k, v in data.items()})


def _point_data(u, ue) -> dict:
    data = {"u": u}
    if ue is not None:
        data.update(u_exact=ue, error=u - ue, abs_error=np.abs(u - ue))
    return data


def _write_vtu(meshio, path: Path, P, data):
    with atomic_path(path, what="VTK file") as tmp:
        meshio.write(str(tmp), _mesh(meshio, P, data), file_format="vtu")


def write_vtk(folder, fields: SolutionFields, created=None) -> list[Path]:
    """Write the VTK file(s) of ``fields`` into ``folder``; returns the paths written.

    ``created``: a callable told every path before it is written (the run folder's record of
    what to remove after an early failure). Raises ImportError when meshio is missing.
    """
    import meshio

    folder = Path(folder)
    note = created or (lambda p: None)
    if not fields.time_dependent:
        path = folder / "solution.vtu"
        note(path)
        _write_vtu(meshio, path, fields.points, _point_data(fields.u, fields.u_exact))
        return [path]
    sub = folder / VTK_DIR
    note(sub)
    sub.mkdir(exist_ok=True)
    written, entries = [], []
    for k, (t, u, ue) in enumerate(fields.slices()):
        path = sub / vtk_slice_name(k)
        _write_vtu(meshio, path, fields.points, _point_data(u, ue))
        written.append(path)
        entries.append(f'    <DataSet timestep={quoteattr(repr(t))} part="0" '
                       f'file={quoteattr(f"{VTK_DIR}/{path.name}")}/>')
    pvd = folder / "solution.pvd"
    note(pvd)
    text = ('<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n'
            '  <Collection>\n' + "\n".join(entries) + '\n  </Collection>\n</VTKFile>\n')
    with atomic_write(pvd, "w", what="VTK collection") as fh:
        fh.write(text)
    return [pvd, *written]

"""Reading and writing point clouds: the authors' MATLAB files and our own .npz format.

The .npz format (see docs/point_clouds.md): float64 arrays ``interior (Ni,d)``, ``boundary
(Nb,d)``, ``normals (Nb,d)`` and optionally ``ghost (Nb,d)`` and ``test (Nt,d)``; no pickled
objects (read with ``allow_pickle=False``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .cloud import GHOST_OFFSET, PointCloud

__all__ = ["load_mat", "load_npz", "save_npz", "load_cloud", "mat_sizes"]

_MAT_KEYS = ("fullintnodes", "bdrynodes", "normals")
_NPZ_REQUIRED = ("interior", "boundary", "normals")
_NPZ_OPTIONAL = ("ghost", "test")


def _read_mat(path):
    import scipy.io
    try:
        m = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for corrupt files
        raise ValueError(f"cannot read {path} as a MATLAB .mat file ({e}); pass a MATLAB v5 file "
                         "with cell arrays fullintnodes, bdrynodes, normals") from e
    missing = [k for k in _MAT_KEYS if k not in m]
    if missing:
        raise ValueError(f"{path} lacks {missing}; the authors' format has cell arrays "
                         f"{list(_MAT_KEYS)} (one entry per node set)")
    cells = [np.asarray(m[k], dtype=object).ravel() if m[k].dtype == object
             else np.array([m[k]], dtype=object) for k in _MAT_KEYS]
    if len({len(c) for c in cells}) != 1:
        raise ValueError(f"{path}: cell arrays {list(_MAT_KEYS)} have lengths "
                         f"{[len(c) for c in cells]}; they must have one entry each per node set")
    return cells


def mat_sizes(path) -> list[int]:
    """N = Ni + Nb of every node set in an authors' .mat file."""
    ci, cb, _ = _read_mat(path)
    return [int(np.shape(a)[0] + np.shape(b)[0]) for a, b in zip(ci, cb)]


def load_mat(path, index: int | None = None, n: int | None = None, ghost: bool = True,
             ghost_offset: float = GHOST_OFFSET) -> PointCloud:
    """Load one node set from the authors' MATLAB file.

    Parameters
    ----------
    path : str or Path
    index : int, optional
        Entry of the cell arrays (0-based; negative counts from the end). Default: the last.
    n : int, optional
        Pick the entry whose N = Ni + Nb equals ``n`` instead of ``index``.
    ghost : bool
        Add ghost nodes (authors' offset ``0.25 h``).
    """
    ci, cb, cn = _read_mat(path)
    sizes = [int(np.shape(a)[0] + np.shape(b)[0]) for a, b in zip(ci, cb)]
    if index is not None and n is not None:
        raise ValueError("give index or n, not both")
    if n is not None:
        if n not in sizes:
            raise ValueError(f"{path} has no node set with N={n}; available N: {sizes}")
        index = sizes.index(n)
    if index is None:
        index = len(sizes) - 1
    if not -len(sizes) <= index < len(sizes):
        raise ValueError(f"index {index} out of range for {path}, which has {len(sizes)} node "
                         f"sets (N = {sizes}); use 0..{len(sizes) - 1}")
    cloud = PointCloud(interior=np.asarray(ci[index], dtype=np.float64),
                       boundary=np.asarray(cb[index], dtype=np.float64),
                       normals=np.asarray(cn[index], dtype=np.float64))
    cloud.validate()
    return cloud.with_ghost(ghost_offset) if ghost else cloud


def save_npz(path, cloud: PointCloud) -> None:
    """Write a cloud in the .npz format of docs/point_clouds.md (``ghost``/``test`` if present)."""
    arrays = {k: np.asarray(getattr(cloud, k), dtype=np.float64)
              for k in _NPZ_REQUIRED + _NPZ_OPTIONAL if getattr(cloud, k) is not None}
    np.savez(path, **arrays)


def load_npz(path, ghost: bool | None = None, ghost_offset: float = GHOST_OFFSET) -> PointCloud:
    """Read a cloud written by :func:`save_npz` (or by hand in the same format).

    ``ghost=None`` keeps the file's ghost nodes if any; ``True`` adds them if absent; ``False``
    drops them.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as e:
        raise ValueError(f"{path} holds pickled objects or is malformed ({e}); store plain "
                         "float64 arrays interior, boundary, normals") from e
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path} as .npz ({e}); write it with numpy.savez / "
                         "dtpinn_dist.geometry.save_npz") from e
    missing = [k for k in _NPZ_REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{path} lacks arrays {missing}; a point-cloud .npz needs interior, "
                         "boundary, normals (optional ghost, test) -- see docs/point_clouds.md")
    for k, v in data.items():
        if k in _NPZ_REQUIRED + _NPZ_OPTIONAL and not np.issubdtype(v.dtype, np.number):
            raise ValueError(f"{path}: array {k!r} has dtype {v.dtype}; store float64 coordinates")
    cloud = PointCloud(**{k: data.get(k) for k in _NPZ_REQUIRED + _NPZ_OPTIONAL})
    cloud.validate()
    if ghost is False:
        cloud.ghost = None
    elif ghost and cloud.ghost is None:
        cloud = cloud.with_ghost(ghost_offset)
    return cloud


def load_cloud(path, index: int | None = None, n: int | None = None, ghost: bool | None = True,
               ghost_offset: float = GHOST_OFFSET) -> PointCloud:
    """Load a cloud from ``.mat`` (authors' cell arrays; ``index`` or ``n`` picks the set) or
    ``.npz`` (our format), dispatching on the suffix."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"point-cloud file {p} does not exist; check the path")
    suf = p.suffix.lower()
    if suf == ".mat":
        return load_mat(p, index=index, n=n, ghost=ghost is not False, ghost_offset=ghost_offset)
    if suf == ".npz":
        if index is not None or n is not None:
            raise ValueError(".npz files hold one cloud; drop index/n")
        return load_npz(p, ghost=ghost, ghost_offset=ghost_offset)
    raise ValueError(f"unknown point-cloud file kind {suf!r} for {p}; use .mat (authors' MATLAB "
                     "cell arrays) or .npz (docs/point_clouds.md)")

"""Reading and writing point clouds: the authors' MATLAB files and our own .npz format.

The .npz format (see docs/point_clouds.md): float64 arrays ``interior (Ni,d)``, ``boundary
(Nb,d)``, ``normals (Nb,d)`` and optionally ``ghost (Nb,d)``, ``test (Nt,d)``, integer
``boundary_tags (Nb,)`` and a unicode string array ``tag_names`` (entry ``t`` names tag ``t``,
``""`` for an unnamed tag); no pickled objects (read with ``allow_pickle=False``).

Every failure to read a file is one :class:`ValueError` line naming the file, what is wrong and
what to do; non-regular files (a FIFO, a directory, a device) are refused before opening.
"""
from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..resources import (ResourceError, check_memory, check_memory_parts, npz_declared, one_line,
                         regular_file)
from .cloud import GHOST_OFFSET, PointCloud
from .nodes import BYTES_PER_NODE

__all__ = ["load_mat", "load_npz", "save_npz", "load_cloud", "mat_sizes",
           "MAT_NORMAL_LENGTHS"]

_MAT_KEYS = ("fullintnodes", "bdrynodes", "normals")
_NPZ_REQUIRED = ("interior", "boundary", "normals")
_NPZ_OPTIONAL = ("ghost", "test")
#: Largest boundary tag save_npz writes (tag_names has one entry per tag up to the largest).
_MAX_SAVED_TAG = 65535

#: Normals of the authors' .mat files with a length in this range are normalised (with a
#: warning naming the rows): their sphere file has one normal per set, at a pole, of length 0.59
#: or 0.67 pointing the right way. Other lengths (zero, NaN, far off) are refused.
MAT_NORMAL_LENGTHS = (0.5, 2.0)

# What numpy / zipfile / zlib / scipy raise on truncated, corrupt or bad-CRC files.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile,
                zlib.error, NotImplementedError, MemoryError, UnicodeDecodeError)


def _regular_file(path) -> Path:
    """The point-cloud file ``path``, checked to be a regular file (never opened here)."""
    return regular_file(path, "point-cloud file", "give a regular .mat or .npz file")


def npz_parts(declared: dict, per_row: dict | None = None) -> dict:
    """Memory parts of reading a ``.npz`` (:func:`~dtpinn_dist.resources.npz_declared`): the
    arrays as declared (twice: read, then converted), and for a point cloud ``per_row`` bytes
    per declared row of the named arrays (what processing the nodes needs)."""
    parts = {"its arrays as declared in the file": 2 * sum(b for _, _, b in declared.values())}
    for key, nbytes in (per_row or {}).items():
        shape = declared.get(key, ((0,), None, 0))[0]
        rows = float(shape[0]) if len(shape) else 0.0
        parts[f"processing the {key} rows ({rows:.0f} as declared)"] = rows * nbytes
    return parts


def read_npz(path, fix: str, what: str = "point-cloud file",
             per_row: dict | None = None) -> tuple[Path, dict]:
    """Every array of the ``.npz`` file ``path`` (read with ``allow_pickle=False``, after checking
    it is a regular file and that the arrays its headers declare fit in memory, with ``per_row``
    bytes per declared row of the named arrays: :func:`npz_parts`), as ``(path, arrays)``.

    One-line ``ValueError`` naming the file for a pickled, truncated or corrupt file, ending with
    ``fix`` (how to write a good one); :class:`~dtpinn_dist.resources.ResourceError` when it is
    too large.
    """
    p = regular_file(path, what, "give a regular .mat or .npz file")
    try:
        with np.load(p, allow_pickle=False) as z:
            # sizes from the zip directory and the arrays' headers: refuse before reading
            check_memory_parts(npz_parts(npz_declared(z.zip), per_row), f"reading {p}",
                               fix="use a smaller file")
            return p, {k: z[k] for k in z.files}
    except ResourceError:
        raise
    except ValueError as e:
        raise ValueError(f"{p} holds pickled objects or is malformed ({one_line(e)}); "
                         f"{fix}") from None
    except _READ_ERRORS as e:
        raise ValueError(f"cannot read {p} as .npz ({one_line(e)}): the file is truncated, "
                         f"corrupt or not a .npz; {fix}") from None


def _read_mat(path):
    import scipy.io

    p = _regular_file(path)
    check_memory(4 * os.path.getsize(p), f"reading {p}", fix="use a smaller file")
    try:
        m = scipy.io.loadmat(str(p))
    except _READ_ERRORS as e:  # scipy raises several types for corrupt or truncated files
        raise ValueError(f"cannot read {p} as a MATLAB .mat file ({one_line(e)}); pass a MATLAB "
                         "v5 file with cell arrays fullintnodes, bdrynodes, normals") from None
    missing = [k for k in _MAT_KEYS if k not in m]
    if missing:
        raise ValueError(f"{p} lacks {missing}; the authors' format has cell arrays "
                         f"{list(_MAT_KEYS)} (one entry per node set)")
    cells = [np.asarray(m[k], dtype=object).ravel() if m[k].dtype == object
             else np.array([m[k]], dtype=object) for k in _MAT_KEYS]
    if len({len(c) for c in cells}) != 1:
        raise ValueError(f"{p}: cell arrays {list(_MAT_KEYS)} have lengths "
                         f"{[len(c) for c in cells]}; they must have one entry each per node set")
    return cells


def _float_array(a, path, what: str) -> np.ndarray:
    try:
        out = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {what} is not a numeric array ({one_line(e)}); store float "
                         "coordinates") from None
    return out


def mat_sizes(path) -> list[int]:
    """N = Ni + Nb of every node set in an authors' .mat file."""
    ci, cb, _ = _read_mat(path)
    return [int(np.shape(a)[0] + np.shape(b)[0]) for a, b in zip(ci, cb)]


def _normalise_mat_normals(normals: np.ndarray, label: str) -> np.ndarray:
    """Rescale the authors' slightly-off normals to unit length, warning with rows and lengths;
    zero, NaN or far-off normals are left for :meth:`PointCloud.validate` to refuse."""
    if normals.ndim != 2 or not len(normals):
        return normals
    with np.errstate(invalid="ignore"):
        length = np.linalg.norm(normals, axis=1)
        lo, hi = MAT_NORMAL_LENGTHS
        off = np.isfinite(length) & (np.abs(length - 1.0) > 1e-6) & (length >= lo) & (length <= hi)
    if not off.any():
        return normals
    rows = np.flatnonzero(off)
    shown = ", ".join(f"row {int(r)} (length {length[r]:.4g})" for r in rows[:8])
    more = f" and {rows.size - 8} more" if rows.size > 8 else ""
    warnings.warn(f"{label}: normalised {rows.size} normal(s) that were not unit length: "
                  f"{shown}{more}", UserWarning, stacklevel=3)
    out = normals.copy()
    out[rows] /= length[rows, None]
    return out


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

    Notes
    -----
    One boundary part, ``{"boundary": 0}``. Normals of length within
    :data:`MAT_NORMAL_LENGTHS` but not 1 are normalised with a ``UserWarning`` naming the rows
    and lengths (the authors' sphere file has one per set); zero or NaN normals are refused.
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
    label = f"{Path(path).name} node set {index % len(sizes)} (N={sizes[index]})"
    normals = _float_array(cn[index], path, "normals")
    cloud = PointCloud(interior=_float_array(ci[index], path, "fullintnodes"),
                       boundary=_float_array(cb[index], path, "bdrynodes"),
                       normals=_normalise_mat_normals(normals, label))
    try:
        cloud.validate()
        return cloud.with_ghost(ghost_offset) if ghost else cloud
    except ValueError as e:
        raise ValueError(f"{label}: {e}") from None


def save_npz(path, cloud: PointCloud) -> None:
    """Write a cloud in the .npz format of docs/point_clouds.md (``ghost``/``test`` if present;
    ``boundary_tags`` and ``tag_names`` unless the cloud has just the default part
    ``{"boundary": 0}``)."""
    arrays = {k: np.asarray(getattr(cloud, k), dtype=np.float64)
              for k in _NPZ_REQUIRED + _NPZ_OPTIONAL if getattr(cloud, k) is not None}
    if cloud.parts != [("boundary", 0)]:  # more than the default single part
        arrays["boundary_tags"] = cloud.tags.astype(np.int64)
        names = dict(cloud.tag_names)
        size = max([*names.values(), *(cloud.tags.tolist() or [0])]) + 1
        if size > _MAX_SAVED_TAG + 1:
            raise ValueError(f"boundary tag {size - 1} is too large for the .npz format (its "
                             f"tag_names array has one entry per tag up to the largest); "
                             f"renumber the parts 0..{_MAX_SAVED_TAG}")
        table = [""] * size
        for name, tag in names.items():
            table[tag] = name
        arrays["tag_names"] = np.array(table, dtype=np.str_)
    np.savez(path, **arrays)


def _tags_from_npz(data: dict, path) -> tuple[np.ndarray | None, dict | None]:
    tags = data.get("boundary_tags")
    if tags is not None:
        if not np.issubdtype(tags.dtype, np.integer) or tags.ndim != 1:
            raise ValueError(f"{path}: boundary_tags has dtype {tags.dtype} and shape "
                             f"{tags.shape}; store a 1-D integer array, one part tag per "
                             "boundary node")
    names = data.get("tag_names")
    if names is None:
        return tags, None
    if names.dtype.kind != "U" or names.ndim != 1:
        raise ValueError(f"{path}: tag_names has dtype {names.dtype} and shape {names.shape}; "
                         "store a 1-D unicode string array (entry t names tag t, '' for none), "
                         "e.g. np.array(['outer', 'inner'])")
    listed = [str(s) for s in names.tolist()]
    named = [s for s in listed if s]
    dup = sorted({s for s in named if named.count(s) > 1})
    if dup:
        raise ValueError(f"{path}: tag_names repeats {dup}; give each boundary part its own name")
    return tags, {s: i for i, s in enumerate(listed) if s}


def load_npz(path, ghost: bool | None = None, ghost_offset: float = GHOST_OFFSET) -> PointCloud:
    """Read a cloud written by :func:`save_npz` (or by hand in the same format).

    ``ghost=None`` keeps the file's ghost nodes if any; ``True`` adds them if absent; ``False``
    drops them.
    """
    # every node is processed (ghosts, kd-tree, stencils): make_cloud's measured peak per node
    # (2D, the smaller) is a lower bound of what a declared node costs
    p, data = read_npz(path, "store plain float64 arrays interior, boundary, normals; write "
                       "it with numpy.savez / dtpinn_dist.geometry.save_npz",
                       per_row={"interior": BYTES_PER_NODE[2], "boundary": BYTES_PER_NODE[2]})
    missing = [k for k in _NPZ_REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{p} lacks arrays {missing}; a point-cloud .npz needs interior, "
                         "boundary, normals (optional ghost, test, boundary_tags, tag_names) -- "
                         "see docs/point_clouds.md")
    for k, v in data.items():
        if k in _NPZ_REQUIRED + _NPZ_OPTIONAL and (not np.issubdtype(v.dtype, np.number)
                                                  or np.issubdtype(v.dtype, np.complexfloating)):
            raise ValueError(f"{p}: array {k!r} has dtype {v.dtype}; store float64 coordinates")
    tags, names = _tags_from_npz(data, p)
    cloud = PointCloud(**{k: data.get(k) for k in _NPZ_REQUIRED + _NPZ_OPTIONAL},
                       boundary_tags=tags, tag_names=names)
    try:
        cloud.validate()
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None
    if ghost is False:
        cloud.ghost = None
    elif ghost and cloud.ghost is None:
        try:
            cloud = cloud.with_ghost(ghost_offset)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
    return cloud


def load_cloud(path, index: int | None = None, n: int | None = None, ghost: bool | None = True,
               ghost_offset: float = GHOST_OFFSET) -> PointCloud:
    """Load a cloud from ``.mat`` (authors' cell arrays; ``index`` or ``n`` picks the set) or
    ``.npz`` (our format), dispatching on the suffix."""
    p = Path(path)
    suf = p.suffix.lower()
    if suf not in (".mat", ".npz"):
        _regular_file(p)  # a missing file is named as such first
        raise ValueError(f"unknown point-cloud file kind {suf!r} for {p}; use .mat (authors' "
                         "MATLAB cell arrays) or .npz (docs/point_clouds.md)")
    if suf == ".mat":
        return load_mat(p, index=index, n=n, ghost=ghost is not False, ghost_offset=ghost_offset)
    if index is not None or n is not None:
        raise ValueError(".npz files hold one cloud; drop index/n")
    return load_npz(p, ghost=ghost, ghost_offset=ghost_offset)

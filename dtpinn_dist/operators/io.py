"""Operators on disk: L, B and their point cloud in ONE ``.npz`` (plain arrays, no pickles).

Arrays (read with ``np.load(path, allow_pickle=False)``):

* ``L_data, L_indices, L_indptr, L_shape`` -- the Laplacian in CSR form (rows Ni + Nb),
* ``B_data, B_indices, B_indptr, B_shape`` -- the Robin operator alpha n.grad + beta (rows Nb),
* ``interior, boundary, normals, ghost`` -- the nodes (columns = interior, boundary, ghost),
* ``boundary_tags, tag_names`` -- the boundary parts (as in the point-cloud ``.npz`` of
  docs/point_clouds.md), when the cloud has more than the default single part,
* ``order, alpha, beta`` -- scalars.

:func:`load_operators` checks the file (truncated, corrupt, missing arrays, shapes that do not
match the cloud) and validates the cloud, each failure one :class:`ValueError` line naming the
file; :func:`save_operators` writes atomically (no half file, no ``*.tmp`` left on a full disk).
"""
from __future__ import annotations


import numpy as np
import scipy.sparse as sp

from ..atomic import atomic_write
from ..geometry import PointCloud
from ..resources import one_line

__all__ = ["save_operators", "load_operators", "OPERATOR_KEYS"]

#: Arrays every operators file has.
OPERATOR_KEYS = ("L_data", "L_indices", "L_indptr", "L_shape", "B_data", "B_indices", "B_indptr",
                 "B_shape", "interior", "boundary", "normals")


def save_operators(path, cloud, L, B, order, alpha=1.0, beta=1.0) -> None:
    """Write L, B and the nodes (with their boundary parts) to one ``.npz`` (format above)."""
    arrays = {"interior": cloud.interior, "boundary": cloud.boundary, "normals": cloud.normals,
              "order": np.int64(order), "alpha": np.float64(alpha), "beta": np.float64(beta)}
    if cloud.ghost is not None:
        arrays["ghost"] = cloud.ghost
    if cloud.parts != [("boundary", 0)]:
        arrays["boundary_tags"] = cloud.tags.astype(np.int64)
        names = dict(cloud.tag_names)
        table = [""] * (max([*names.values(), *(cloud.tags.tolist() or [0])]) + 1)
        for name, tag in names.items():
            table[tag] = name
        arrays["tag_names"] = np.array(table, dtype=np.str_)
    for name, A in (("L", L), ("B", B)):
        A = sp.csr_matrix(A)
        arrays.update({f"{name}_data": A.data, f"{name}_indices": A.indices,
                       f"{name}_indptr": A.indptr, f"{name}_shape": np.array(A.shape, np.int64)})
    with atomic_write(path, "wb", what="operators") as fh:
        np.savez(fh, **arrays)


def load_operators(path):
    """Read a file written by :func:`save_operators`; returns ``(L, B, cloud)`` (the cloud with
    its ghost nodes and boundary parts, validated).

    Raises
    ------
    ValueError
        One line naming the file: not a regular file, truncated or corrupt, pickled, missing
        arrays, matrices that do not fit the cloud, or a cloud that fails validation.
    """
    from ..geometry.io import _tags_from_npz, read_npz

    p, data = read_npz(path, "write it with python -m dtpinn_dist.operators", what="operators file")
    missing = [k for k in OPERATOR_KEYS if k not in data]
    if missing:
        raise ValueError(f"{p} lacks {missing}; write it with python -m dtpinn_dist.operators "
                         "... --out")
    tags, names = _tags_from_npz(data, p)
    cloud = PointCloud(data["interior"], data["boundary"], data["normals"],
                       ghost=data.get("ghost"), boundary_tags=tags, tag_names=names)
    try:
        cloud.validate()
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
    mats = []
    for n, rows in (("L", cloud.n_interior + cloud.n_boundary), ("B", cloud.n_boundary)):
        shape = tuple(int(s) for s in np.asarray(data[f"{n}_shape"]).ravel())
        if shape != (rows, cloud.n_nodes):
            raise ValueError(f"{p}: {n} has shape {shape} but the cloud needs ({rows}, "
                             f"{cloud.n_nodes}) (rows x interior + boundary + ghost nodes); the "
                             "file is inconsistent, write it again")
        try:
            mats.append(sp.csr_matrix((data[f"{n}_data"], data[f"{n}_indices"],
                                       data[f"{n}_indptr"]), shape=shape))
            mats[-1].check_format(full_check=True)
        except ValueError as exc:
            raise ValueError(f"{p}: {n} is not a valid CSR matrix ({one_line(exc)}); the "
                             "file is damaged, write it again") from None
    return mats[0], mats[1], cloud

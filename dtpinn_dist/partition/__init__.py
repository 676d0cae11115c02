"""Partitioning point clouds over ranks (issue 5).

Every node (interior, boundary, ghost) is owned by exactly one rank; a ghost lives with the rank
that owns its boundary node; each rank's nodes are contiguous in a new global numbering
(:class:`Partition`). Pieces are spatially compact: PETSc ``MatPartitioning`` (PT-Scotch or
ParMETIS, when this PETSc has one) on the stencil adjacency graph, else equal-weight runs of a
Hilbert curve.

Entry point: :func:`partition_cloud`. Reporting: :func:`halo_report`.
"""
from __future__ import annotations

import numpy as np

from .layout import (Partition, halo_report, halo_stats, partition_from_units, stencil_neighbours,
                     stencil_pattern)
from .sfc import hilbert_keys, morton_keys, sfc_order, sfc_partition, split_weighted

__all__ = ["Partition", "partition_cloud", "partition_from_units", "halo_report", "cloud_halo_report",
           "stencil_pattern", "stencil_size", "sfc_order", "sfc_partition", "split_weighted",
           "hilbert_keys", "morton_keys", "graph_partitioner_available", "METHODS"]

#: Accepted ``method`` names of :func:`partition_cloud`.
METHODS = ("auto", "graph", "ptscotch", "parmetis", "hilbert", "morton", "block")

#: Unit weights: a boundary node brings a ghost (two network evaluations) and a B row.
BOUNDARY_WEIGHT = 2.0


def stencil_size(order: int, theta: int, d: int) -> int:
    """RBF-FD stencil size for order p and operator order theta (the RBF-FD module's rule)."""
    from ..operators.rbffd import stencil_params

    return stencil_params(order, theta, d)[2]


def graph_partitioner_available() -> str | None:
    """'ptscotch' or 'parmetis' when this PETSc was built with one, else None (no MPI needed
    to answer; imports petsc4py)."""
    try:
        from petsc4py import PETSc
    except ImportError:
        return None
    for name in ("ptscotch", "parmetis"):
        if PETSc.Sys.hasExternalPackage(name):
            return name
    return None


def partition_cloud(cloud, nparts: int | None = None, method: str = "auto", comm=None,
                    order: int = 4, curve: str = "hilbert", unit_part=None) -> Partition:
    """Partition ``cloud.nodes`` into ``nparts`` spatially compact pieces.

    Collective over ``comm`` for the graph methods (every rank must call with the same cloud and
    arguments; every rank gets the identical :class:`Partition`); the SFC and block methods are
    local computations that give the same result everywhere without communicating.

    Parameters
    ----------
    cloud : PointCloud
        Ghost nodes, when present, follow their boundary node.
    nparts : int, optional
        Number of pieces; defaults to the size of ``comm`` (1 without one). May differ from the
        number of ranks (e.g. a 64-way partition computed on 2 ranks).
    method : str
        'auto' (graph partitioner when PETSc has PT-Scotch/ParMETIS, else 'hilbert'),
        'graph' (the available one; error if none), 'ptscotch', 'parmetis', 'hilbert',
        'morton', or 'block' (contiguous runs of cloud order: not compact, for tests).
    comm : MPIComm, SerialComm or mpi4py communicator, optional
    order : int
        RBF-FD order p; sets the stencil size of the adjacency graph.
    unit_part : array of Ni + Nb ints, optional
        Use this assignment of interior-then-boundary nodes to parts instead (method ignored).
    """
    from ..comm import as_comm

    # the mpi4py communicator of a multi-rank run, None for one process
    mcomm = getattr(as_comm(comm), "comm", None)
    if nparts is None:
        nparts = 1 if mcomm is None else mcomm.Get_size()
    nparts = int(nparts)
    if nparts < 1:
        raise ValueError(f"nparts must be >= 1, got {nparts}")
    if method not in METHODS:
        raise ValueError(f"unknown partition method {method!r}: use one of {', '.join(METHODS)}")
    ni, nb, ng = cloud.n_interior, cloud.n_boundary, cloud.n_ghost
    units = cloud.collocation
    weights = np.concatenate([np.ones(ni), np.full(nb, BOUNDARY_WEIGHT)])
    if unit_part is not None:
        return partition_from_units(unit_part, ni, nb, ng, nparts, method="given")
    if nparts == 1:
        return partition_from_units(np.zeros(ni + nb, np.int64), ni, nb, ng, 1, method="single")
    if method in ("auto", "graph"):
        avail = graph_partitioner_available()
        if avail is None and method == "graph":
            raise ValueError("method='graph' needs a PETSc built with PT-Scotch or ParMETIS; "
                             "use method='hilbert' (or 'auto')")
        method = avail if avail is not None else curve
    if method in ("ptscotch", "parmetis"):
        from .graph import graph_partition

        part = graph_partition(cloud, nparts, method=method, comm=mcomm, order=order,
                               weights=weights, curve=curve)
    elif method in ("hilbert", "morton"):
        part = sfc_partition(units, nparts, weights=weights, curve=method)
    else:  # block
        offsets = split_weighted(weights, nparts)
        part = np.repeat(np.arange(nparts, dtype=np.int64), np.diff(offsets))
    return partition_from_units(part, ni, nb, ng, nparts, method=method)


def cloud_halo_report(cloud, partition: Partition, order: int = 4, chunk: int = 200_000) -> dict:
    """:func:`halo_report` with the stencil patterns of L (rows interior + boundary) and B (rows
    boundary) recomputed from the cloud's nearest neighbours (no RBF-FD weights needed), in
    chunks of rows so a million-node cloud needs little memory. Local (no communication)."""
    from scipy.spatial import cKDTree

    d, ni, nb = cloud.dim, cloud.n_interior, cloud.n_boundary
    nodes = cloud.nodes
    tree = cKDTree(nodes)
    owner = partition.owner
    n = np.int64(len(owner))
    keys = []
    for rows, k in ((np.arange(ni + nb), stencil_size(order, 2, d)),
                    (ni + np.arange(nb), stencil_size(order, 1, d))):
        for s in range(0, len(rows), chunk):
            r = rows[s:s + chunk]
            nbr = stencil_neighbours(nodes, r, k, tree)
            rp = np.repeat(owner[r], nbr.shape[1])
            c = nbr.ravel()
            off = owner[c] != rp
            keys.append(np.unique(rp[off] * n + c[off]))
    return halo_stats(keys, n, owner, partition)

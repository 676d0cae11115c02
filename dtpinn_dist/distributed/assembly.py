"""Distributed assembly: partition the cloud, compute RBF-FD weights only for the rows this rank
owns, and fill PETSc MPIAIJ matrices L and B in the partition's numbering (issue 2 §4, issue 5).

Every rank holds the same cloud (loaded or generated identically, or broadcast from rank 0 with
:func:`bcast_cloud`); the partition is computed collectively and is identical everywhere; then
each rank works on its own rows only (the expensive part, the local RBF-FD solves, is split
``size`` ways) and PETSc assembles the global matrices from the local CSR blocks with exact
preallocation (no communication but the layout setup, since every row is set by its owner).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..operators.system import DiscreteSystem
from ..comm import MPIComm, as_comm, init_petsc

__all__ = ["distributed_system", "petsc_aij", "bcast_cloud"]


def bcast_cloud(cloud, comm):
    """The root's cloud on every rank (collective). Use when only rank 0 reads or generates it."""
    comm = as_comm(comm)
    return comm.bcast(cloud if comm.rank == 0 else None, root=0)


def petsc_aij(local: sp.csr_matrix, row_sizes: tuple[int, int], col_sizes: tuple[int, int],
              comm, name: str, options_prefix: str | None = None):
    """A PETSc AIJ matrix from this rank's rows (CSR with GLOBAL column indices).

    Type from the options database (``-mat_type``; AIJ = SeqAIJ/MPIAIJ by default), exact
    preallocation from the CSR (``Mat{Seq,MPI}AIJSetPreallocationCSR`` inserts the values and
    assembles). Collective over ``comm``.
    """
    PETSc = init_petsc()
    local = sp.csr_matrix(local)
    local.sort_indices()
    IntType = PETSc.IntType
    mat = PETSc.Mat().create(comm=comm)
    mat.setName(name)
    mat.setSizes((tuple(int(s) for s in row_sizes), tuple(int(s) for s in col_sizes)))
    mat.setType(PETSc.Mat.Type.AIJ)
    if options_prefix:
        mat.setOptionsPrefix(options_prefix)
    mat.setFromOptions()
    mat.setPreallocationCSR((local.indptr.astype(IntType), local.indices.astype(IntType),
                             np.ascontiguousarray(local.data, dtype=PETSc.ScalarType)))
    mat.assemble()
    return mat


def _remap_columns(A: sp.csr_matrix, new_index: np.ndarray) -> sp.csr_matrix:
    A = sp.csr_matrix(A)
    out = sp.csr_matrix((A.data.astype(np.float64), new_index[A.indices], A.indptr.copy()),
                        shape=A.shape)
    out.sort_indices()
    return out


def _split_test(test: np.ndarray | None, n_test: int | None, size: int, rank: int):
    if test is None:
        return None
    test = np.asarray(test, dtype=np.float64)
    if n_test is not None:
        if n_test < 0:
            raise ValueError(f"n_test must be >= 0, got {n_test}")
        test = test[:n_test]
    if size == 1:
        return test
    from ..partition import sfc_order, split_weighted

    # Evaluation needs no communication but a sum: any even split works; a curve split keeps
    # each rank's test points near its nodes (nice for plots), at no cost.
    o = sfc_order(test) if len(test) else np.zeros(0, np.int64)
    off = split_weighted(np.ones(len(test)), size)
    return test[np.sort(o[off[rank]:off[rank + 1]])]


def distributed_system(cloud, order: int, comm=None, specs: dict | None = None, *,
                       alpha=1.0, beta=1.0, dtype: torch.dtype = torch.float64,
                       partitioner: str = "auto", n_test: int | None = None, device="cpu",
                       partition=None, options_prefix: str | None = None,
                       explicit_transpose: bool = True) -> DiscreteSystem:
    """This rank's :class:`DiscreteSystem` with PETSc MPIAIJ operators. Collective.

    Parameters
    ----------
    cloud : PointCloud
        Identical on every rank (see :func:`bcast_cloud`); ghosts are added if missing.
    order : int
        RBF-FD order p.
    comm : MPIComm, SerialComm, mpi4py communicator or None (detected: :func:`~dtpinn_dist.comm.as_comm`)
    specs : dict, optional
        Name -> :class:`~dtpinn_dist.operators.rbffd.OperatorSpec`; default: the paper's L and B
        (Robin ``alpha d/dn + beta``).
    dtype : torch.dtype
        float64 (PETSc's scalar); float32 works through casts (vanilla PINNs).
    partitioner : str
        :func:`dtpinn_dist.partition.partition_cloud` method ('auto', 'ptscotch', 'parmetis',
        'hilbert', 'morton', 'block').
    n_test : int, optional
        Use the first ``n_test`` of ``cloud.test``; they are split over the ranks (each rank
        evaluates the error on its share; sum with ``comm.sum``).
    partition : Partition, optional
        Use this partition (must have ``comm.size`` parts) instead of computing one.
    options_prefix : str, optional
        PETSc options prefix for the matrices (default none, so ``-mat_type`` applies).

    Returns
    -------
    DiscreteSystem
        ``nodes`` = this rank's nodes in local order (owned interior, boundary, ghost; each in
        ascending cloud index), ``row_index = arange(ni + nb)``, ``boundary_index =
        arange(ni, ni + nb)``, ``interior_index = arange(ni)`` (all local), global counts, and
        ``info`` with the partition and halo figures (identical on all ranks). Each rank computes
        the RBF-FD weights of its own rows only.
    """
    from ..operators.rbffd import paper_specs, spec_matrices
    from ..partition import Partition, partition_cloud
    from .petsc_operator import PETScOperator

    comm = as_comm(comm)
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"the PETSc backend supports float64 (and float32 by casting); got "
                         f"dtype={dtype}")
    if cloud.ghost is None:  # (validated by the caller: discretize checks it once, on rank 0)
        cloud = cloud.with_ghost()
    if specs is None:
        specs = paper_specs(cloud, alpha, beta)
    PETSc = init_petsc()
    pcomm = comm.comm if isinstance(comm, MPIComm) else PETSc.COMM_SELF
    rank, size = comm.rank, comm.size
    ni, nb, n = cloud.n_interior, cloud.n_boundary, cloud.n_nodes

    if partition is None:
        partition = partition_cloud(cloud, size, method=partitioner, comm=comm, order=order)
    elif not isinstance(partition, Partition) or partition.nparts != size:
        raise ValueError(f"partition must be a Partition with {size} parts (one per rank)")
    P = partition
    rows = {"collocation": P.L_rows(rank), "boundary": P.B_rows(rank)}
    n_loc = int(P.offsets[rank + 1] - P.offsets[rank])
    ops, blocks = {}, []
    # weights for this rank's rows only (one neighbour query per row kind)
    mats = spec_matrices(cloud, order, specs, rows=rows)
    for name, spec in specs.items():
        # columns renumbered to the partition's numbering
        local = _remap_columns(mats[name], P.new_index)
        blocks.append(local)
        total = ni + nb if spec.rows == "collocation" else nb
        mat = petsc_aij(local, (len(rows[spec.rows]), total), (n_loc, n), pcomm, name,
                        options_prefix)
        ops[name] = PETScOperator(mat, dtype=dtype, device=device,
                                  explicit_transpose=explicit_transpose, name=name)

    nodes_idx = P.owned_nodes(rank)
    i_loc, b_loc = int(P.n_interior[rank]), int(P.n_boundary[rank])
    # Halo = distinct off-rank columns referenced by this rank's rows (from the CSR blocks just
    # handed to PETSc: global column indices), counted once over all operators.
    c0, c1 = int(P.offsets[rank]), int(P.offsets[rank + 1])
    cols = np.unique(np.concatenate([b.indices for b in blocks] + [np.zeros(0, np.int64)]))
    halo = int(np.count_nonzero((cols < c0) | (cols >= c1)))
    halos = comm.allgather(halo)
    mat_type = next(iter(ops.values())).mat_type if ops else None
    info = {"backend": "petsc", "order": int(order), "n_nodes": int(n), "ranks": int(size),
            "rank": int(rank), "partitioner": P.method, "owned": [int(s) for s in P.sizes()],
            "halo": [int(h) for h in halos],
            "halo_fraction": float(sum(halos) / max(n, 1)), "mat_type": mat_type,
            "partition": P}
    tags = getattr(cloud, "boundary_tags", None)
    bids = P.boundary_ids[rank]
    return DiscreteSystem(
        nodes=np.ascontiguousarray(cloud.nodes[nodes_idx]),
        row_index=np.arange(i_loc + b_loc), boundary_index=np.arange(i_loc, i_loc + b_loc),
        interior_index=np.arange(i_loc),
        normals=np.ascontiguousarray(cloud.normals[bids], dtype=np.float64),
        boundary_tags=(np.zeros(len(bids), np.int64) if tags is None
                       else np.asarray(tags, np.int64)[bids]),
        ops=ops, rows_of={name: spec.rows for name, spec in specs.items()},
        n_collocation=ni + nb, n_boundary=nb, n_interior=ni, comm=comm,
        dtype=dtype, device=torch.device(device),
        test_points=_split_test(cloud.test, n_test, size, rank), info=info)

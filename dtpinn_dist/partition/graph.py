"""Graph partitioning of the stencil adjacency graph with PETSc ``MatPartitioning``
(PT-Scotch or ParMETIS, whichever this PETSc was built with).

Vertices are the collocation units (interior nodes; boundary nodes with their ghost folded in),
edges join a unit to the units of its RBF-FD stencil (the ``n`` nearest nodes, the Laplacian's
stencil being the larger), symmetrised. The graph is built distributed: each rank computes the
stencils of one contiguous run of the Hilbert-curve order (a good initial distribution for the
partitioner), PETSc symmetrises it (``A + A^T``) and converts it to MATMPIADJ inside
``MatPartitioningApply``. The result is allgathered, so every rank holds the same assignment.

Reproducibility: the same cloud on the same number of ranks gives the same partition, run after
run and call after call. PT-Scotch is otherwise not repeatable: it draws from one process-wide
random generator whose state carries over from call to call, and (built with threads, as
Debian's 7.0 is) its threads race. :func:`scotch_deterministic` runs each partitioning with one
Scotch thread (``SCOTCH_PTHREAD_NUMBER=1``, read by Scotch at every call) after re-seeding the
generator (``SCOTCH_randomSeed`` + ``SCOTCH_randomReset`` of the Scotch library PETSc loaded).
Measured on a 1.6k-node disk at 2 ranks: without it, 4 calls in one process gave 3-4 different
partitions and launches differed; with it, all identical (also at 3 ranks). Quality is unchanged:
a 300k-node disk in 64 parts had halo/owned 18.6% and 18.7% in two runs before, 18.3% in both
runs after.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import warnings

import numpy as np
import scipy.sparse as sp

from .layout import stencil_neighbours
from .sfc import sfc_order, split_weighted

__all__ = ["stencil_graph_rows", "graph_partition", "scotch_deterministic", "SCOTCH_SEED"]

#: Seed given to PT-Scotch's random generator before every partitioning.
SCOTCH_SEED = 1

_SCOTCH_LIB = []  # [ctypes handle or None], filled on first use


def _loaded_scotch():
    """ctypes handle of the Scotch library already loaded into this process (by PETSc), or None.

    Only libraries already mapped are considered (from /proc/self/maps): a second copy found on
    disk would have its own random generator. A PETSc that links Scotch statically exports the
    symbols from libpetsc itself.
    """
    if _SCOTCH_LIB:
        return _SCOTCH_LIB[0]
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[-1].startswith("/"):
                    paths.append(fields[-1])
    except OSError:
        pass
    names = [os.path.basename(p) for p in paths]
    ranked = [p for p, n in zip(paths, names) if "scotch" in n and "err" not in n] + \
             [p for p, n in zip(paths, names) if n.startswith("libpetsc")]
    lib = None
    for path in dict.fromkeys(ranked):
        try:
            cand = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(cand, "SCOTCH_randomReset"):
            lib = cand
            break
    _SCOTCH_LIB.append(lib)
    return lib


@contextlib.contextmanager
def scotch_deterministic(seed: int = SCOTCH_SEED):
    """Run the enclosed PT-Scotch partitioning reproducibly (see the module docstring).

    Yields True when the generator could be re-seeded, False otherwise (then a warning says
    partitions may differ between runs). The caller's ``SCOTCH_PTHREAD_NUMBER`` is restored.
    """
    lib = _loaded_scotch()
    if lib is not None:
        if hasattr(lib, "SCOTCH_randomSeed"):
            lib.SCOTCH_randomSeed.argtypes = [ctypes.c_int64]  # SCOTCH_Num: 32 or 64 bits
            lib.SCOTCH_randomSeed.restype = None
            lib.SCOTCH_randomSeed(int(seed))
        lib.SCOTCH_randomReset.restype = None
        lib.SCOTCH_randomReset()
    else:
        warnings.warn("cannot reach PT-Scotch's random generator in this process: graph "
                      "partitions may differ from run to run; use method='hilbert' for "
                      "bit-reproducible runs", RuntimeWarning, stacklevel=3)
    key = "SCOTCH_PTHREAD_NUMBER"
    prev = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield lib is not None
    finally:
        if prev is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = prev


def stencil_graph_rows(cloud, units: np.ndarray, k: int, tree=None) -> np.ndarray:
    """(len(units), k) unit ids of the stencil of each unit (ghost ``j`` -> boundary unit ``j``)."""
    ni, nb = cloud.n_interior, cloud.n_boundary
    nbr = stencil_neighbours(cloud.nodes, units, k, tree)  # unit u is node u (interior, boundary)
    return np.where(nbr >= ni + nb, nbr - nb, nbr)


def graph_partition(cloud, nparts: int, method: str = "ptscotch", comm=None, order: int = 4,
                    weights=None, curve: str = "hilbert") -> np.ndarray:
    """Part (0..nparts-1) of each collocation unit (``Ni + Nb`` entries). Collective over ``comm``
    (an mpi4py communicator, or None for one process).

    ``weights`` are accepted for interface symmetry but not passed on: petsc4py does not expose
    ``MatPartitioningSetVertexWeights``; the imbalance this leaves is the boundary share of the
    nodes (a boundary unit carries a ghost), a few percent.
    PETSc options of the partitioner (``-mat_partitioning_ptscotch_imbalance`` ...) apply.
    PT-Scotch runs under :func:`scotch_deterministic`: same cloud, same rank count, same
    partition.
    """
    from ..comm import init_petsc
    from . import stencil_size

    PETSc = init_petsc()
    if method not in ("ptscotch", "parmetis"):
        raise ValueError(f"graph method must be 'ptscotch' or 'parmetis', got {method!r}")
    if not PETSc.Sys.hasExternalPackage(method):
        raise ValueError(f"this PETSc was built without {method}; use method='auto' or 'hilbert'")
    pcomm = PETSc.COMM_SELF if comm is None else comm
    rank, size = pcomm.Get_rank(), pcomm.Get_size()
    units = cloud.collocation
    U = len(units)
    order_sfc = sfc_order(units, curve)
    pos = np.empty(U, dtype=np.int64)
    pos[order_sfc] = np.arange(U, dtype=np.int64)
    off = split_weighted(np.ones(U), size)
    mine = order_sfc[off[rank]:off[rank + 1]]
    m = len(mine)

    nbr = stencil_graph_rows(cloud, mine, stencil_size(order, 2, cloud.dim))
    cols = pos[nbr]  # graph vertex ids = positions on the curve
    indptr = np.arange(0, m * nbr.shape[1] + 1, nbr.shape[1], dtype=np.int64)
    A = sp.csr_matrix((np.ones(cols.size), cols.ravel(), indptr), shape=(m, U))
    A.sum_duplicates()
    A.sort_indices()
    IntType = PETSc.IntType
    G = PETSc.Mat().createAIJ(size=((m, U), (m, U)), comm=pcomm,
                              csr=(A.indptr.astype(IntType), A.indices.astype(IntType), A.data))
    G.assemble()
    # Partitioners need an undirected graph; k-nearest-neighbour stencils are not symmetric.
    S = G.transpose(PETSc.Mat())  # a new Mat: transpose() without one works in place
    S.axpy(1.0, G, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)

    part = PETSc.MatPartitioning().create(comm=pcomm)
    part.setAdjacency(S)
    part.setType(method)
    # petsc4py has no MatPartitioningSetNParts: pass it through the options database, restoring
    # whatever the user had there.
    opts = PETSc.Options()
    key = "mat_partitioning_nparts"
    prev = opts.getString(key) if opts.hasName(key) else None
    opts.setValue(key, str(int(nparts)))
    try:
        part.setFromOptions()
    finally:
        if prev is None:
            opts.delValue(key)
        else:
            opts.setValue(key, prev)
    iset = PETSc.IS()
    with scotch_deterministic() if method == "ptscotch" else contextlib.nullcontext():
        part.apply(iset)
    local = np.asarray(iset.getIndices(), dtype=np.int64).copy()
    for obj in (iset, part, S, G):
        obj.destroy()
    parts = np.concatenate(pcomm.allgather(local)) if size > 1 else local
    if parts.shape != (U,):
        raise RuntimeError(f"partitioner returned {parts.shape} entries for {U} vertices")
    unit_part = np.empty(U, dtype=np.int64)
    unit_part[order_sfc] = parts
    return unit_part

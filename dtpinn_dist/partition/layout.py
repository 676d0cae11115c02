"""Ownership of nodes by ranks, the renumbering that makes each rank's nodes contiguous, and the
halo (off-rank columns) each rank's operator rows reference.

Partition units are the collocation nodes: every interior node, and every boundary node together
with its ghost (a ghost has no operator row and exists only for its boundary node's stencils, so it
always lives on that rank). Within a rank the nodes keep the serial layout
(interior, boundary, ghost; each in ascending cloud index), so the local ``row_index`` /
``boundary_index`` / ``interior_index`` are ranges exactly as in the serial system.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

__all__ = ["Partition", "partition_from_units", "halo_report", "stencil_pattern"]


@dataclass
class Partition:
    """A partition of ``cloud.nodes`` (interior, boundary, ghost) into ``nparts`` pieces.

    Attributes
    ----------
    nparts : int
    owner : (n_nodes,) int64
        Part owning each node, in ``cloud.nodes`` order.
    perm : (n_nodes,) int64
        The renumbering permutation, ``perm[new] = old``: the cloud index of each node in the
        new global numbering.
    new_index : (n_nodes,) int64
        ``new_index[old] = new`` (inverse of ``perm``); maps operator columns.
    offsets : (nparts + 1,) int64
        Part ``r`` owns new indices ``offsets[r]:offsets[r+1]``.
    n_interior, n_boundary, n_ghost : (nparts,) int64
        Counts per part; part r's block is interior, boundary, ghost in that order.
    interior_ids, boundary_ids : list of int64 arrays
        Per part, the owned interior indices (0..Ni-1) and boundary indices (0..Nb-1) in local
        order. Row ``i`` of the operator L is interior ``i`` (i < Ni) or boundary ``i - Ni``.
    method : str
        Which partitioner produced it ('single', 'ptscotch', 'parmetis', 'hilbert', 'morton', ...).
    """

    nparts: int
    owner: np.ndarray
    perm: np.ndarray
    new_index: np.ndarray
    offsets: np.ndarray
    n_interior: np.ndarray
    n_boundary: np.ndarray
    n_ghost: np.ndarray
    interior_ids: list
    boundary_ids: list
    n_interior_total: int
    n_boundary_total: int
    method: str = "unknown"
    info: dict = field(default_factory=dict)

    # ---- per-part views ------------------------------------------------------------------
    def owned_nodes(self, r: int) -> np.ndarray:
        """Cloud indices of part ``r``'s nodes in local order (interior, boundary, ghost)."""
        return self.perm[self.offsets[r]:self.offsets[r + 1]]

    def L_rows(self, r: int) -> np.ndarray:
        """Rows of the global (serial-numbered) L owned by part ``r``, in local row order."""
        return np.concatenate([self.interior_ids[r],
                               self.n_interior_total + self.boundary_ids[r]]).astype(np.int64)

    def B_rows(self, r: int) -> np.ndarray:
        """Rows of the global (serial-numbered) B owned by part ``r``, in local row order."""
        return np.asarray(self.boundary_ids[r], dtype=np.int64)

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def summary(self) -> str:
        s = self.sizes()
        return (f"Partition(method={self.method}, nparts={self.nparts}, nodes/part "
                f"min={s.min()} max={s.max()} mean={s.mean():.1f}, imbalance={s.max() / max(s.mean(), 1):.3f})")


def partition_from_units(unit_part: np.ndarray, n_interior: int, n_boundary: int, n_ghost: int,
                         nparts: int, method: str = "unknown") -> Partition:
    """Build the :class:`Partition` from the part of each collocation unit.

    ``unit_part`` has ``Ni + Nb`` entries: interior nodes then boundary nodes; ghost ``j`` goes
    with boundary node ``j`` (``n_ghost`` must be 0 or ``Nb``).
    """
    unit_part = np.asarray(unit_part, dtype=np.int64)
    ni, nb = int(n_interior), int(n_boundary)
    if unit_part.shape != (ni + nb,):
        raise ValueError(f"unit_part has shape {unit_part.shape}, expected ({ni + nb},)")
    if n_ghost not in (0, nb):
        raise ValueError(f"{n_ghost} ghost nodes for {nb} boundary nodes: need one per boundary node or none")
    if unit_part.size and (unit_part.min() < 0 or unit_part.max() >= nparts):
        raise ValueError(f"unit_part entries must be in [0, {nparts})")
    part_i, part_b = unit_part[:ni], unit_part[ni:]
    owner = np.concatenate([part_i, part_b, part_b if n_ghost else part_b[:0]])
    # Stable sort by (part, kind, cloud index): within a part interior, boundary, ghost,
    # which is exactly the order of cloud.nodes restricted to the part.
    perm = np.argsort(owner, kind="stable").astype(np.int64)
    new_index = np.empty_like(perm)
    new_index[perm] = np.arange(perm.size, dtype=np.int64)
    counts = np.bincount(owner, minlength=nparts).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_i = np.bincount(part_i, minlength=nparts).astype(np.int64)
    n_b = np.bincount(part_b, minlength=nparts).astype(np.int64)
    n_g = n_b.copy() if n_ghost else np.zeros(nparts, dtype=np.int64)
    oi = np.argsort(part_i, kind="stable")
    ob = np.argsort(part_b, kind="stable")
    interior_ids = np.split(oi.astype(np.int64), np.cumsum(n_i)[:-1])
    boundary_ids = np.split(ob.astype(np.int64), np.cumsum(n_b)[:-1])
    return Partition(nparts=int(nparts), owner=owner, perm=perm, new_index=new_index,
                     offsets=offsets, n_interior=n_i, n_boundary=n_b, n_ghost=n_g,
                     interior_ids=interior_ids, boundary_ids=boundary_ids,
                     n_interior_total=ni, n_boundary_total=nb, method=method)


def stencil_neighbours(nodes: np.ndarray, rows: np.ndarray, k: int, tree=None) -> np.ndarray:
    """``(len(rows), k)`` indices of the ``k`` nearest of ``nodes`` to each ``nodes[rows[i]]``
    (itself included): the RBF-FD stencils, as the weights module chooses them."""
    from scipy.spatial import cKDTree

    tree = cKDTree(nodes) if tree is None else tree
    k = min(int(k), len(nodes))
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, k), dtype=np.int64)
    _, nbr = tree.query(nodes[rows], k=k)
    return np.asarray(nbr, dtype=np.int64).reshape(len(rows), k)


def stencil_pattern(nodes: np.ndarray, rows: np.ndarray, k: int, tree=None) -> sp.csr_matrix:
    """0/1 pattern of an RBF-FD operator: row ``i`` references the stencil of ``nodes[rows[i]]``."""
    nbr = stencil_neighbours(nodes, rows, k, tree)
    if nbr.shape[0] == 0:
        return sp.csr_matrix((0, len(nodes)))
    k = nbr.shape[1]
    indptr = np.arange(0, nbr.shape[0] * k + 1, k, dtype=np.int64)
    return sp.csr_matrix((np.ones(nbr.size), nbr.ravel(), indptr), shape=(len(rows), len(nodes)))


def halo_report(partition: Partition, patterns: list[tuple[sp.csr_matrix, np.ndarray]]) -> dict:
    """Owned / halo counts per part (serial, no communication).

    Parameters
    ----------
    patterns : list of (A, row_nodes)
        Operators in cloud numbering (columns ``cloud.nodes``) and, for each row, the cloud node
        it belongs to: ``(L, arange(Ni + Nb))`` and ``(B, Ni + arange(Nb))``. A row lives on the
        part that owns its node.

    Returns
    -------
    dict with ``owned`` and ``halo`` (per-part int arrays: nodes owned; distinct off-part columns
    referenced by the part's rows of any operator, i.e. the entries MatMult receives),
    ``neighbours`` (parts each part receives from), ``halo_fraction`` (total halo / total owned)
    and ``max_halo_fraction`` (worst part).
    """
    P = partition
    owner = P.owner
    n = np.int64(len(owner))
    keys = []
    for A, row_nodes in patterns:
        A = sp.csr_matrix(A)
        row_part = owner[np.asarray(row_nodes, dtype=np.int64)]
        rr = np.repeat(row_part, np.diff(A.indptr))
        off = owner[A.indices] != rr
        keys.append(rr[off] * n + A.indices[off])
    return halo_stats(keys, n, owner, P)


def halo_stats(keys: list[np.ndarray], n: int, owner: np.ndarray, P: Partition) -> dict:
    """Halo summary from encoded ``part * n + column`` keys of off-part column references."""
    # (part, column) pairs, each once.
    pairs = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    part_of_pair, col_of_pair = np.divmod(pairs, n)
    owned = P.sizes()
    halo = np.bincount(part_of_pair, minlength=P.nparts).astype(np.int64)
    nb_pairs = np.unique(part_of_pair * P.nparts + owner[col_of_pair])
    neighbours = np.bincount(nb_pairs // P.nparts, minlength=P.nparts).astype(np.int64)
    frac = halo / np.maximum(owned, 1)
    return {"owned": owned, "halo": halo, "neighbours": neighbours,
            "halo_fraction": float(halo.sum() / max(int(owned.sum()), 1)),
            "max_halo_fraction": float(frac.max()) if frac.size else 0.0}

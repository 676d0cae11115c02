"""A large cloud read by slices and spread over the ranks: no rank ever holds the whole cloud.

:func:`read_distributed` (collective):

1. rank ``r`` reads the ``r``-th of ``size`` equal runs of the collocation nodes (interior, then
   boundary, with their normals, ghosts and tags) from an ``.npz`` or HDF5 file
   (:class:`~dtpinn_dist.geometry.slices.CloudFile`);
2. the ranks Hilbert-partition these nodes among themselves: keys scaled by the whole cloud's
   bounding box (one allgather), a sample sort by (key, node index) (one all-to-all), then the
   cuts of :func:`~dtpinn_dist.partition.split_weighted` (boundary nodes weigh 2) found on the
   sorted runs (one allgather) and one more all-to-all. The parts are exactly those of
   ``partition_cloud(cloud, size, method="hilbert")`` on the whole cloud, and the numbering is
   :func:`~dtpinn_dist.partition.partition_from_units`' (owned interior, boundary, ghost);
3. each rank receives its halo: every other rank's nodes within ``rho_q`` of its owned rows'
   bounding box, where ``rho_q`` is the largest distance from one of its rows to its ``n``-th
   nearest owned node (``n`` the largest stencil). A row's true ``n`` nearest nodes are no
   further than that, so the halo holds every node of its stencils (one all-to-all).

What a rank holds at any time: its read slice (1/size of the file) and the records in flight to
and from it (about one share), then its share plus halo. Rank 0 holds nothing more than the
others. The whole-cloud checks of :meth:`PointCloud.validate` need the whole cloud and are not
run here (shapes and finite values are checked per slice).

:func:`local_matrices` assembles the paper's operators (L at the owned collocation rows, Robin B
at the owned boundary rows) from share + halo, with global column numbers of the partition:
the same matrices, bit for bit, as assembling those rows on the whole cloud.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..comm import as_comm
from ..geometry.cloud import GHOST_OFFSET
from ..geometry.slices import CloudFile
from ..partition import BOUNDARY_WEIGHT, hilbert_keys

__all__ = ["LocalCloud", "read_distributed", "local_matrices"]


@dataclass
class LocalCloud:
    """This rank's share of a cloud (owned interior, boundary, ghost nodes, in that order, each
    by ascending cloud index) followed by its halo.

    ``gid``: index of each node in ``cloud.nodes`` numbering (interior ``i``, boundary
    ``Ni + j``, ghost ``Ni + Nb + j``); ``new_index``: its number in the partition's global
    numbering (the PETSc rows / columns); ``offsets``: part ``r`` owns new numbers
    ``offsets[r]:offsets[r+1]``."""

    dim: int
    n_interior_total: int
    n_boundary_total: int
    n_ghost_total: int
    nodes: np.ndarray
    gid: np.ndarray
    new_index: np.ndarray
    n_interior: int
    n_boundary: int
    n_ghost: int
    normals: np.ndarray
    boundary_tags: np.ndarray | None
    offsets: np.ndarray

    @property
    def n_owned(self) -> int:
        return self.n_interior + self.n_boundary + self.n_ghost

    @property
    def n_halo(self) -> int:
        return len(self.gid) - self.n_owned

    @property
    def n_nodes_total(self) -> int:
        return self.n_interior_total + self.n_boundary_total + self.n_ghost_total


def _alltoall(comm, parts: list) -> list:
    mcomm = getattr(comm, "comm", None)
    return parts if mcomm is None else mcomm.alltoall(parts)


def _read_slice(path, rank: int, size: int, ghost: bool):
    """This rank's run of collocation nodes: (gid, points, normals, ghosts, tags, totals)."""
    with CloudFile(path) as f:
        missing = [k for k in ("interior", "boundary", "normals") if f.shape(k) is None]
        if missing:
            raise ValueError(f"{f.path} lacks arrays {missing}; a point-cloud file needs "
                             "interior, boundary, normals -- see docs/point_clouds.md")
        si, sb, sn = f.shape("interior"), f.shape("boundary"), f.shape("normals")
        d = si[1] if len(si) == 2 else 0
        if d not in (2, 3) or sb != (sb[0], d) or sn != sb:
            raise ValueError(f"{f.path}: interior {si}, boundary {sb}, normals {sn}: need (N, d) "
                             "arrays with d = 2 or 3 and one normal per boundary node")
        sg = f.shape("ghost")
        if sg is not None and sg != sb:
            raise ValueError(f"{f.path}: ghost has shape {sg}; need one per boundary node {sb}")
        ni, nb = si[0], sb[0]
        u = ni + nb
        u0, u1 = rank * u // size, (rank + 1) * u // size
        i0, i1 = min(u0, ni), min(u1, ni)
        b0, b1 = max(u0, ni) - ni, max(u1, ni) - ni
        pts = np.vstack([f.rows("interior", i0, i1), f.rows("boundary", b0, b1)])
        nrm = f.rows("normals", b0, b1)
        gst = f.rows("ghost", b0, b1) if sg is not None else None
        tags = f.rows("boundary_tags", b0, b1) if f.shape("boundary_tags") is not None else None
        for name, a in (("points", pts), ("normals", nrm), ("ghost", gst)):
            if a is not None and not (a.dtype.kind == "f" and np.isfinite(a).all()):
                raise ValueError(f"{f.path}: {name} rows must be finite floats (dtype {a.dtype})")
    pts, nrm = pts.astype(np.float64), nrm.astype(np.float64)
    if gst is None and ghost:  # PointCloud.with_ghost's formula, h = N^(-1/d)
        h = float(u ** (-1.0 / d))
        gst = pts[i1 - i0:] + float(GHOST_OFFSET) * h * nrm
    gid = np.concatenate([np.arange(i0, i1), ni + np.arange(b0, b1)]).astype(np.int64)
    return gid, pts, nrm, gst, tags, (ni, nb, d)


def _weighted_cuts(w: np.ndarray, comm, size: int) -> np.ndarray:
    """:func:`~dtpinn_dist.partition.split_weighted` offsets of the globally sorted sequence
    whose runs (in rank order) are the ranks' ``w``, found without gathering it.

    Run ``r`` knows the running sums ``cs`` at global positions ``g0 .. g0 + n`` (the last one
    shared with the next run). For each target every run proposes ``(first position with
    cs >= target, the cut)``; the smallest proposal is the serial answer (a run whose first
    position is the crossing cannot see the sum before it, but the run before proposes the same
    first position with the nearest-sum rule applied, a cut <= it)."""
    counts = np.array(comm.allgather((len(w), float(w.sum()))))
    rank = comm.rank
    g0 = int(counts[:rank, 0].sum())
    total_n, total_w = int(counts[:, 0].sum()), float(counts[:, 1].sum())
    cs = float(counts[:rank, 1].sum()) + np.concatenate([[0.0], np.cumsum(w)])
    targets = total_w * np.arange(1, size) / size
    big = np.iinfo(np.int64).max
    prop = np.full((size - 1, 2), big, dtype=np.int64)
    for k, t in enumerate(targets):
        j = int(np.searchsorted(cs, t, side="left"))
        if j < len(cs):
            prev = max(j - 1, 0)
            prop[k] = g0 + j, g0 + (prev if abs(cs[prev] - t) < abs(cs[j] - t) else j)
    allp = np.array(comm.allgather(prop))  # (ranks, size - 1, 2)
    cuts = np.array([min(map(tuple, allp[:, k]))[1] for k in range(size - 1)], dtype=np.int64)
    cuts = np.where(cuts == big, total_n, cuts)
    offsets = np.concatenate([[0], np.clip(cuts, 0, total_n), [total_n]]).astype(np.int64)
    return np.maximum.accumulate(offsets)


def _exchange(dest: np.ndarray, size: int, comm, *arrays) -> list:
    """Send row ``i`` of every array to rank ``dest[i]``; rows received in source-rank order."""
    parts = [tuple(a[dest == q] for a in arrays) for q in range(size)]
    got = _alltoall(comm, parts)
    return [np.concatenate([g[k] for g in got]) for k in range(len(arrays))]


def read_distributed(path, comm=None, order: int = 4, theta: int = 2,
                     ghost: bool = True) -> LocalCloud:
    """Read ``path`` (``.npz`` / HDF5) by slices into this rank's :class:`LocalCloud` (share
    plus halo; see the module docstring). Collective. ``order`` and ``theta`` (the highest
    operator order) set the stencil size the halo must cover."""
    from ..operators.rbffd import stencil_params

    comm = as_comm(comm)
    rank, size = comm.rank, comm.size
    # a bad file may fail on one rank only (its slice truncated): every rank raises the same
    # one-line error instead of the others waiting in the next collective
    try:
        got, msg = _read_slice(path, rank, size, ghost), None
    except ValueError as exc:
        got, msg = None, str(exc)
    first = next((m for m in comm.allgather(msg) if m), None)
    if first:
        raise ValueError(first)
    gid, pts, nrm, gst, tags, (ni, nb, d) = got
    nbl = len(nrm)
    # per collocation node: its normal / ghost / tag (zeros for interior nodes)
    extra = np.zeros((len(gid), 2 * d))
    extra[len(gid) - nbl:, :d] = nrm
    if gst is not None:
        extra[len(gid) - nbl:, d:] = gst
    tg = np.zeros(len(gid), np.int64)
    if tags is not None:
        tg[len(gid) - nbl:] = tags

    # ---- Hilbert keys with the whole cloud's box, sample sort by (key, gid)
    boxes = comm.allgather((pts.min(0) if len(pts) else np.full(d, np.inf),
                            pts.max(0) if len(pts) else np.full(d, -np.inf)))
    box = (np.min([b[0] for b in boxes], 0), np.max([b[1] for b in boxes], 0))
    key = hilbert_keys(pts, box=box)
    o = np.lexsort((gid, key))
    samples = key[o][np.linspace(0, len(o) - 1, size).astype(np.int64)] if len(o) else key[:0]
    allsamp = np.sort(np.concatenate(comm.allgather(samples)))
    split = allsamp[np.linspace(0, len(allsamp) - 1, size + 1).astype(np.int64)[1:-1]] \
        if len(allsamp) else allsamp
    dest = np.searchsorted(split, key, side="left").astype(np.int64)
    key, gid, pts, extra, tg = _exchange(dest, size, comm, key, gid, pts, extra, tg)
    o = np.lexsort((gid, key))
    key, gid, pts, extra, tg = key[o], gid[o], pts[o], extra[o], tg[o]

    # ---- exact weighted cuts of the sorted sequence, then each record to its part
    w = np.where(gid < ni, 1.0, BOUNDARY_WEIGHT)
    offsets = _weighted_cuts(w, comm, size)
    g0 = int(np.sum(comm.allgather(len(gid))[:rank]))
    dest = np.searchsorted(offsets, g0 + np.arange(len(gid)), side="right") - 1
    gid, pts, extra, tg = _exchange(dest, size, comm, gid, pts, extra, tg)

    # ---- owned nodes in partition_from_units' local order
    o = np.argsort(gid, kind="stable")
    gid, pts, extra, tg = gid[o], pts[o], extra[o], tg[o]
    isb = gid >= ni
    n_i, n_b = int((~isb).sum()), int(isb.sum())
    has_ghost = gst is not None  # the same on every rank (one file, one flag)
    owned_pts = [pts, extra[isb, d:]] if has_ghost else [pts]
    owned_gid = [gid, gid[isb] + nb] if has_ghost else [gid]
    owned_pts, owned_gid = np.vstack(owned_pts), np.concatenate(owned_gid)
    n_own = len(owned_gid)
    counts = np.array(comm.allgather(n_own), dtype=np.int64)
    part_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    owned_new = part_off[rank] + np.arange(n_own, dtype=np.int64)

    # ---- halo: other ranks' nodes within rho_q of rank q's row box
    from scipy.spatial import cKDTree

    n_st = stencil_params(order, theta, d)[2]
    rows = owned_pts[:n_i + n_b]
    if len(rows) and n_own >= n_st:
        kth = cKDTree(owned_pts).query(rows, k=[n_st])[0][:, 0]
        rho = float(kth.max())
    else:
        rho = np.inf if len(rows) else -np.inf
    info = comm.allgather((rows.min(0) if len(rows) else np.full(d, np.inf),
                           rows.max(0) if len(rows) else np.full(d, -np.inf), rho))
    send = []
    for q, (lo, hi, rq) in enumerate(info):
        if q == rank or not rq >= 0:
            send.append((owned_gid[:0], owned_new[:0], owned_pts[:0]))
            continue
        gap = np.maximum(np.maximum(lo - owned_pts, owned_pts - hi), 0.0)
        near = np.sqrt(np.einsum("ij,ij->i", gap, gap)) <= rq
        send.append((owned_gid[near], owned_new[near], owned_pts[near]))
    got = _alltoall(comm, send)
    h_gid = np.concatenate([g[0] for g in got])
    o = np.argsort(h_gid, kind="stable")
    h_gid, h_new = h_gid[o], np.concatenate([g[1] for g in got])[o]
    h_pts = np.concatenate([g[2] for g in got])[o]
    return LocalCloud(
        dim=d, n_interior_total=ni, n_boundary_total=nb, n_ghost_total=nb if has_ghost else 0,
        nodes=np.vstack([owned_pts, h_pts]), gid=np.concatenate([owned_gid, h_gid]),
        new_index=np.concatenate([owned_new, h_new]), n_interior=n_i, n_boundary=n_b,
        n_ghost=n_b if has_ghost else 0, normals=np.ascontiguousarray(extra[isb, :d]),
        boundary_tags=tg[isb] if tags is not None else None, offsets=part_off)


def local_matrices(local: LocalCloud, order: int, alpha=1.0, beta=1.0) -> dict:
    """The paper's L (Laplacian, rows: owned interior + boundary) and B (Robin ``alpha d/dn +
    beta``, rows: owned boundary) from share + halo: CSR with global column numbers of the
    partition (``local.new_index``). Local, no communication."""
    from scipy.spatial import cKDTree

    from ..operators.rbffd import make_operator, rbffd_weights_many

    nodes = local.nodes
    tree = cKDTree(nodes)
    nrows = local.n_interior + local.n_boundary
    bsel = slice(local.n_interior, nrows)
    out = {}
    for name, centers, op, ids in (
            ("L", nodes[:nrows], make_operator("laplacian", local.dim), local.gid[:nrows]),
            ("B", nodes[bsel], make_operator("robin", local.dim, normals=local.normals,
                                             alpha=alpha, beta=beta), local.gid[bsel])):
        (idx, w), = rbffd_weights_many(nodes, centers, [op], order, tree=tree, center_ids=ids)
        cols = local.new_index[idx]
        o = np.argsort(cols, axis=1)
        C, n = idx.shape
        A = sp.csr_matrix((np.take_along_axis(w, o, 1).ravel(), np.take_along_axis(cols, o, 1)
                           .ravel(), np.arange(0, C * n + 1, n)),
                          shape=(C, local.n_nodes_total))
        out[name] = A
    return out

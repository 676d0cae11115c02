"""The :class:`PointCloud` container: interior, boundary (with normals and part tags), ghost and
test nodes, and the checks that refuse a cloud that would give wrong operators."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["PointCloud", "GHOST_OFFSET", "DUPLICATE_RTOL", "CLOSE_RTOL", "OUTSIDE_RTOL"]

#: Authors' ghost offset: ghost = boundary + 0.25 * h * normal.
GHOST_OFFSET = 0.25

#: Two nodes closer than this times the median nearest-neighbour spacing are duplicates. Relative,
#: so a cloud of any scale (coordinates ~1e-14 or ~1e6) is judged alike.
DUPLICATE_RTOL = 1e-12

#: Two nodes closer than this times the median spacing are refused: RBF-FD weights grow like
#: 1/distance^2 (nodes 1e-9 apart gave weights of 4e9). Measured minimum / median
#: nearest-neighbour distance: 0.48 on every node set of the authors' three .mat files, 0.53 on
#: generated 3D clouds, 0.7 in 2D; a ghost sits about 0.13 spacings from its boundary node.
#: 0.02 leaves a factor > 6 below the closest legitimate pair.
CLOSE_RTOL = 0.02

#: An interior node further than this times the local boundary spacing on the outer side of the
#: tangent planes of all three of its nearest boundary nodes is outside the domain. Measured
#: largest value on legitimate clouds: -0.27 (authors' sphere), -0.7 (generated L-shape, its
#: re-entrant corner included), 0.0 (generated box: interior nodes may touch a face between
#: boundary nodes). A node at a ghost's place is 0.14 out: :meth:`PointCloud.with_ghost` finds it.
OUTSIDE_RTOL = 0.25

#: Neighbours used by the checks: k nearest interior nodes of a boundary node (normal side);
#: k nearest boundary nodes of an interior node (outside); k nearest nodes of an interior node
#: (links of the interior-connectivity check).
_K_INWARD = 8
_K_OUTSIDE = 3
_K_GRAPH = 4

#: Nodes sampled (evenly strided) to estimate the median nearest-neighbour spacing.
_SPACING_SAMPLE = 20000

#: Largest dense occupancy grid (cells per interior node) of the quick connectivity pass.
_MAX_GRID_PER_POINT = 16


def _is_int_array(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_


def _near_cells(points: np.ndarray, anchors: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                cell: float) -> np.ndarray:
    """Mask of ``points`` lying in a cell of side ``cell`` (a grid over [lo, hi]) that is, or
    touches, a cell holding one of ``anchors``: a superset of the points within ``cell`` of an
    anchor, found by hashing cell indices (no dense grid, no distance computation)."""
    d = points.shape[1]
    if not float(np.prod(np.floor((hi - lo) / cell) + 1)) < 2.0 ** 62:  # keys would overflow
        return np.ones(len(points), dtype=bool)
    shape = np.floor((hi - lo) / cell).astype(np.int64) + 1
    radix = np.concatenate([np.cumprod(shape[::-1])[::-1][1:], [1]]).astype(np.int64)

    def cells(x):
        return np.clip(np.floor((x - lo) / cell).astype(np.int64), 0, shape - 1)

    ca = cells(anchors)
    offsets = np.stack(np.meshgrid(*([np.arange(-1, 2)] * d), indexing="ij"), -1).reshape(-1, d)
    around = np.clip(ca[:, None, :] + offsets[None], 0, shape - 1).reshape(-1, d)
    return np.isin(cells(points) @ radix, np.unique(around @ radix))


def _cell_components(points: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     cell: float) -> np.ndarray:
    """Component label of every point when points in the same or adjacent (3^d) cells of side
    ``cell`` are joined. A dense occupancy grid labelled by ``scipy.ndimage.label`` when it has
    at most ``_MAX_GRID_PER_POINT`` cells per point, else cell indices are hashed (one
    vectorised pass per neighbour offset)."""
    d = points.shape[1]
    ncells = float(np.prod(np.floor((hi - lo) / cell) + 1))
    if not ncells < 2.0 ** 62:  # cell indices would not fit one int64 key: every point apart
        return np.arange(len(points))
    shape = np.floor((hi - lo) / cell).astype(np.int64) + 1
    c = np.clip(np.floor((points - lo) / cell).astype(np.int64), 0, shape - 1)
    if ncells <= _MAX_GRID_PER_POINT * max(len(points), 1):
        from scipy import ndimage

        grid = np.zeros(tuple(int(v) for v in shape), dtype=bool)
        grid[tuple(c.T)] = True
        labels, _ = ndimage.label(grid, structure=np.ones((3,) * d, dtype=bool))
        return labels[tuple(c.T)]
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    radix = np.concatenate([np.cumprod(shape[::-1])[::-1][1:], [1]]).astype(np.int64)
    keys, first, inv = np.unique(c @ radix, return_index=True, return_inverse=True)
    cells = c[first]
    src, dst = [], []
    for off in np.stack(np.meshgrid(*([np.arange(-1, 2)] * d), indexing="ij"), -1).reshape(-1, d):
        if not off.any() or tuple(off) < (0,) * d:  # each undirected pair once
            continue
        nbr = cells + off
        ok = np.all((nbr >= 0) & (nbr < shape), axis=1)
        q = nbr[ok] @ radix
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        hit = keys[pos] == q
        src.append(np.flatnonzero(ok)[hit])
        dst.append(pos[hit])
    src, dst = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(len(keys),) * 2)
    return connected_components(graph, directed=False)[1][inv.ravel()]


def _unjoined(label: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Indices whose component holds no ``near`` point."""
    reached = np.zeros(int(label.max()) + 1, dtype=bool)
    reached[label[near]] = True
    return np.flatnonzero(~reached[label])


@dataclass(repr=False)
class PointCloud:
    """Nodes of a DT-PINN discretisation.

    Parameters
    ----------
    interior : (Ni, d) float64 array
    boundary : (Nb, d) float64 array
    normals : (Nb, d) float64 array
        Unit outward normals at the boundary nodes.
    ghost : (Nb, d) float64 array or None
        One ghost node per boundary node, outside the domain (see :meth:`with_ghost`).
    test : (Nt, d) float64 array or None
        An independent set of evaluation points (interior and boundary).
    boundary_tags : (Nb,) int64 array or None
        The boundary part of each boundary node (a rectangle's sides, an annulus' two circles);
        None means one part, tag 0.
    tag_names : dict str -> int or sequence of str, optional
        Names of the parts (a sequence names tag ``i`` by its entry ``i``, ``""`` for none).
        Default ``{"boundary": 0}`` without tags, none with tags; a tag without a name is called
        ``"part<tag>"`` (:attr:`parts`).

    Notes
    -----
    The column ordering of every differentiation matrix is :attr:`nodes`:
    interior, then boundary, then ghost. Every method that selects or reorders boundary nodes
    (:meth:`subset`, :meth:`with_ghost`, the loaders and writers) carries the tags along.
    """

    interior: np.ndarray
    boundary: np.ndarray
    normals: np.ndarray
    ghost: np.ndarray | None = None
    test: np.ndarray | None = None
    boundary_tags: np.ndarray | None = None
    tag_names: dict | None = None

    def __post_init__(self):
        # fp64 everywhere; leave shape checking to validate() so the message is clear.
        for name in ("interior", "boundary", "normals", "ghost", "test"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, np.asarray(v, dtype=np.float64))
        if self.boundary_tags is not None:
            t = np.asarray(self.boundary_tags)
            # integers become int64; anything else stays as given for validate() to name
            self.boundary_tags = t.astype(np.int64) if _is_int_array(t) else t
        names = self.tag_names
        if names is None:
            self.tag_names = {"boundary": 0} if self.boundary_tags is None else {}
        elif isinstance(names, dict):
            self.tag_names = dict(names)
        elif isinstance(names, (list, tuple, np.ndarray)):
            # the .npz convention: names[tag], "" for an unnamed tag
            self.tag_names = {str(n): i for i, n in enumerate(np.asarray(names).ravel().tolist())
                              if str(n)}

    # ------------------------------------------------------------------ sizes
    @property
    def dim(self) -> int:
        """Spatial dimension d."""
        return int(self.interior.shape[1])

    @property
    def n_interior(self) -> int:
        return int(self.interior.shape[0])

    @property
    def n_boundary(self) -> int:
        return int(self.boundary.shape[0])

    @property
    def n_ghost(self) -> int:
        return 0 if self.ghost is None else int(self.ghost.shape[0])

    @property
    def n_nodes(self) -> int:
        """Number of columns of L and B: Ni + Nb + Ng."""
        return self.n_interior + self.n_boundary + self.n_ghost

    @property
    def h(self) -> float:
        """Authors' spacing h = N^(-1/d) with N = Ni + Nb."""
        return float((self.n_interior + self.n_boundary) ** (-1.0 / self.dim))

    @property
    def nodes(self) -> np.ndarray:
        """All nodes, stacked interior, boundary, ghost (the column ordering of L and B)."""
        parts = [self.interior, self.boundary]
        if self.ghost is not None:
            parts.append(self.ghost)
        return np.vstack(parts)

    @property
    def collocation(self) -> np.ndarray:
        """Interior then boundary nodes (the row ordering of L)."""
        return np.vstack([self.interior, self.boundary])

    # ------------------------------------------------------------------ boundary parts
    @property
    def tags(self) -> np.ndarray:
        """(Nb,) int64: the part tag of every boundary node (zeros when untagged)."""
        if self.boundary_tags is None:
            return np.zeros(self.n_boundary, dtype=np.int64)
        self._check_tags()
        return self.boundary_tags

    def _names(self) -> dict:
        """name -> tag for every named part and every tag that occurs (unnamed: 'part<t>')."""
        self._check_tags()
        names = {str(k): int(v) for k, v in self.tag_names.items()}
        named = set(names.values())
        present = np.unique(self.tags) if self.n_boundary else np.zeros(0, np.int64)
        for t in present:
            t = int(t)
            if t not in named:
                auto = f"part{t}"
                if auto in names:
                    raise ValueError(f"boundary tag {t} has no name and its default name {auto!r} "
                                     f"is taken by tag {names[auto]}; name tag {t} in tag_names")
                names[auto] = t
        return names

    @property
    def parts(self) -> list[tuple[str, int]]:
        """The boundary parts as ``(name, tag)``, sorted by tag (named parts with no node
        included)."""
        return sorted(self._names().items(), key=lambda kv: (kv[1], kv[0]))

    def part_index(self, part) -> np.ndarray:
        """Boundary indices (0..Nb-1, ascending int64) of the nodes of one part.

        Parameters
        ----------
        part : str or int
            A part name (``"left"``, ``"inner"``, ``"part3"``) or tag.
        """
        names = self._names()
        if isinstance(part, (bool, np.bool_)) or not isinstance(part, (str, int, np.integer)):
            raise ValueError(f"boundary part must be a name or an integer tag, got {part!r}")
        if isinstance(part, str):
            if part not in names:
                raise ValueError(f"unknown boundary part {part!r}; this cloud's parts are "
                                 f"{self._parts_text(names)}")
            tag = names[part]
        else:
            tag = int(part)
            if tag not in names.values():
                raise ValueError(f"no boundary part has tag {tag}; this cloud's parts are "
                                 f"{self._parts_text(names)}")
        return np.flatnonzero(self.tags == tag).astype(np.int64)

    @staticmethod
    def _parts_text(names: dict) -> str:
        items = sorted(names.items(), key=lambda kv: kv[1])
        return ", ".join(f"{n!r} (tag {t})" for n, t in items) or "none (no boundary nodes)"

    def subset(self, interior=None, boundary=None) -> "PointCloud":
        """A cloud with only the given interior and boundary nodes, in the given order.

        ``interior`` / ``boundary`` are index arrays, boolean masks or slices of this cloud's
        interior / boundary nodes (None keeps all). Normals, ghosts and tags follow their
        boundary nodes; the test points and the part names are kept.
        """
        def pick(sel, n):
            every = np.arange(n)
            if sel is None:
                return every
            return every[sel if isinstance(sel, slice) else np.asarray(sel)]

        ii, bb = pick(interior, self.n_interior), pick(boundary, self.n_boundary)
        return dataclasses.replace(
            self, interior=self.interior[ii], boundary=self.boundary[bb],
            normals=self.normals[bb], ghost=None if self.ghost is None else self.ghost[bb],
            boundary_tags=None if self.boundary_tags is None else self.boundary_tags[bb],
            tag_names=dict(self.tag_names))

    # ------------------------------------------------------------------ ghosts
    def with_ghost(self, offset: float = GHOST_OFFSET, length: float | None = None) -> "PointCloud":
        """Return a copy with ghost nodes at ``boundary + offset * length * normals``.

        ``length`` defaults to the authors' ``h = N^(-1/d)``, which is right for their unit disk;
        generated clouds pass a length tied to their physical spacing (:func:`make_cloud`), so
        the ghosts keep the same place relative to the nodes on a domain of any size.

        Raises ValueError when a ghost lands on (or next to) another node: the weights of
        its stencils would be singular.
        """
        ghost = self.boundary + float(offset) * (self.h if length is None else float(length)) \
            * self.normals
        out = dataclasses.replace(self, ghost=ghost)
        out._check_ghost_places()
        return out

    # ------------------------------------------------------------------ checks
    def validate(self) -> "PointCloud":
        """Check the cloud; raise ValueError naming the problem and the fix.

        Checked, in order: shapes and dimension; NaN/inf; zero or non-unit normals; boundary
        tags; duplicate nodes and nodes closer than ``CLOSE_RTOL`` times the median
        nearest-neighbour spacing (ghosts included); normals pointing into the domain (the
        nearest interior nodes lie on the side the normal points to); interior nodes outside
        the boundary (near it: beyond the tangent planes of the nearest boundary nodes; further
        away: outside the boundary's bounding box, or cut off from the boundary layer). All
        neighbour queries use cKDTree (no Python loop over nodes): 1e6 nodes take about 1.5 s
        in 2D, 5 s in 3D (2 shared cores).
        Returns ``self`` so it can be chained.
        """
        self._check_shapes()
        self._names()  # tags, names, and no clash with a default name
        nodes = self.nodes
        if len(nodes) < 2:
            return self
        tree = cKDTree(nodes)
        med = self._check_spacing(nodes, tree)
        self._check_normal_side(tree)
        self._check_inside(med, tree)
        return self

    def _check_shapes(self):
        arrays = {"interior": self.interior, "boundary": self.boundary, "normals": self.normals}
        for name, v in arrays.items():
            if v is None:
                raise ValueError(f"PointCloud.{name} is missing; pass an (N, d) array")
            if v.ndim != 2:
                raise ValueError(
                    f"PointCloud.{name} has shape {v.shape}; expected a 2-D (N, d) array "
                    "(one row per node)")
        d = self.interior.shape[1]
        if d not in (2, 3):
            raise ValueError(f"PointCloud dimension d={d} is not supported; use d=2 or d=3 "
                             "(arrays are (N, d), one row per node)")
        for name in ("boundary", "normals", "ghost", "test"):
            v = getattr(self, name)
            if v is None:
                continue
            if v.ndim != 2 or v.shape[1] != d:
                raise ValueError(f"PointCloud.{name} has shape {v.shape} but interior is "
                                 f"(Ni, {d}); all arrays must have {d} columns")
        if self.normals.shape[0] != self.boundary.shape[0]:
            raise ValueError(f"PointCloud.normals has {self.normals.shape[0]} rows but there are "
                             f"{self.boundary.shape[0]} boundary nodes; give one normal per "
                             "boundary node")
        if self.ghost is not None and self.ghost.shape[0] != self.boundary.shape[0]:
            raise ValueError(f"PointCloud.ghost has {self.ghost.shape[0]} rows but there are "
                             f"{self.boundary.shape[0]} boundary nodes; use with_ghost() to make "
                             "one ghost per boundary node")
        if self.n_interior + self.n_boundary == 0:
            raise ValueError("PointCloud is empty; give at least one interior or boundary node")
        for name in ("interior", "boundary", "normals", "ghost", "test"):
            v = getattr(self, name)
            if v is not None and not np.all(np.isfinite(v)):
                i = int(np.argwhere(~np.isfinite(v))[0, 0])
                raise ValueError(f"PointCloud.{name} row {i} has a NaN/inf coordinate; remove "
                                 "or fix that node")
        nrm = np.linalg.norm(self.normals, axis=1)
        if nrm.size and nrm.min() < 1e-12:
            i = int(np.argmin(nrm))
            raise ValueError(f"PointCloud.normals row {i} is zero; every boundary node needs a "
                             "unit outward normal")
        bad = np.abs(nrm - 1.0) > 1e-6
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(f"PointCloud.normals row {i} has length {nrm[i]:.6g}, not 1; "
                             "normalise the normals (n / |n|)")

    def _check_tags(self):
        t = self.boundary_tags
        if t is not None:
            if not isinstance(t, np.ndarray) or not _is_int_array(t):
                raise ValueError(f"PointCloud.boundary_tags has dtype "
                                 f"{getattr(t, 'dtype', type(t).__name__)}; give one integer part "
                                 "tag per boundary node")
            if t.shape != (self.n_boundary,):
                raise ValueError(f"PointCloud.boundary_tags has shape {t.shape} but there are "
                                 f"{self.n_boundary} boundary nodes; give one tag per boundary "
                                 "node")
            if t.size and t.min() < 0:
                i = int(np.argmin(t))
                raise ValueError(f"PointCloud.boundary_tags row {i} is {int(t[i])}; tags must be "
                                 "non-negative integers")
        names = self.tag_names
        if not isinstance(names, dict):
            raise ValueError(f"PointCloud.tag_names must be a dict name -> tag, got "
                             f"{type(names).__name__}")
        seen = {}
        for k, v in names.items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"PointCloud.tag_names has the key {k!r}; part names must be "
                                 "non-empty strings")
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"PointCloud.tag_names[{k!r}] = {v!r}; tags must be "
                                 "non-negative integers")
            if int(v) in seen:
                raise ValueError(f"PointCloud.tag_names gives tag {int(v)} two names, "
                                 f"{seen[int(v)]!r} and {k!r}; keep one")
            seen[int(v)] = k

    def _where(self, k: int) -> str:
        ni, nb = self.n_interior, self.n_boundary
        if k < ni:
            return f"interior row {k}"
        if k < ni + nb:
            return f"boundary row {k - ni}"
        return f"ghost row {k - ni - nb} (the ghost of boundary row {k - ni - nb})"

    def _check_spacing(self, nodes: np.ndarray, tree: cKDTree) -> float:
        """Duplicates and near-duplicates, relative to the median nearest-neighbour spacing of
        the interior nodes (of all nodes when there are none), estimated on at most
        ``_SPACING_SAMPLE`` evenly strided nodes; the close pairs themselves come from one
        ``query_pairs`` (cheap: its radius is tiny). Returns the median spacing."""
        ni = self.n_interior
        pool = np.arange(ni) if ni >= 2 else np.arange(len(nodes))
        pool = pool[::max(1, len(pool) // _SPACING_SAMPLE)]
        d = tree.query(nodes[pool], k=2)[0][:, 1]
        d = d[np.isfinite(d)]
        med = float(np.median(d)) if d.size else 0.0
        pairs = tree.query_pairs(r=max(CLOSE_RTOL * med, 0.0), p=2.0, output_type="ndarray")
        if len(pairs) == 0:
            return med
        dist = np.linalg.norm(nodes[pairs[:, 0]] - nodes[pairs[:, 1]], axis=1)
        m = int(np.argmin(dist))
        i, j = (int(v) for v in np.sort(pairs[m]))
        dmin = float(dist[m])
        if dmin <= DUPLICATE_RTOL * med:
            raise ValueError(f"PointCloud has duplicate nodes: {self._where(i)} and "
                             f"{self._where(j)} are both at {nodes[i]}; remove one of them")
        raise ValueError(f"PointCloud nodes {self._where(i)} and {self._where(j)} are "
                         f"{dmin:.3g} apart, {dmin / med:.2g} times the median spacing "
                         f"{med:.3g}; RBF-FD weights grow like 1/distance^2 -- remove one of "
                         f"them or move them apart (at least {CLOSE_RTOL:g} spacings)")

    def _check_normal_side(self, tree: cKDTree):
        """Normals must point away from the interior: the nearest interior nodes of a boundary
        node lie on the side opposite to its normal (else the ghosts land inside). ``tree``
        holds :attr:`nodes`; of each boundary node's ``3 * _K_INWARD`` nearest nodes the
        (up to ``_K_INWARD``) interior ones are used; a boundary node with none is not judged."""
        ni, nb = self.n_interior, self.n_boundary
        if ni == 0 or nb == 0:
            return
        k = min(3 * _K_INWARD, tree.n)
        dist, idx = tree.query(self.boundary, k=k)
        dist, idx = np.asarray(dist).reshape(nb, k), np.asarray(idx).reshape(nb, k)
        interior = idx < ni
        rank = np.cumsum(interior, axis=1)
        use = interior & (rank <= _K_INWARD)
        tiny = np.finfo(np.float64).tiny
        safe = np.where(use, idx, 0)
        scale = np.where(use, np.maximum(dist, tiny), 1.0)  # unused entries: any finite value
        v = (self.interior[safe] - self.boundary[:, None, :]) / scale[..., None]
        # mean cosine weighted by 1/distance^2, so the closest interior nodes decide (a hole
        # smaller than the spacing has interior nodes on its far side too), capped at the
        # second-closest interior distance so that no single node decides (one interior node
        # just outside, e.g. at a ghost's place, is the other checks' business)
        second = np.where(interior & (rank == min(2, ni)), dist, np.inf).min(axis=1)
        w = np.where(use, 1.0 / np.maximum(np.maximum(dist, second[:, None]), tiny) ** 2, 0.0)
        wsum = w.sum(axis=1)
        num = np.sum(w * np.einsum("ijk,ik->ij", v, self.normals), axis=1)
        cos = np.where(wsum > 0, num / np.where(wsum > 0, wsum, 1.0), -1.0)
        bad = np.flatnonzero(cos > 0.0)
        if bad.size == 0:
            return
        rows = self._rows_text(bad)
        if bad.size > nb // 2:
            raise ValueError(f"PointCloud.normals point into the domain at {bad.size} of {nb} "
                             "boundary nodes (their nearest interior nodes lie on the side the "
                             "normal points to, so the ghosts would land inside); normals must "
                             "point outward: flip them (normals = -normals)")
        raise ValueError(f"PointCloud.normals rows {rows} ({bad.size} of {nb}) point into the "
                         "domain (the nearest interior nodes lie on the side the normal points "
                         "to); flip those normals so they point outward")

    def _check_inside(self, med: float, tree: cKDTree):
        """No interior node beyond the boundary.

        Near the boundary (within ``reach`` >= 3 spacings of a boundary node): not on the outer
        side of the tangent planes of all its (up to 3) nearest boundary nodes by more than
        OUTSIDE_RTOL local boundary spacings. Further in, where a nearest-boundary query would
        visit every boundary node: inside the boundary's bounding box, and joined to the
        boundary layer through neighbouring interior nodes. "Neighbouring" is first tried
        cheaply (adjacent cells of side 1.5 median spacings; ``reach`` covers two cell
        diagonals, so a chain of such neighbours cannot leave the domain without a node failing
        the near test); what that leaves unjoined (a graded cloud's coarse region, or nodes
        really cut off) is decided on the k-nearest-neighbour graph (links no longer than 3
        times the smaller nearest spacing of their two ends).
        """
        ni, nb, d = self.n_interior, self.n_boundary, self.dim
        if ni == 0 or nb < 2 or not med > 0:
            return
        btree = cKDTree(self.boundary)
        hb = btree.query(self.boundary, k=2)[0][:, 1]  # local boundary spacing
        cell = 1.5 * med  # one median spacing left a few cells apart in jittered 3D lattices
        reach = max(3.0 * max(float(hb.max()), med), 2.0 * np.sqrt(d) * cell + float(hb.max()))
        lo, hi = self.boundary.min(axis=0) - reach, self.boundary.max(axis=0) + reach
        boxed = np.all((self.interior >= lo) & (self.interior <= hi), axis=1)
        if not boxed.all():
            bad = np.flatnonzero(~boxed)
            raise ValueError(f"PointCloud.interior rows {self._rows_text(bad)} ({bad.size} of "
                             f"{ni}) lie outside the boundary (beyond the bounding box of the "
                             "boundary nodes); remove them or fix the boundary nodes")
        # candidates: interior nodes in a cell of side `reach` next to a cell holding a boundary
        # node (every node within `reach` of the boundary is one); only they are queried
        cand = np.flatnonzero(_near_cells(self.interior, self.boundary, lo, hi, reach))
        k = min(_K_OUTSIDE, nb)
        dist, jb = btree.query(self.interior[cand], k=k, distance_upper_bound=reach)
        dist, jb = dist.reshape(len(cand), k), jb.reshape(len(cand), k)
        near = np.zeros(ni, dtype=bool)
        near[cand] = np.isfinite(dist[:, 0])
        sel = np.isfinite(dist[:, 0])
        rows, dist, jb = cand[sel], dist[sel], jb[sel]
        valid = np.isfinite(dist)
        jj = np.where(valid, jb, 0)
        depth = np.einsum("ijk,ijk->ij", self.interior[rows, None, :] - self.boundary[jj],
                          self.normals[jj]) / np.maximum(hb[jj], np.finfo(np.float64).tiny)
        out = np.where(valid, depth, np.inf).min(axis=1)
        bad = rows[out > OUTSIDE_RTOL]
        if bad.size:
            worst = int(np.argmax(np.where(out > OUTSIDE_RTOL, out, -np.inf)))
            i, jb0 = int(rows[worst]), int(jj[worst, 0])
            raise ValueError(
                f"PointCloud.interior rows {self._rows_text(bad)} ({bad.size} of {ni}) lie outside "
                f"the boundary (row {i} is {out[worst]:.3g} boundary spacings beyond the tangent "
                f"planes of its nearest boundary nodes, e.g. boundary row {jb0}); remove them or "
                "fix the boundary nodes and normals")
        if near.all():
            return
        unjoined = _unjoined(_cell_components(self.interior, lo, hi, cell), near)
        if unjoined.size == 0:
            return
        # exact: links to the k nearest nodes, no longer than 3 x the smaller nearest spacing
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        kq = min(_K_GRAPH + 1, tree.n)
        dk, jk = tree.query(self.interior, k=kq)
        dk, jk = dk.reshape(ni, kq)[:, 1:], jk.reshape(ni, kq)[:, 1:]
        nn = dk[:, 0]
        src = np.repeat(np.arange(ni), dk.shape[1])
        dst, length = jk.ravel(), dk.ravel()
        keep = dst < ni
        src, dst, length = src[keep], dst[keep], length[keep]
        keep = length <= 3.0 * np.minimum(nn[src], nn[dst])
        graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (src[keep], dst[keep])),
                           shape=(ni, ni))
        bad = _unjoined(connected_components(graph, directed=False)[1], near)
        if bad.size:
            raise ValueError(f"PointCloud.interior rows {self._rows_text(bad)} ({bad.size} of "
                             f"{ni}) are not joined to the boundary by neighbouring interior "
                             "nodes: they lie outside the domain or beyond a gap in the cloud; "
                             "remove them or fill the gap")

    @staticmethod
    def _rows_text(rows: np.ndarray) -> str:
        return ", ".join(str(int(r)) for r in rows[:8]) + (", ..." if rows.size > 8 else "")

    def _check_ghost_places(self):
        """No ghost on or next to another node (the ghost-aware part of :meth:`validate`, cheap
        enough for every :meth:`with_ghost`)."""
        if self.ghost is None or self.n_boundary == 0 or self.ghost.shape != self.boundary.shape:
            return  # validate() names shape problems
        coll = self.collocation
        ctree = cKDTree(coll)
        d_nn = ctree.query(coll[::max(1, len(coll) // _SPACING_SAMPLE)], k=2)[0][:, 1]
        med = float(np.median(d_nn[np.isfinite(d_nn)])) if np.isfinite(d_nn).any() else 0.0
        dg, jg = ctree.query(self.ghost, k=1)
        if self.n_boundary > 1:
            dgg, jgg = cKDTree(self.ghost).query(self.ghost, k=2)
            own = np.arange(self.n_boundary)
            other = np.where(jgg[:, 1] != own, jgg[:, 1], jgg[:, 0])  # exact duplicates tie
            use = dgg[:, 1] < dg
            dg = np.where(use, dgg[:, 1], dg)
            jg = np.where(use, len(coll) + other, jg)
        g = int(np.argmin(dg))
        dmin, other = float(dg[g]), int(jg[g])
        if not dmin < CLOSE_RTOL * med and dmin > DUPLICATE_RTOL * med:
            return
        rel = f"{dmin / med:.2g} times" if med > 0 else "closer than"
        where = self._where(self.n_interior + self.n_boundary + g)
        if other == self.n_interior + g:
            raise ValueError(f"PointCloud {where} is {dmin:.3g} from its boundary node ({rel} "
                             "the median spacing): the ghost offset is too small; use a larger "
                             "offset or length in with_ghost")
        if other >= len(coll):
            raise ValueError(f"PointCloud {where} is {dmin:.3g} from {self._where(other)} ({rel} "
                             "the median spacing): the boundary curves more sharply than the "
                             "spacing resolves (a hole or bump smaller than the node spacing?); "
                             "use more nodes or a smaller ghost offset")
        raise ValueError(f"PointCloud {where} is {dmin:.3g} from {self._where(other)} ({rel} the "
                         "median spacing): a node sits where a ghost goes, outside the domain; "
                         "remove that node, or fix the normal of that boundary node")

    def __repr__(self) -> str:
        try:
            parts = f", parts={len(self.parts)}" if self.parts != [("boundary", 0)] else ""
        except ValueError:
            parts = ", parts=?"
        return (f"PointCloud(d={self.dim}, Ni={self.n_interior}, Nb={self.n_boundary}, "
                f"Ng={self.n_ghost}, Nt={0 if self.test is None else len(self.test)}, "
                f"h={self.h:.4g}{parts})")

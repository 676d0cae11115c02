"""Quasi-uniform node generation: :func:`make_cloud` is the one entry point.

Method (fast, vectorised, seeded): boundary nodes from the domain at spacing ``s``; interior nodes
from a randomly shifted/rotated and jittered lattice (hexagonal in 2D, face-centred cubic in 3D) of
density ``1/s^d``, keeping nodes inside the domain and at least ``0.5 s`` from every boundary node;
then a few iterations of repulsion smoothing (neighbours from a cKDTree, boundary nodes fixed, moves
that leave the domain or come too close to the boundary are undone).  Quality is reported by
:func:`spacing_ratio` (max / min nearest-neighbour distance).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.spatial import cKDTree

from ..resources import check_memory
from .cloud import GHOST_OFFSET, PointCloud
from .domains import Domain, get_domain

__all__ = ["make_cloud", "spacing_for_count", "fill_interior", "spacing_ratio",
           "nearest_distances", "make_test_points", "estimate_cloud_bytes"]

#: Peak bytes of :func:`make_cloud` per node (Ni + Nb) in the smoothing sweeps and per point of
#: the lattice it clips (the square / cube about the domain's bounding ball). Measured with
#: tracemalloc: 550 (2D) and 1200 (3D) per node on disks, squares, annuli, balls and boxes of
#: 1e5-3e5 nodes; 65 per lattice point on a thin ellipse and a thin box (where the lattice
#: dominates). About 1.3x margin on each.
BYTES_PER_NODE = {2: 700, 3: 1600}
_BYTES_PER_LATTICE_POINT = 85


def spacing_for_count(domain: Domain, n: int) -> float:
    """Spacing ``s`` at which :func:`make_cloud` gives about ``n`` nodes (Ni + Nb).

    Solves ``volume / s^d + (1 - gamma) * boundary_measure / s^(d-1) = n``; ``gamma`` (measured:
    0.4 in 2D, 0.25 in 3D) accounts for the node-free strip kept next to the boundary.
    """
    if not n >= 10:
        raise ValueError(f"asked for n={n} nodes; use n >= 10")
    d = domain.dim
    gamma = 0.4 if d == 2 else 0.25
    f = lambda s: domain.volume / s ** d + (1 - gamma) * domain.boundary_measure / s ** (d - 1) - n
    s0 = (domain.volume / n) ** (1.0 / d)
    return float(brentq(f, 1e-3 * s0, 1e3 * s0))


def nearest_distances(points: np.ndarray) -> np.ndarray:
    """Distance from every point to its nearest other point."""
    d, _ = cKDTree(points).query(points, k=2)
    return d[:, 1]


def spacing_ratio(points: np.ndarray) -> float:
    """Quality measure of a cloud: max / min nearest-neighbour distance (1 for a perfect lattice)."""
    d = nearest_distances(np.asarray(points, dtype=np.float64))
    return float(d.max() / d.min())


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _lattice(domain: Domain, s: float, rng: np.random.Generator) -> np.ndarray:
    """Randomly rotated and shifted lattice of density 1/s^d covering the bounding box."""
    d = domain.dim
    lo, hi = (np.asarray(a, dtype=np.float64) for a in domain.bbox())
    c, rad = (lo + hi) / 2, np.linalg.norm(hi - lo) / 2 + 2 * s
    if d == 2:
        a = s * np.sqrt(2.0 / np.sqrt(3.0))  # hexagonal: area per node sqrt(3)/2 a^2 = s^2
        ny = int(np.ceil(rad / (a * np.sqrt(3) / 2)))
        nx = int(np.ceil(rad / a)) + 1
        j, i = np.meshgrid(np.arange(-ny, ny + 1), np.arange(-nx, nx + 1), indexing="ij")
        p = np.column_stack([(i + 0.5 * (j % 2)).ravel() * a, (j * np.sqrt(3) / 2).ravel() * a])
    else:
        a = s * 4.0 ** (1.0 / 3.0)  # FCC: 4 nodes per cube of side a
        k = int(np.ceil(rad / a)) + 1
        g = np.stack(np.meshgrid(*(np.arange(-k, k + 1),) * 3, indexing="ij"), -1).reshape(-1, 3)
        basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        p = ((g[:, None, :] + basis[None]) * a).reshape(-1, 3)
        p = p[np.sum(p * p, axis=1) <= rad * rad]
    p = p @ _rotation(rng, d).T + c + rng.uniform(-0.5, 0.5, d) * s
    return p


def fill_interior(domain: Domain, s: float, boundary: np.ndarray, rng: np.random.Generator,
                  iterations: int = 8, jitter: float = 0.15, margin: float = 0.5) -> np.ndarray:
    """Quasi-uniform interior nodes of spacing about ``s`` (see module docstring)."""
    d = domain.dim
    p = _lattice(domain, s, rng)
    p = p[domain.inside(p)]
    p = p + rng.uniform(-jitter, jitter, p.shape) * s
    btree = cKDTree(boundary)

    def ok(x):
        # distance_upper_bound: far-from-boundary queries end at once (returns inf).
        near = btree.query(x, k=1, distance_upper_bound=margin * s)[0]
        return domain.inside(x) & np.isinf(near)

    p = p[ok(p)]
    k = 7 if d == 2 else 13
    for _ in range(iterations):
        allp = np.vstack([p, boundary])
        dist, idx = cKDTree(allp).query(p, k=k + 1)
        dist, idx = dist[:, 1:], idx[:, 1:]
        u = (p[:, None, :] - allp[idx]) / dist[..., None]
        # Short-range repulsion (s/r)^3, symmetric in a perfect lattice so interior nodes only
        # move to even out irregularities; capped so no node jumps more than 0.2 s.
        force = np.sum(u * ((s / dist) ** 3)[..., None], axis=1)
        step = 0.05 * s * force
        nrm = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, 0.2 * s / np.maximum(nrm, 1e-300))
        q = p + step
        good = ok(q)
        p = np.where(good[:, None], q, p)
    return p


def _node_count(domain: Domain, s: float) -> float:
    """About how many nodes (Ni + Nb) spacing ``s`` gives (float: may be huge or inf)."""
    d, s = domain.dim, np.float64(s)
    with np.errstate(over="ignore", divide="ignore", under="ignore"):
        return float(domain.volume / s ** d + domain.boundary_measure / s ** (d - 1))


def estimate_cloud_bytes(domain: Domain, spacing: float) -> float:
    """Peak memory (bytes, float; ``inf`` when it overflows) of :func:`make_cloud` at this
    spacing: the larger of the lattice phase and the smoothing phase."""
    d = domain.dim
    lo, hi = (np.asarray(a, dtype=np.float64) for a in domain.bbox())
    spacing = np.float64(spacing)
    rad = float(np.linalg.norm(hi - lo)) / 2 + 2 * spacing
    with np.errstate(over="ignore", divide="ignore", under="ignore"):
        lattice = (2 * rad / spacing) ** d * _BYTES_PER_LATTICE_POINT
        smoothing = _node_count(domain, spacing) * BYTES_PER_NODE[d]
    return float(max(lattice, smoothing))


def make_test_points(domain: Domain, n: int, seed: int = 1) -> np.ndarray:
    """Independent evaluation points (interior and boundary), about ``n`` of them."""
    c = make_cloud(domain, n=n, seed=seed, ghost=False)
    return np.vstack([c.interior, c.boundary])


def make_cloud(domain, n: int | None = None, spacing: float | None = None, seed: int = 0,
               ghost: bool = True, ghost_offset: float = GHOST_OFFSET, n_test: int | None = None,
               iterations: int = 8, **domain_kw) -> PointCloud:
    """Generate a quasi-uniform :class:`PointCloud` on a domain.  The one public entry point.

    Parameters
    ----------
    domain : Domain or str
        A domain object or a built-in name (``disk``, ``star``, ``annulus``, ``ellipse``,
        ``rectangle``, ``ball``, ``box``); ``domain_kw`` go to its constructor.
    n : int, optional
        Target total count Ni + Nb (met to within a few per cent).
    spacing : float, optional
        Target node spacing ``s`` instead of ``n`` (boundary nodes ``s`` apart, interior density
        ``1/s^d``).  Note this is the physical spacing, not the authors' ``h = N^(-1/d)``
        (:attr:`PointCloud.h`).
    seed : int
        Seed of the numpy Generator: the same arguments give the same cloud.
    ghost : bool
        Add ghost nodes at ``boundary + ghost_offset * h * normal``.
    n_test : int, optional
        Also make an independent test set of about ``n_test`` interior+boundary points
        (different seed).
    iterations : int
        Repulsion smoothing iterations.

    Notes
    -----
    Boundary part tags come from the domain (``sample_boundary`` returning ``(points, normals,
    tags)`` and ``domain.tag_names``; a domain returning two arrays gives one part).
    Before allocating, the memory needed is estimated (:func:`estimate_cloud_bytes`) and a job
    too large for this machine is refused (:class:`dtpinn_dist.resources.ResourceError`).
    """
    if isinstance(domain, str):
        domain = get_domain(domain, **domain_kw)
    if (n is None) == (spacing is None):
        raise ValueError("give exactly one of n (node count) or spacing")
    if n is not None:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer, float)) \
                or not float(n).is_integer():
            raise ValueError(f"n must be a whole number of nodes, got {n!r}")
        n = int(n)
        what = f"make_cloud(n={n})"
        s = spacing_for_count(domain, n)
    else:
        s = float(spacing)
        what = f"make_cloud(spacing={spacing:g})"
        if not (s > 0 and np.isfinite(s)):
            raise ValueError(f"spacing must be a positive finite number, got {spacing}")
        count = _node_count(domain, s)
        if count < 10:
            raise ValueError(f"spacing {s:g} gives about {count:.0f} nodes on this domain; use a "
                             "spacing small enough for at least 10 nodes")
    need = estimate_cloud_bytes(domain, s)
    if n_test:
        need = max(need, estimate_cloud_bytes(domain, spacing_for_count(domain, int(n_test))))
    check_memory(need, what, fix="use fewer nodes (or a larger spacing)")
    rng = np.random.default_rng(seed)
    sampled = domain.sample_boundary(s)
    boundary, normals = sampled[0], sampled[1]
    tags = np.asarray(sampled[2], dtype=np.int64) if len(sampled) > 2 else None
    names = getattr(domain, "tag_names", None) if tags is not None else None
    interior = fill_interior(domain, s, boundary, rng, iterations=iterations)
    cloud = PointCloud(interior=interior, boundary=boundary, normals=normals,
                       boundary_tags=tags, tag_names=names)
    if ghost:
        # h = N^(-1/d) on the unit disk (ball) is the spacing divided by sqrt(area)
        # (cbrt(volume)); scaling by the spacing keeps that ghost placement on any domain
        unit = np.sqrt(np.pi) if cloud.dim == 2 else (4.0 * np.pi / 3.0) ** (1.0 / 3.0)
        cloud = cloud.with_ghost(ghost_offset, length=s / unit)
    if n_test:
        cloud.test = make_test_points(domain, n_test, seed=seed + 7919)
    return cloud

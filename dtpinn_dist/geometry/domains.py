"""Built-in domains: inside test, boundary sampling with exact unit outward normals, bounding box.

Every domain is a small plain object with

* ``dim`` -- 2 or 3,
* ``bbox()`` -- ``(lo, hi)`` arrays of length ``dim``,
* ``volume`` and ``boundary_measure`` -- area/volume and perimeter/surface area (used to turn a
  target node count into a spacing),
* ``inside(x)`` -- vectorised, ``x`` is ``(N, dim)``, returns a bool array (open domain),
* ``sample_boundary(spacing)`` -- ``(points, normals, tags)`` about ``spacing`` apart, normals
  unit and outward, ``tags`` the (Nb,) int64 boundary part of each point (a user domain may return
  just ``(points, normals)``: one part),
* ``tag_names`` -- dict part name -> tag.

Boundary parts: disk, ellipse, star, ball ``{"boundary": 0}``; annulus ``{"outer": 0,
"inner": 1}``; rectangle ``{"bottom": 0, "right": 1, "top": 2, "left": 3}`` (y = lo, x = hi,
y = hi, x = lo); polygon ``{"edge0": 0, "edge1": 1, ...}``, edge ``i`` joining vertex ``i`` to
vertex ``i + 1`` in the order given (or the names passed); box ``{"x0": 0, "x1": 1, "y0": 2,
"y1": 3, "z0": 4, "z1": 5}`` (x = lo, x = hi, ...).

Corner convention (rectangle, polygon, box): the corner (vertex / box edge / box corner) is itself a
boundary node and its normal is the normalised sum of the outward normals of the faces meeting
there (the bisector).  Normals are exact everywhere else.  A polygon vertex belongs to the edge
that starts there (vertex ``i`` to edge ``i``, in the order given): a rectangle's corners
(lo, lo), (hi, lo), (hi, hi), (lo, hi) are in "bottom", "right", "top", "left".  A node on a box
edge or corner belongs to the first of its faces in the order x0, x1, y0, y1, z0, z1.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Domain", "Disk", "Ellipse", "Star", "Annulus", "Rectangle", "Polygon", "Ball", "Box",
           "get_domain", "DOMAINS"]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _closed_curve(curve, spacing: float, n_fine: int = 20000):
    """Sample a closed parametric curve ``curve(t)``, t in [0, 2 pi), at equal arclength.

    Returns the parameter values; the number of points is round(length / spacing) (at least 8).
    """
    t = np.linspace(0.0, 2.0 * np.pi, n_fine + 1)
    xy = curve(t)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    n = max(8, int(round(s[-1] / spacing)))
    target = np.arange(n, dtype=np.float64) * (s[-1] / n)
    # Linear inversion of s(t) on a fine grid: errors O((2pi/n_fine)^2), far below any spacing.
    return np.interp(target, s, t)


#: Bounds of a domain's lengths and coordinates: lengths in [1/MAX_EXTENT, MAX_EXTENT], and
#: |coordinate| <= MAX_EXTENT (areas, perimeters and node spacings then stay far from overflow).
MAX_EXTENT = 1e6


def _length(cls: str, name: str, v) -> float:
    """A domain's length parameter as a float: finite, positive and within :data:`MAX_EXTENT`,
    else one ``ValueError`` line naming the domain, the parameter and the range."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{cls} {name} = {v!r}: give a number") from None
    if not (1.0 / MAX_EXTENT <= f <= MAX_EXTENT):
        raise ValueError(f"{cls} {name} = {v!r}: give a finite length from {1 / MAX_EXTENT:g} "
                         f"to {MAX_EXTENT:g} (rescale the problem)")
    return f


def _point(cls: str, name: str, v, dim: int) -> np.ndarray:
    """A domain's point (a centre, a corner, a vertex list) as a float array: ``dim``
    coordinates each, finite and within :data:`MAX_EXTENT`."""
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{cls} {name} = {v!r}: give numbers") from None
    if a.ndim == 0 or a.shape[-1] != dim:
        raise ValueError(f"{cls} {name} = {v!r}: give {dim} coordinates per point")
    if not (np.isfinite(a).all() and np.abs(a).max() <= MAX_EXTENT):
        raise ValueError(f"{cls} {name} = {v!r}: coordinates must be finite, of size at most "
                         f"{MAX_EXTENT:g} (rescale the problem)")
    return a


def _one_part(points: np.ndarray) -> np.ndarray:
    return np.zeros(len(points), dtype=np.int64)


class Domain:
    """Base class; see the module docstring for the interface."""

    dim: int = 2
    volume: float = 1.0
    boundary_measure: float = 1.0
    tag_names: dict = {"boundary": 0}

    def bbox(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def inside(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def sample_boundary(self, spacing: float):  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


# --------------------------------------------------------------------------------------- 2D
class Disk(Domain):
    """Disk of given centre and radius (default: the paper's unit disk)."""

    dim = 2

    def __init__(self, radius: float = 1.0, center=(0.0, 0.0)):
        self.radius = _length("disk", "radius", radius)
        self.center = _point("disk", "center", center, 2)
        self.volume = np.pi * self.radius ** 2
        self.boundary_measure = 2.0 * np.pi * self.radius

    def bbox(self):
        return self.center - self.radius, self.center + self.radius

    def inside(self, x):
        return np.sum((np.asarray(x) - self.center) ** 2, axis=1) < self.radius ** 2

    def sample_boundary(self, spacing):
        n = max(8, int(round(self.boundary_measure / spacing)))
        t = 2.0 * np.pi * np.arange(n) / n
        nrm = np.column_stack([np.cos(t), np.sin(t)])
        return self.center + self.radius * nrm, nrm, _one_part(nrm)


class Ellipse(Domain):
    """Axis-aligned ellipse (x/a)^2 + (y/b)^2 < 1 about ``center``."""

    dim = 2

    def __init__(self, a: float = 1.0, b: float = 0.5, center=(0.0, 0.0)):
        self.a, self.b = _length("ellipse", "a", a), _length("ellipse", "b", b)
        self.center = _point("ellipse", "center", center, 2)
        self.volume = np.pi * self.a * self.b
        t = np.linspace(0, 2 * np.pi, 20001)
        self.boundary_measure = float(np.sum(np.hypot(np.diff(self.a * np.cos(t)),
                                                      np.diff(self.b * np.sin(t)))))

    def bbox(self):
        r = np.array([self.a, self.b])
        return self.center - r, self.center + r

    def inside(self, x):
        y = np.asarray(x) - self.center
        return (y[:, 0] / self.a) ** 2 + (y[:, 1] / self.b) ** 2 < 1.0

    def sample_boundary(self, spacing):
        curve = lambda t: np.column_stack([self.a * np.cos(t), self.b * np.sin(t)])
        t = _closed_curve(curve, spacing)
        p = curve(t)
        nrm = _unit(np.column_stack([p[:, 0] / self.a ** 2, p[:, 1] / self.b ** 2]))
        return self.center + p, nrm, _one_part(p)


class Star(Domain):
    """Star-shaped domain r < a + b cos(k theta) about ``center`` (needs 0 < b < a)."""

    dim = 2

    def __init__(self, a: float = 1.0, b: float = 0.2, k: int = 5, center=(0.0, 0.0)):
        a = _length("star", "a", a)
        b = 0.0 if b == 0 else _length("star", "b", b)
        if not 0 <= b < a:
            raise ValueError(f"Star needs 0 <= b < a (got a={a}, b={b}) so that r(theta) > 0")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 64:
            raise ValueError(f"star k = {k!r}: give a whole number of points from 1 to 64")
        self.a, self.b, self.k = a, b, int(k)
        self.center = _point("star", "center", center, 2)
        self.volume = np.pi * (self.a ** 2 + 0.5 * self.b ** 2)
        t = np.linspace(0, 2 * np.pi, 20001)
        self.boundary_measure = float(np.sum(np.linalg.norm(np.diff(self._curve(t), axis=0),
                                                            axis=1)))

    def _r(self, t):
        return self.a + self.b * np.cos(self.k * t)

    def _curve(self, t):
        r = self._r(t)
        return np.column_stack([r * np.cos(t), r * np.sin(t)])

    def bbox(self):
        r = self.a + self.b
        return self.center - r, self.center + r

    def inside(self, x):
        y = np.asarray(x) - self.center
        return np.hypot(y[:, 0], y[:, 1]) < self._r(np.arctan2(y[:, 1], y[:, 0]))

    def sample_boundary(self, spacing):
        t = _closed_curve(self._curve, spacing)
        r, dr = self._r(t), -self.b * self.k * np.sin(self.k * t)
        # Tangent (dr cos - r sin, dr sin + r cos), counter-clockwise; outward normal = (Ty, -Tx).
        nrm = _unit(np.column_stack([dr * np.sin(t) + r * np.cos(t),
                                     -dr * np.cos(t) + r * np.sin(t)]))
        return self.center + self._curve(t), nrm, _one_part(nrm)


class Annulus(Domain):
    """r_inner < |x - center| < r_outer.

    Outward normals point out of the domain on both circles: away from the centre on the outer
    circle, towards the centre (into the hole) on the inner circle. Parts: ``"outer"`` (tag 0),
    ``"inner"`` (tag 1).
    """

    dim = 2
    tag_names = {"outer": 0, "inner": 1}

    def __init__(self, r_inner: float = 0.5, r_outer: float = 1.0, center=(0.0, 0.0)):
        r_inner = _length("annulus", "r_inner", r_inner)
        r_outer = _length("annulus", "r_outer", r_outer)
        if not 0 < r_inner < r_outer:
            raise ValueError(f"Annulus needs 0 < r_inner < r_outer (got {r_inner}, {r_outer})")
        self.r_inner, self.r_outer = r_inner, r_outer
        self.center = _point("annulus", "center", center, 2)
        self.volume = np.pi * (self.r_outer ** 2 - self.r_inner ** 2)
        self.boundary_measure = 2 * np.pi * (self.r_outer + self.r_inner)

    def bbox(self):
        return self.center - self.r_outer, self.center + self.r_outer

    def inside(self, x):
        r2 = np.sum((np.asarray(x) - self.center) ** 2, axis=1)
        return (r2 < self.r_outer ** 2) & (r2 > self.r_inner ** 2)

    def sample_boundary(self, spacing):
        pts, nrms, tags = [], [], []
        for tag, (r, sign) in enumerate(((self.r_outer, 1.0), (self.r_inner, -1.0))):
            n = max(8, int(round(2 * np.pi * r / spacing)))
            t = 2 * np.pi * np.arange(n) / n
            u = np.column_stack([np.cos(t), np.sin(t)])
            pts.append(self.center + r * u)
            nrms.append(sign * u)
            tags.append(np.full(n, tag, dtype=np.int64))
        return np.vstack(pts), np.vstack(nrms), np.concatenate(tags)


class Polygon(Domain):
    """Simple polygon given by its vertices (either orientation; not self-intersecting).

    Corners are boundary nodes with the bisector normal (normalised sum of the two edge normals).

    Parameters
    ----------
    vertices : (n, 2) array
    names : list of n str, optional
        Names of the boundary parts: ``names[i]`` is the edge from ``vertices[i]`` to
        ``vertices[i + 1]`` (tag ``i``); default ``"edge0"``, ``"edge1"``, ... Numbering follows
        the order given, whatever its orientation; vertex ``i`` belongs to edge ``i``.
    """

    dim = 2

    def __init__(self, vertices, names=None):
        v = _point("polygon", "vertices", vertices, 2)
        if v.ndim != 2 or v.shape[1] != 2 or len(v) < 3:
            raise ValueError(f"Polygon needs an (n >= 3, 2) vertex array, got shape {v.shape}")
        n = len(v)
        if names is None:
            names = [f"edge{i}" for i in range(n)]
        names = list(names)
        if len(names) != n or not all(isinstance(k, str) and k for k in names):
            raise ValueError(f"Polygon names must be {n} non-empty strings, one per edge "
                             f"(edge i joins vertex i to vertex i+1); got {names!r}")
        if len(set(names)) != n:
            raise ValueError(f"Polygon names must be distinct; got {names!r}")
        self.tag_names = {k: i for i, k in enumerate(names)}
        x, y = v[:, 0], v[:, 1]
        area2 = float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
        if area2 == 0:
            raise ValueError("Polygon has zero area; give the vertices of a simple polygon")
        # vertex_tag[j]: tag of stored vertex j (the edge starting there in the given order);
        # edge_tag[j]: tag of the stored edge j -> j+1
        idx = np.arange(n)
        if area2 < 0:  # make counter-clockwise so (ty, -tx) is outward
            v = v[::-1].copy()
            self._vertex_tag = (n - 1 - idx).astype(np.int64)
            self._edge_tag = ((n - 2 - idx) % n).astype(np.int64)
        else:
            self._vertex_tag = idx.astype(np.int64)
            self._edge_tag = idx.astype(np.int64)
        self.vertices = v
        self.volume = abs(area2) / 2
        self.boundary_measure = float(np.sum(np.linalg.norm(np.roll(v, -1, 0) - v, axis=1)))

    def bbox(self):
        return self.vertices.min(0), self.vertices.max(0)

    def inside(self, x):
        # Even-odd ray casting, vectorised over points; a Python loop over the (few) edges.
        x = np.asarray(x)
        px, py = x[:, 0], x[:, 1]
        res = np.zeros(len(x), dtype=bool)
        v, w = self.vertices, np.roll(self.vertices, -1, 0)
        for (x1, y1), (x2, y2) in zip(v, w):
            cond = (y1 > py) != (y2 > py)
            with np.errstate(divide="ignore", invalid="ignore"):
                xc = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
            res ^= cond & (px < xc)
        return res

    def sample_boundary(self, spacing):
        v, w = self.vertices, np.roll(self.vertices, -1, 0)
        edge_n = _unit(np.column_stack([(w - v)[:, 1], -(w - v)[:, 0]]))
        corner_n = _unit(edge_n + np.roll(edge_n, 1, 0))  # vertex i joins edges i-1 and i
        pts, nrms, tags = [], [], []
        for i in range(len(v)):
            pts.append(v[i:i + 1]); nrms.append(corner_n[i:i + 1])
            tags.append(self._vertex_tag[i:i + 1])
            k = max(1, int(round(np.linalg.norm(w[i] - v[i]) / spacing)))
            s = (np.arange(1, k) / k)[:, None]
            pts.append(v[i] + s * (w[i] - v[i])); nrms.append(np.repeat(edge_n[i:i + 1], k - 1, 0))
            tags.append(np.full(k - 1, self._edge_tag[i], dtype=np.int64))
        return np.vstack(pts), np.vstack(nrms), np.concatenate(tags)

    def __repr__(self):
        return f"{type(self).__name__}(vertices={self.vertices.tolist()!r})"


class Rectangle(Polygon):
    """Axis-aligned rectangle [lo, hi] (default the unit square).

    Parts ``"bottom"`` (y = lo, tag 0), ``"right"`` (x = hi, 1), ``"top"`` (y = hi, 2),
    ``"left"`` (x = lo, 3); each corner belongs to the side that starts there going
    counter-clockwise: (lo, lo) bottom, (hi, lo) right, (hi, hi) top, (lo, hi) left.
    """

    def __init__(self, lo=(0.0, 0.0), hi=(1.0, 1.0)):
        (x0, y0), (x1, y1) = _point("rectangle", "lo", lo, 2), _point("rectangle", "hi", hi, 2)
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"Rectangle needs lo < hi componentwise (got {lo}, {hi})")
        super().__init__([(x0, y0), (x1, y0), (x1, y1), (x0, y1)],
                         names=["bottom", "right", "top", "left"])
        self.lo = np.array([x0, y0], dtype=np.float64)
        self.hi = np.array([x1, y1], dtype=np.float64)

    def __repr__(self):
        return f"Rectangle(lo={self.lo.tolist()}, hi={self.hi.tolist()})"


# --------------------------------------------------------------------------------------- 3D
class Ball(Domain):
    """Ball of given radius and centre (default the unit ball); Fibonacci-sphere boundary nodes."""

    dim = 3

    def __init__(self, radius: float = 1.0, center=(0.0, 0.0, 0.0)):
        self.radius = _length("ball", "radius", radius)
        self.center = _point("ball", "center", center, 3)
        self.volume = 4.0 / 3.0 * np.pi * self.radius ** 3
        self.boundary_measure = 4.0 * np.pi * self.radius ** 2

    def bbox(self):
        return self.center - self.radius, self.center + self.radius

    def inside(self, x):
        return np.sum((np.asarray(x) - self.center) ** 2, axis=1) < self.radius ** 2

    def sample_boundary(self, spacing):
        n = max(12, int(round(self.boundary_measure / spacing ** 2)))
        k = np.arange(n) + 0.5
        z = 1.0 - 2.0 * k / n
        phi = np.pi * (1.0 + np.sqrt(5.0)) * k  # golden-angle spiral: quasi-uniform on the sphere
        s = np.sqrt(1.0 - z * z)
        nrm = np.column_stack([s * np.cos(phi), s * np.sin(phi), z])
        return self.center + self.radius * nrm, nrm, _one_part(nrm)


class Box(Domain):
    """Axis-aligned box [lo, hi] (default the unit cube).

    The boundary is the surface of a lattice; nodes on box edges/corners get the normalised sum
    of the normals of the faces they lie on. Parts ``"x0"`` (x = lo, tag 0), ``"x1"`` (x = hi, 1),
    ``"y0"``, ``"y1"``, ``"z0"``, ``"z1"`` (2..5); a node on a box edge or corner belongs to the
    first of its faces in that order (the corner lo belongs to x0, the edge y = lo, z = hi to y0).
    """

    dim = 3
    tag_names = {"x0": 0, "x1": 1, "y0": 2, "y1": 3, "z0": 4, "z1": 5}

    def __init__(self, lo=(0.0, 0.0, 0.0), hi=(1.0, 1.0, 1.0)):
        self.lo = _point("box", "lo", lo, 3)
        self.hi = _point("box", "hi", hi, 3)
        if np.any(self.hi <= self.lo):
            raise ValueError(f"Box needs lo < hi componentwise (got {lo}, {hi})")
        e = self.hi - self.lo
        self.volume = float(np.prod(e))
        self.boundary_measure = float(2 * (e[0] * e[1] + e[1] * e[2] + e[0] * e[2]))

    def bbox(self):
        return self.lo.copy(), self.hi.copy()

    def inside(self, x):
        x = np.asarray(x)
        return np.all((x > self.lo) & (x < self.hi), axis=1)

    def sample_boundary(self, spacing):
        k = np.maximum(1, np.round((self.hi - self.lo) / spacing).astype(int))
        ax = [np.arange(kk + 1) for kk in k]
        g = np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)
        low, high = g == 0, g == k
        on = np.any(low | high, axis=1)
        g, low, high = g[on], low[on], high[on]
        pts = self.lo + g / k * (self.hi - self.lo)
        nrm = _unit(high.astype(np.float64) - low.astype(np.float64))
        # faces in tag order x0, x1, y0, y1, z0, z1; the first face a node lies on is its part
        faces = np.stack([low[:, 0], high[:, 0], low[:, 1], high[:, 1], low[:, 2], high[:, 2]], 1)
        return pts, nrm, np.argmax(faces, axis=1).astype(np.int64)


DOMAINS = {"disk": Disk, "ellipse": Ellipse, "star": Star, "annulus": Annulus,
           "rectangle": Rectangle, "square": Rectangle, "ball": Ball, "box": Box, "cube": Box}


def get_domain(name: str, **kw) -> Domain:
    """Build a built-in domain by name (``disk``, ``ellipse``, ``star``, ``annulus``,
    ``rectangle``, ``ball``, ``box``)."""
    try:
        cls = DOMAINS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; choose one of {sorted(DOMAINS)}") from None
    return cls(**kw)

"""The :class:`PointCloud` container: interior, boundary (with normals), ghost and test nodes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["PointCloud", "GHOST_OFFSET"]

#: Authors' ghost offset: ghost = boundary + 0.25 * h * normal.
GHOST_OFFSET = 0.25


@dataclass
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

    Notes
    -----
    The column ordering of every differentiation matrix is :attr:`nodes`:
    interior, then boundary, then ghost.
    """

    interior: np.ndarray
    boundary: np.ndarray
    normals: np.ndarray
    ghost: np.ndarray | None = None
    test: np.ndarray | None = None

    def __post_init__(self):
        # fp64 everywhere; leave shape checking to validate() so the message is clear.
        for name in ("interior", "boundary", "normals", "ghost", "test"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, np.asarray(v, dtype=np.float64))

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

    # ------------------------------------------------------------------ ghosts
    def with_ghost(self, offset: float = GHOST_OFFSET, length: float | None = None) -> "PointCloud":
        """Return a copy with ghost nodes at ``boundary + offset * length * normals``.

        ``length`` defaults to the authors' ``h = N^(-1/d)``, which is right for their unit disk;
        generated clouds pass a length tied to their physical spacing (:func:`make_cloud`), so
        the ghosts keep the same place relative to the nodes on a domain of any size.
        """
        ghost = self.boundary + float(offset) * (self.h if length is None else float(length)) \
            * self.normals
        return dataclasses.replace(self, ghost=ghost)

    # ------------------------------------------------------------------ checks
    def validate(self) -> "PointCloud":
        """Check shapes, finiteness, duplicates and normals; raise ValueError naming the fix.

        Returns ``self`` so it can be chained.
        """
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
        nodes = self.nodes
        pairs = cKDTree(nodes).query_pairs(r=1e-12 * max(1.0, float(np.abs(nodes).max())),
                                           output_type="ndarray")
        if len(pairs):
            i, j = (int(k) for k in np.sort(pairs[0]))
            raise ValueError(f"PointCloud has duplicate nodes {i} and {j} (indices into "
                             f"cloud.nodes = interior, boundary, ghost) at {nodes[i]}; remove "
                             "one of them")
        return self

    def __repr__(self) -> str:
        return (f"PointCloud(d={self.dim}, Ni={self.n_interior}, Nb={self.n_boundary}, "
                f"Ng={self.n_ghost}, Nt={0 if self.test is None else len(self.test)}, "
                f"h={self.h:.4g})")

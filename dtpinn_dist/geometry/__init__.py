"""Point clouds for DT-PINNs: domains, quasi-uniform node generation, file IO.

Entry points: :func:`make_cloud` (generate), :func:`load_cloud` (read .mat/.npz),
:func:`save_npz` (write), :class:`PointCloud` (the container, with boundary parts:
``cloud.parts``, ``cloud.part_index(name)``).
"""
from .cloud import GHOST_OFFSET, PointCloud
from .domains import (DOMAINS, Annulus, Ball, Box, Disk, Domain, Ellipse, Polygon, Rectangle,
                      Star, get_domain)
from .io import load_cloud, load_mat, load_npz, save_npz
from .nodes import (estimate_cloud_bytes, make_cloud, make_test_points, nearest_distances,
                    spacing_for_count, spacing_ratio)

__all__ = ["PointCloud", "GHOST_OFFSET", "Domain", "Disk", "Ellipse", "Star", "Annulus",
           "Rectangle", "Polygon", "Ball", "Box", "DOMAINS", "get_domain", "make_cloud",
           "make_test_points", "spacing_for_count", "spacing_ratio", "nearest_distances",
           "estimate_cloud_bytes",
           "load_cloud", "load_mat", "load_npz", "save_npz"]

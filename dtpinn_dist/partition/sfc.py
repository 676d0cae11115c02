"""Space-filling-curve orderings (Hilbert, Morton) and weighted splits into contiguous pieces.

The fallback partitioner when PETSc has no graph partitioner (PT-Scotch / ParMETIS), and the
initial distribution handed to the graph partitioner: consecutive points on a Hilbert curve are
spatially close, so equal-weight runs of the curve are compact pieces whose halo grows like their
perimeter. Pure numpy, deterministic, identical on every rank for identical input (no
communication).
"""
from __future__ import annotations

import numpy as np

__all__ = ["quantize", "hilbert_keys", "morton_keys", "sfc_order", "split_weighted", "sfc_partition"]


def _default_bits(d: int) -> int:
    # d * bits <= 63 so that a key fits in an int64/uint64.
    return 63 // d if d > 2 else 31


def quantize(points: np.ndarray, bits: int, box=None) -> np.ndarray:
    """Integer grid coordinates in ``[0, 2**bits)`` of ``points`` (N, d), one scale for all axes.

    One scale (the largest extent) keeps the curve's cells square, so pieces stay compact on
    elongated domains. ``box`` = ``(lo, hi)``: the bounding box to scale by (default the
    points'; a rank holding a slice passes the whole cloud's, so its keys are the serial ones).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"points must be an (N, d) array, got shape {points.shape}")
    if len(points) == 0:
        return np.zeros(points.shape, dtype=np.uint64)
    lo, hi = (points.min(axis=0), points.max(axis=0)) if box is None else \
        (np.asarray(b, dtype=np.float64) for b in box)
    extent = float((hi - lo).max())
    scale = (2.0 ** bits - 1.0) / extent if extent > 0 else 0.0
    q = np.floor((points - lo) * scale)
    return np.clip(q, 0, 2.0 ** bits - 1).astype(np.uint64)


def hilbert_keys(points: np.ndarray, bits: int | None = None, box=None) -> np.ndarray:
    """Hilbert-curve index (uint64) of each point, any dimension d with d * bits <= 64
    (``box``: see :func:`quantize`).

    Skilling's transpose algorithm ("Programming the Hilbert curve", AIP Conf. Proc. 707, 2004),
    vectorised over the points.
    """
    points = np.asarray(points, dtype=np.float64)
    d = points.shape[1]
    bits = _default_bits(d) if bits is None else int(bits)
    if d * bits > 64:
        raise ValueError(f"d * bits = {d * bits} > 64: use bits <= {64 // d}")
    X = [c.copy() for c in quantize(points, bits, box).T]
    one = np.uint64(1)
    M = one << np.uint64(bits - 1)
    # Inverse undo of the excess work.
    Q = M
    while Q > one:
        P = Q - one
        for i in range(d):
            hit = (X[i] & Q) != 0
            X[0] = np.where(hit, X[0] ^ P, X[0])               # invert low bits of X[0]
            t = np.where(hit, np.uint64(0), (X[0] ^ X[i]) & P)  # or exchange low bits
            X[0] ^= t
            X[i] ^= t
        Q >>= one
    # Gray encode.
    for i in range(1, d):
        X[i] ^= X[i - 1]
    t = np.zeros_like(X[0])
    Q = M
    while Q > one:
        t = np.where((X[d - 1] & Q) != 0, t ^ (Q - one), t)
        Q >>= one
    for i in range(d):
        X[i] ^= t
    return _interleave(X, bits)


def morton_keys(points: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Morton (Z-order) index (uint64) of each point: interleaved bits of the grid coordinates."""
    points = np.asarray(points, dtype=np.float64)
    d = points.shape[1]
    bits = _default_bits(d) if bits is None else int(bits)
    if d * bits > 64:
        raise ValueError(f"d * bits = {d * bits} > 64: use bits <= {64 // d}")
    return _interleave(list(quantize(points, bits).T), bits)


def _interleave(X: list[np.ndarray], bits: int) -> np.ndarray:
    key = np.zeros_like(X[0])
    one = np.uint64(1)
    for b in range(bits - 1, -1, -1):
        sb = np.uint64(b)
        for Xi in X:
            key = (key << one) | ((Xi >> sb) & one)
    return key


def sfc_order(points: np.ndarray, curve: str = "hilbert") -> np.ndarray:
    """Permutation (int64) listing the points in curve order; ties keep the input order."""
    if curve == "hilbert":
        keys = hilbert_keys(points)
    elif curve == "morton":
        keys = morton_keys(points)
    else:
        raise ValueError(f"unknown space-filling curve {curve!r}: use 'hilbert' or 'morton'")
    return np.argsort(keys, kind="stable").astype(np.int64)


def split_weighted(weights: np.ndarray, nparts: int) -> np.ndarray:
    """Offsets (nparts + 1,) cutting a sequence of positive weights into ``nparts`` runs of
    nearly equal total weight (cut where the running sum crosses k * total / nparts)."""
    if nparts < 1:
        raise ValueError(f"nparts must be >= 1, got {nparts}")
    w = np.asarray(weights, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(w)])
    targets = csum[-1] * np.arange(1, nparts) / nparts
    # Cut at the boundary nearest each target (searchsorted gives the first csum >= target).
    cuts = np.searchsorted(csum, targets, side="left")
    cuts = np.clip(cuts, 0, len(w))
    prev = np.clip(cuts - 1, 0, len(w))
    cuts = np.where(np.abs(csum[prev] - targets) < np.abs(csum[cuts] - targets), prev, cuts)
    offsets = np.concatenate([[0], cuts, [len(w)]]).astype(np.int64)
    return np.maximum.accumulate(offsets)


def sfc_partition(points: np.ndarray, nparts: int, weights: np.ndarray | None = None,
                  curve: str = "hilbert") -> np.ndarray:
    """Part number (int64, 0..nparts-1) of each point: equal-weight runs of the curve order."""
    n = len(points)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    order = sfc_order(points, curve)
    offsets = split_weighted(w[order], nparts)
    part = np.empty(n, dtype=np.int64)
    part[order] = np.repeat(np.arange(nparts, dtype=np.int64), np.diff(offsets))
    return part

"""RBF-FD differentiation matrices (paper section 2.2): polyharmonic splines r^m plus
tensor-product Legendre polynomials of total degree l.

For accuracy order ``p`` (2..6) and an operator of order ``theta`` (1: gradient and the Robin
boundary operator, 2: Laplacian, 4: biharmonic) the authors use

* polynomial degree ``l = p + theta - 1``,
* kernel exponent ``m = l`` (l odd) or ``l - 1`` (l even), clamped to ``5 <= m <= 11``,
* stencil size ``n = 2 * binom(l + d, d) + 1`` nearest neighbours among interior + boundary +
  ghost nodes.

Every stencil is centred at its evaluation point and scaled by its radius, the saddle systems
``[[A, P], [P^T, 0]] [w; lambda] = [L phi; L q]`` are solved in batches with numpy, and the
derivatives are scaled back.  No Python loop over nodes.

Matrices: rows of :func:`laplacian_matrix` / :func:`biharmonic_matrix` / :func:`gradient_matrix`
are interior + boundary nodes (Ni + Nb); rows of :func:`boundary_matrix` are boundary nodes (Nb);
columns are always ``cloud.nodes`` (interior, boundary, ghost).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .polynomials import n_poly, poly_deriv_at_zero, poly_values_first

__all__ = ["stencil_params", "Operator", "make_operator", "rbffd_weights", "weights_to_csr",
           "laplacian_matrix", "gradient_matrix", "boundary_matrix", "biharmonic_matrix",
           "assemble", "THETA", "check_order", "OperatorSpec", "spec_matrix", "spec_matrices", "rbffd_weights_many", "paper_specs", "ROW_KINDS"]

#: Operator order theta of each operator kind.
THETA = {"identity": 1, "gradient": 1, "robin": 1, "laplacian": 2, "biharmonic": 4}

# Stencils per batched solve: about _CHUNK_ENTRIES / (n+M)^2 (73 for 2D p=4).  Measured
# (process time, 2D p = 4, 20k stencils, load ~4): the elementwise work of building the matrices
# costs 0.55 s with 64-stencil chunks, 0.78 s with 256 and 0.94 s with 1024 (cache), while numpy's
# per-call overhead stays negligible.
_CHUNK_ENTRIES = 300_000
# A stencil whose scaled weights sum(|w|) R^theta exceed this is treated as (nearly) singular.
_MAX_LEBESGUE = 1e10
_MAX_RESIDUAL = 1e-8


def stencil_params(order: int, theta: int, dim: int) -> tuple[int, int, int]:
    """Return ``(l, m, n)``: polynomial degree, PHS exponent and stencil size (see module doc)."""
    if isinstance(order, bool) or int(order) != order or not 2 <= order <= 6:
        raise ValueError(f"order p={order!r} is not supported; use an integer 2 <= p <= 6")
    if dim not in (2, 3):
        raise ValueError(f"dimension d={dim} is not supported; use d=2 or d=3")
    l = int(order) + int(theta) - 1
    m = l if l % 2 == 1 else l - 1
    m = min(max(m, 5), 11)
    return l, m, 2 * comb(l + dim, dim) + 1


def check_order(order, dim: int = 2) -> int:
    """The accuracy order p as an int, or ValueError (the one place ``order`` is validated)."""
    stencil_params(order, 1, dim)
    return int(order)


@dataclass
class Operator:
    """A linear differential operator as a sum of terms ``coef * D`` evaluated at the centre.

    ``terms`` is a list of ``(kind, coef)`` with kind one of ``"id"``, ``("d", k)`` (d/dx_k),
    ``("dd", (a, b))`` (d2/dx_a dx_b), ``"lap"``, ``"bilap"`` and ``coef`` a scalar or an array
    with one value per centre. ``theta`` is the operator order (the highest derivative; at
    least 1, so that a pure identity row uses the stencil of the paper's boundary operator).
    """

    terms: list = field(default_factory=list)
    theta: int = 2
    name: str = "operator"


def make_operator(op: str, dim: int, axis: int | None = None, normals=None, alpha=1.0,
                  beta=1.0) -> Operator:
    """Build an :class:`Operator` by name: ``laplacian``, ``gradient`` (needs ``axis``),
    ``robin`` (``alpha n.grad + beta``; needs ``normals``), ``biharmonic``, ``identity``."""
    if op == "laplacian":
        return Operator([("lap", 1.0)], 2, op)
    if op == "biharmonic":
        return Operator([("bilap", 1.0)], 4, op)
    if op == "identity":
        return Operator([("id", 1.0)], 1, op)
    if op == "gradient":
        if axis is None or not 0 <= int(axis) < dim:
            raise ValueError(f"gradient needs axis in 0..{dim - 1}, got {axis!r}")
        return Operator([(("d", int(axis)), 1.0)], 1, f"d/dx{int(axis)}")
    if op == "robin":
        if normals is None:
            raise ValueError("the robin operator needs the unit normals at the centres")
        normals = np.asarray(normals, dtype=np.float64)
        alpha = np.asarray(alpha, dtype=np.float64)
        beta = np.asarray(beta, dtype=np.float64)
        terms = [(("d", k), alpha * normals[:, k]) for k in range(dim)] + [("id", beta)]
        return Operator(terms, 1, "robin")
    raise ValueError(f"unknown operator {op!r}; use one of {sorted(THETA)}")


def _coef(c, sel):
    c = np.asarray(c, dtype=np.float64)
    return c if c.ndim == 0 else c[sel]


def _rhs(op: Operator, Y, r, R, sel, l: int, m: int):
    """Right-hand sides [L phi(|y - y_j|) ; L q_alpha] at y = 0 for a chunk.

    Y (d, c, n) scaled local coordinates (component first), r (c, n) = |Y|, R (c,) stencil
    radii; derivatives of order k in x are those in y times R^-k.
    """
    d, c, n = Y.shape
    M = n_poly(l, d)
    rhs = np.zeros((c, n + M), dtype=np.float64)
    rm2 = r ** (m - 2)
    for kind, coef in op.terms:
        cf = _coef(coef, sel)
        if kind == "id":
            rb = rm2 * r * r
            pb = poly_deriv_at_zero(l, d, (0,) * d)
            k = 0
        elif kind == "lap":
            rb = m * (m + d - 2) * rm2
            pb = sum(poly_deriv_at_zero(l, d, tuple(2 * (j == i) for j in range(d)))
                     for i in range(d))
            k = 2
        elif kind == "bilap":
            rb = m * (m + d - 2) * (m - 2) * (m + d - 4) * r ** (m - 4)
            pb = sum(poly_deriv_at_zero(l, d, tuple(4 * (j == i) for j in range(d)))
                     for i in range(d))
            for i in range(d):
                for j in range(i + 1, d):
                    pb = pb + 2 * poly_deriv_at_zero(
                        l, d, tuple(2 * (q == i or q == j) for q in range(d)))
            k = 4
        elif kind[0] == "d":  # ("d", axis): d/dy_a |y - y_j|^m at 0 = -m |y_j|^(m-2) y_ja
            a = kind[1]
            rb = -m * rm2 * Y[a]
            pb = poly_deriv_at_zero(l, d, tuple(int(j == a) for j in range(d)))
            k = 1
        else:  # ("dd", (a, b)): d2/dy_a dy_b |y - y_j|^m at 0
            a, b = kind[1]  # = m r^(m-2) delta_ab + m (m-2) r^(m-4) y_ja y_jb
            rb = m * (m - 2) * r ** (m - 4) * Y[a] * Y[b]
            if a == b:
                rb = rb + m * rm2
            pb = poly_deriv_at_zero(l, d, tuple(int(j == a) + int(j == b) for j in range(d)))
            k = 2
        scale = cf * R ** (-k)  # broadcasts a scalar or per-centre coefficient
        rhs[:, :n] += scale[:, None] * rb
        rhs[:, n:] += scale[:, None] * pb[None, :]
    return rhs


def _saddle_matrices(Y, l, m, K=None, work=None):
    """The saddle matrices [[A, P], [P^T, 0]] of a chunk: ``A_ij = |y_i - y_j|^m`` (m odd),
    ``P_ia = q_a(y_i)``; ``Y`` (d, c, n) component first. ``K`` (c, n+M, n+M) and ``work``
    (2, c, n, n) are optional buffers. Returns ``(K, PT)`` with ``PT`` (M, c, n) = P^T.

    Every entry is a fixed sequence of IEEE operations (differences, squares and their sum in
    component order, the square root, then (m-1)/2 products), so the matrices do not depend on
    the chunking or the layout. Pairwise distances by explicit differences (d is 2 or 3: cheaper
    and more accurate than a batched Gram matmul)."""
    d, c, n = Y.shape
    M = n_poly(l, d)
    if K is None:
        K = np.empty((c, n + M, n + M), dtype=np.float64)
    if work is None:
        work = np.empty((2, c, n, n), dtype=np.float64)
    D2, tmp = work[0], work[1]
    K[:, n:, n:] = 0.0
    np.subtract(Y[0][:, :, None], Y[0][:, None, :], out=D2)
    np.square(D2, out=D2)
    for k in range(1, d):
        np.subtract(Y[k][:, :, None], Y[k][:, None, :], out=tmp)
        np.square(tmp, out=tmp)
        D2 += tmp
    Ka = K[:, :n, :n]
    np.sqrt(D2, out=Ka)
    for _ in range((m - 1) // 2):  # r^m = r (r^2)^((m-1)/2), in place
        np.multiply(Ka, D2, out=Ka)
    PT = poly_values_first(Y, l)  # (M, c, n), contiguous
    K[:, n:, :n] = PT.transpose(1, 0, 2)
    K[:, :n, n:] = PT.transpose(1, 2, 0)
    return K, PT


def _solve_chunk(Y, rhs, l, m, ids, K=None, work=None):
    """Assemble and solve the saddle systems of one chunk (``Y`` (d, c, n)); check each
    stencil. ``K``, ``work``: optional buffers for :func:`_saddle_matrices`."""
    d, c, n = Y.shape
    K, PT = _saddle_matrices(Y, l, m, K, work)
    try:
        sol = np.linalg.solve(K, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        for i in range(c):  # error path only: find the culprit
            try:
                np.linalg.solve(K[i], rhs[i])
            except np.linalg.LinAlgError:
                raise ValueError(f"RBF-FD stencil of centre {ids[i]} is singular (duplicate or "
                                 "degenerate nodes, e.g. all on a line/plane); check the cloud "
                                 "with PointCloud.validate() or use a lower order") from None
        raise
    w = sol[:, :n]
    # LU with partial pivoting is backward stable, so the residual says little; what flags a
    # (nearly) singular stencil is a non-finite result, a violated polynomial constraint
    # P^T w = L q, or huge weights.
    res = np.abs(np.einsum("mcn,cn->cm", PT, w) - rhs[:, n:]).max(1)
    scale = np.abs(PT).max((0, 2)) * np.abs(w).sum(1) + np.abs(rhs[:, n:]).max(1)
    bad = ~np.isfinite(sol).all(1) | ~(res <= _MAX_RESIDUAL * scale)
    # Lebesgue-type size of the weights in scaled coordinates (scale-free, O(1..100) normally).
    leb = np.abs(w).sum(1) / np.maximum(np.abs(rhs[:, :n]).max(1), 1e-300)
    bad |= ~(leb < _MAX_LEBESGUE)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"RBF-FD stencil of centre {ids[i]} is nearly singular (residual "
                         f"{res[i]:.2e}, weight size {leb[i]:.2e}); the nodes near it are "
                         "degenerate or duplicated -- check PointCloud.validate(), spacing_ratio, "
                         "or use a lower order")
    return w


def rbffd_weights(nodes, centers, op, order: int, *, axis=None, normals=None, alpha=1.0,
                  beta=1.0, tree: cKDTree | None = None, center_ids=None, chunk: int | None = None):
    """RBF-FD weights of ``op`` at arbitrary ``centers`` using stencils from ``nodes``.

    Parameters
    ----------
    nodes : (N, d) array
        Candidate stencil nodes (the matrix columns).
    centers : (C, d) array
        Evaluation points (the matrix rows).
    op : str or Operator
        ``laplacian``, ``gradient`` (with ``axis``), ``robin`` (with ``normals``, per-centre or
        scalar ``alpha``, ``beta``), ``biharmonic``, ``identity``, or an :class:`Operator` whose
        per-centre coefficient arrays have length C.
    order : int
        Accuracy order p, 2..6.
    tree : cKDTree, optional
        A tree over ``nodes`` to reuse.
    center_ids : array, optional
        Names of the centres used in error messages (default 0..C-1).

    Returns
    -------
    indices : (C, n) int64 array of node indices (sorted ascending per row)
    weights : (C, n) float64 array
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    if not isinstance(op, Operator):
        op = make_operator(op, nodes.shape[1], axis=axis, normals=normals, alpha=alpha,
                           beta=beta)
    return rbffd_weights_many(nodes, centers, [op], order, tree=tree, center_ids=center_ids,
                              chunk=chunk)[0]


def rbffd_weights_many(nodes, centers, ops, order: int, *, tree: cKDTree | None = None,
                       center_ids=None, chunk: int | None = None) -> list:
    """:func:`rbffd_weights` of several :class:`Operator` s at the same centres, with ONE
    nearest-neighbour query per chunk of centres (an operator of a smaller stencil takes the
    nearest part of the largest one). Returns a list of ``(indices, weights)``, one per op."""
    nodes = np.asarray(nodes, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    d = nodes.shape[1]
    params = [stencil_params(order, op.theta, d) for op in ops]
    n_max = max(n for _, _, n in params)
    if len(nodes) < n_max:
        op = ops[int(np.argmax([n for _, _, n in params]))]
        raise ValueError(f"order p={order} for the {op.name} in {d}D needs stencils of {n_max} "
                         f"nodes but the cloud has only {len(nodes)}; use more nodes or a lower "
                         "order")
    C = len(centers)
    ids = np.arange(C) if center_ids is None else np.asarray(center_ids)
    if chunk is None:
        chunk = max(16, _CHUNK_ENTRIES // max((n + n_poly(l, d)) ** 2 for l, _, n in params))
    if tree is None:
        tree = cKDTree(nodes)
    out = [(np.empty((C, n), dtype=np.int64), np.empty((C, n), dtype=np.float64))
           for _, _, n in params]
    # One set of buffers per operator, reused by every chunk; the last chunk uses their
    # leading part.
    bufs = [(np.empty((min(chunk, C), n + n_poly(l, d), n + n_poly(l, d)), dtype=np.float64),
             np.empty((2, min(chunk, C), n, n), dtype=np.float64)) for l, _, n in params]
    with _single_threaded_blas():
        for s in range(0, C, chunk):
            sel = slice(s, min(C, s + chunk))
            ctr = centers[sel]
            c = len(ctr)
            dist_all, idx_all = tree.query(ctr, k=n_max)
            dist_all, idx_all = dist_all.reshape(c, -1), idx_all.reshape(c, -1)
            for op, (l, m, n), (idx_out, w_out), (K, work) in zip(ops, params, out, bufs):
                dist, idx = dist_all[:, :n], idx_all[:, :n]
                R = dist[:, -1]
                # scaled local coordinates, component first: (d, c, n)
                Y = np.stack([(nodes[idx, k] - ctr[:, k, None]) / R[:, None] for k in range(d)])
                r = dist / R[:, None]
                rhs = _rhs(op, Y, r, R, sel, l, m)
                w = _solve_chunk(Y, rhs, l, m, ids[sel], K[:c], work[:, :c])
                # Sorted column indices per row: canonical CSR and better SpMV locality.
                o = np.argsort(idx, axis=1)
                idx_out[sel] = np.take_along_axis(idx, o, 1)
                w_out[sel] = np.take_along_axis(w, o, 1)
    return out


def _single_threaded_blas():
    """Batched small solves gain nothing from BLAS threads (which thrash above n ~ 100), so limit
    BLAS to one thread while assembling when threadpoolctl is available."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it, OPENBLAS_NUM_THREADS=1 does the same
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def weights_to_csr(indices, weights, n_cols: int) -> sp.csr_matrix:
    """CSR matrix with row i holding ``weights[i]`` at columns ``indices[i]``."""
    C, n = indices.shape
    indptr = np.arange(0, C * n + 1, n, dtype=np.int64)
    A = sp.csr_matrix((weights.ravel(), indices.ravel(), indptr), shape=(C, n_cols))
    A.has_sorted_indices = True
    return A


def _rows(rows, total: int, what: str):
    if rows is None:
        return np.arange(total)
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"rows must be a 1-D integer array of {what} row indices")
    if rows.size and (rows.min() < 0 or rows.max() >= total):
        raise ValueError(f"rows must lie in 0..{total - 1} (the {what} rows), got "
                         f"{rows.min()}..{rows.max()}")
    return rows


def _cloud_op_matrix(cloud, order, op_name, rows, **kw):
    nodes = cloud.nodes
    Nc = cloud.n_interior + cloud.n_boundary
    rows = _rows(rows, Nc, "interior+boundary")
    idx, w = rbffd_weights(nodes, nodes[rows], op_name, order, center_ids=rows, **kw)
    return weights_to_csr(idx, w, len(nodes))


#: Row sets an operator can have: interior + boundary nodes (the PDE rows of L), boundary nodes.
ROW_KINDS = ("collocation", "boundary")


@dataclass
class OperatorSpec:
    """An operator to assemble on a cloud: its rows and its terms, coefficients per row.

    Parameters
    ----------
    name : str
    rows : {"collocation", "boundary"}
        Interior + boundary nodes (``cloud.collocation``, the rows of L) or boundary nodes.
    terms : list of (kind, coef)
        Term kinds as in :class:`Operator`; ``coef`` a number or a callable ``ids -> array``
        giving the coefficient at the rows ``ids`` (numbers within ``rows``), so that a rank
        evaluates coefficients for the rows it owns only.
    theta : int
        Operator order (highest derivative order; 1 is used for a pure identity).
    """

    name: str
    rows: str
    terms: list
    theta: int

    def __post_init__(self):
        if self.rows not in ROW_KINDS:
            raise ValueError(f"operator rows must be one of {ROW_KINDS}, got {self.rows!r}")

    def operator(self, ids) -> Operator:
        """The :class:`Operator` at the rows ``ids``."""
        return Operator([(k, c(ids) if callable(c) else c) for k, c in self.terms],
                        max(1, int(self.theta)), self.name)


def spec_matrices(cloud, order: int, specs: dict, rows: dict | None = None) -> dict:
    """The RBF-FD matrices of ``specs`` (name -> :class:`OperatorSpec`), columns
    ``cloud.nodes``; ``rows`` (row kind -> numbers within it) selects a subset of each kind's
    rows (a rank's own rows). Operators on the same rows share one neighbour query."""
    ni, nb = cloud.n_interior, cloud.n_boundary
    nodes = cloud.nodes
    tree = cKDTree(nodes)
    out = {}
    for kind in ROW_KINDS:
        names = [k for k, sp_ in specs.items() if sp_.rows == kind]
        if not names:
            continue
        colloc = kind == "collocation"
        r = _rows(None if rows is None else rows.get(kind), ni + nb if colloc else nb,
                  "interior+boundary" if colloc else "boundary")
        centers = nodes[r] if colloc else cloud.boundary[r]
        res = rbffd_weights_many(nodes, centers, [specs[k].operator(r) for k in names], order,
                                 tree=tree, center_ids=r if colloc else ni + r)
        for k, (idx, w) in zip(names, res):
            out[k] = weights_to_csr(idx, w, len(nodes))
    return out


def spec_matrix(cloud, order: int, spec: OperatorSpec, rows=None) -> sp.csr_matrix:
    """The RBF-FD matrix of one spec at its rows (or the subset ``rows``)."""
    return spec_matrices(cloud, order, {spec.name: spec},
                         None if rows is None else {spec.rows: rows})[spec.name]


def paper_specs(cloud, alpha=1.0, beta=1.0) -> dict:
    """The paper's operators: ``L`` (Laplacian, rows interior + boundary) and ``B`` (Robin
    ``alpha n.grad + beta``, rows boundary); ``alpha``, ``beta`` scalars or one per boundary
    node."""
    nb, d = cloud.n_boundary, cloud.dim
    coefs = []
    for name, v in (("alpha", alpha), ("beta", beta)):
        v = np.asarray(v, dtype=np.float64)
        if v.ndim > 1 or (v.ndim == 1 and len(v) != nb):
            raise ValueError(f"{name} must be a scalar or one value per boundary node "
                             f"(length {nb}), got shape {v.shape}")
        coefs.append(np.broadcast_to(v, (nb,)))
    a, b = coefs
    normals = np.asarray(cloud.normals, dtype=np.float64)
    robin = [(("d", k), (lambda ids, k=k: a[ids] * normals[ids, k])) for k in range(d)]
    robin.append(("id", lambda ids: b[ids]))
    return {"L": OperatorSpec("L", "collocation", [("lap", 1.0)], 2),
            "B": OperatorSpec("B", "boundary", robin, 1)}


def laplacian_matrix(cloud, order: int, rows=None) -> sp.csr_matrix:
    """Laplacian: rows interior+boundary (or the subset ``rows``), columns ``cloud.nodes``."""
    return spec_matrix(cloud, order, OperatorSpec("L", "collocation", [("lap", 1.0)], 2), rows)


def biharmonic_matrix(cloud, order: int, rows=None) -> sp.csr_matrix:
    """Biharmonic (Laplacian squared), same rows/columns as :func:`laplacian_matrix`."""
    return _cloud_op_matrix(cloud, order, "biharmonic", rows)


def gradient_matrix(cloud, order: int, axis: int, rows=None) -> sp.csr_matrix:
    """d/dx_axis, same rows/columns as :func:`laplacian_matrix`."""
    return _cloud_op_matrix(cloud, order, "gradient", rows, axis=axis)


def boundary_matrix(cloud, order: int, alpha=1.0, beta=1.0, rows=None) -> sp.csr_matrix:
    """Robin operator ``alpha n.grad + beta`` at the boundary nodes (Dirichlet: alpha=0,
    Neumann: beta=0); ``alpha``/``beta`` scalars or length-Nb arrays.  Rows: boundary nodes (or
    the subset ``rows`` of 0..Nb-1); columns ``cloud.nodes``."""
    return spec_matrix(cloud, order, paper_specs(cloud, alpha, beta)["B"], rows)


def assemble(cloud, order: int, alpha=1.0, beta=1.0):
    """Return ``(L, B)``: the Laplacian and the Robin boundary matrix of a cloud."""
    return laplacian_matrix(cloud, order), boundary_matrix(cloud, order, alpha, beta)

"""``discretize``: a declared problem on a point cloud -> operators, data and residuals.

The one builder for serial and distributed runs (a serial run is a one-part partition):

1. the communicator is taken or detected once (:func:`~dtpinn_dist.comm.as_comm`); under MPI,
   rank 0's cloud is broadcast so every rank holds the same bits;
2. the problem is analysed for the cloud's dimension (:meth:`Problem.analyse`) and each boundary
   part of the cloud is matched with its condition;
3. exactly the RBF-FD operators the declaration needs are assembled, once: ``L`` (the PDE's
   linear part), ``B`` (the linear parts of all boundary conditions, one row per boundary node),
   and one operator per derivative the pointwise parts read (``D:u_x`` on the rows, ``Db:u_x`` on
   the boundary) -- with torch CSR, CuPy, or PETSc MPIAIJ matrices (each rank its own rows);
4. f, g, u0 and the coefficients are evaluated at this rank's points, once, and checked finite.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np
import torch

from ..comm import as_comm
from ..operators.rbffd import OperatorSpec, check_order
from .compile import compile_expr
from .discrete import BoundaryPart, Discretization, PDEPart
from .forms import AXES, term_key
from .problem import DEFAULT_PART
from .lift import build_lift, exact_parts
from .weights import resolve, row_weights

__all__ = ["discretize", "METHODS", "BACKENDS"]

METHODS = ("dt", "vanilla")
BACKENDS = ("torch", "cupy", "petsc")
_DTYPES = {"fp64": torch.float64, "float64": torch.float64, "fp32": torch.float32,
           "float32": torch.float32}


def _dtype(dtype, method):
    if dtype is None:  # the paper's pairing: fp64 DT-PINNs, fp32 vanilla PINNs
        return torch.float64 if method == "dt" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in (torch.float64, torch.float32):
        return dtype
    if str(dtype).lower() in _DTYPES:
        return _DTYPES[str(dtype).lower()]
    raise ValueError(f"unknown dtype {dtype!r}: use 'fp64' or 'fp32'")


def _cloud_parts(cloud):
    """(tags per boundary node, name -> tag) of a cloud; one part 'boundary' when untagged."""
    tags = getattr(cloud, "boundary_tags", None)
    names = getattr(cloud, "tag_names", None) or {"boundary": 0}
    tags = np.zeros(cloud.n_boundary, np.int64) if tags is None else np.asarray(tags, np.int64)
    return tags, dict(names)


def _match_parts(bcs: dict, tags, names) -> dict:
    """Tag -> key of the condition that applies to it (every part of the cloud must get one)."""
    present = [int(t) for t in np.unique(tags)]
    by_tag = {}
    label = {t: n for n, t in names.items()}
    for key in bcs:
        if key == DEFAULT_PART:
            continue
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            tag = int(key)
        elif isinstance(key, str) and key in names:
            tag = names[key]
        else:
            raise ValueError(f"boundary part {key!r} is not a part of this cloud; its parts are "
                             f"{', '.join(repr(n) for n in sorted(names, key=names.get))} "
                             f"(or use the key {DEFAULT_PART!r} for all others)")
        if tag not in present:
            raise ValueError(f"boundary part {key!r} (tag {tag}) has no nodes in this cloud; "
                             f"the cloud's parts are tags {present}")
        if tag in by_tag:
            raise ValueError(f"boundary part {label.get(tag, tag)!r} has two conditions "
                             f"({by_tag[tag]!r} and {key!r})")
        by_tag[tag] = key
    for t in present:
        if t not in by_tag:
            if DEFAULT_PART not in bcs:
                raise ValueError(f"boundary part {label.get(t, t)!r} (tag {t}) has no condition; "
                                 f"add it to bc= or give a default with the key "
                                 f"{DEFAULT_PART!r}")
            by_tag[t] = DEFAULT_PART
    return by_tag


def _numeric(value, shape):
    out = np.asarray(value, dtype=np.float64)
    return np.ascontiguousarray(np.broadcast_to(out, shape), dtype=np.float64)


def _coord_env(P, normals=None, t=None):
    """numpy env of the coordinates (columns when ``t`` is an array of slices)."""
    col = t is not None and np.ndim(t) > 0
    env = {a: (P[:, k:k + 1] if col else P[:, k]) for k, a in enumerate(AXES[:P.shape[1]])}
    if normals is not None:
        env.update({"n" + a: (normals[:, k:k + 1] if col else normals[:, k])
                    for k, a in enumerate(AXES[:P.shape[1]])})
    if t is not None:
        env["t"] = t[None, :] if col else t
    return env


class _Checker:
    """Collects non-finite data on this rank; :meth:`raise_any` decides collectively."""

    def __init__(self):
        self.msg = None

    def check(self, what, values, P):
        if self.msg is None and not np.all(np.isfinite(values)):
            bad = np.argwhere(~np.isfinite(np.asarray(values).reshape(len(P), -1)))[0, 0]
            self.msg = (f"{what} is not finite at the point {tuple(float(v) for v in P[bad])}; "
                        "check the expression (division by zero, log of a negative number?)")

    def raise_any(self, comm):
        msgs = comm.allgather(self.msg)
        first = next((m for m in msgs if m), None)
        if first:
            raise ValueError(first)


def _checked_cloud(cloud, comm):
    """Rank 0's cloud, validated and with ghosts, on every rank; a bad cloud raises the same
    error on every rank (checked once, on rank 0: seconds at a million nodes)."""
    msg = None
    if comm.rank == 0:
        try:
            cloud.validate()
            if cloud.ghost is None:
                cloud = cloud.with_ghost()
        except ValueError as exc:
            msg = str(exc)
    if comm.size > 1:
        cloud, msg = comm.bcast((cloud, msg) if comm.rank == 0 else None)
    if msg:
        raise ValueError(msg)
    return cloud


def discretize(problem, cloud, order: int = 4, *, method: str = "dt", comm=None,
               backend: str | None = None, dtype=None, device=None, partitioner: str = "auto",
               partition=None, n_test: int | None = None,
               weighting: str = "auto") -> Discretization:
    """Turn a declared problem and a point cloud into this rank's :class:`Discretization`.

    Parameters
    ----------
    problem : Problem
    cloud : PointCloud
        Interior, boundary (with normals and optional part tags), test points. Ghost nodes are
        added when missing (paper section 2.2). Under MPI, rank 0's cloud is used.
    order : int
        RBF-FD order p (2..6).
    method : {"dt", "vanilla"}
        DT-PINN (RBF-FD derivatives, eq. (12), (16)) or vanilla PINN (autograd, eq. (4)).
    comm : mpi4py communicator, MPIComm, SerialComm or None
        None: MPI ``COMM_WORLD`` when launched on several ranks, else one process.
    backend : {"torch", "cupy", "petsc"}, optional
        Default: "petsc" on several ranks, else "torch". PETSc matrix types come from its
        options database (``-mat_type aijcusparse``).
    dtype : {"fp64", "fp32"} or torch dtype, optional
        Default: fp64 for DT-PINNs, fp32 for vanilla PINNs (the paper's pairing).
    device : str, optional
        Torch device (default "cpu"; "cuda" for the cupy backend).
    partitioner : str
        How nodes are split over ranks (PETSc backend).
    partition : Partition, optional
        A given split of the nodes over the ranks instead (PETSc backend).
    n_test : int, optional
        Use only the first ``n_test`` of ``cloud.test``.
    weighting : {"auto", "symbol", "count"}
        Row weights of the loss (:mod:`~dtpinn_dist.problem.weights`): ``symbol`` divides each
        row by its operator's size on the domain's smoothest mode (every row weighs what the
        error it causes costs), ``count`` is the paper's per-block ``1/sqrt(rows)`` (eq. (12));
        ``auto`` (default): ``symbol`` when a part has a Dirichlet condition, else ``count``.

    Returns
    -------
    Discretization
        Collective to build; its residual and loss methods are collective too.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    comm = as_comm(comm)
    backend = backend or ("petsc" if comm.size > 1 else "torch")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if comm.size > 1 and backend != "petsc":
        raise ValueError(f"backend {backend!r} is serial; with {comm.size} MPI ranks use 'petsc'")
    dtype = _dtype(dtype, method)
    device = torch.device(device or ("cuda" if backend == "cupy" else "cpu"))
    cloud = _checked_cloud(cloud, comm)
    check_order(order, cloud.dim)
    an = problem.analyse(cloud.dim)
    tags, names = _cloud_parts(cloud)
    by_tag = _match_parts(an.bcs, tags, names)
    dim, time_dep = cloud.dim, problem.time_dependent
    weighting = resolve(weighting, [an.bcs[k][1].theta for k in set(by_tag.values())])
    exact = exact_parts(an)
    if exact and (method != "dt" or time_dep):
        raise ValueError(f"exact Dirichlet conditions (part {exact[0]!r}) are built for steady "
                         "DT-PINNs; use dt.Dirichlet() without exact=True (the weighted form) "
                         + ("for a time-dependent problem" if time_dep else
                            f"with method {method!r}"))
    from ..resources import check_memory
    # f, g, u0 and the coordinates at every row and time slice (a few arrays each), checked
    # before anything of that size is built
    check_memory(8 * 8.0 * cloud.n_nodes * len(problem.times),
                 f"the data of {cloud.n_nodes} nodes x {len(problem.times)} time slice(s)",
                 fix="use fewer nodes or time steps (nt), or more ranks")
    space = list(AXES[:dim])
    tnames = ["t"] if time_dep else []
    nrm = ["n" + a for a in space]
    colloc, bnd_nodes, normals = cloud.collocation, cloud.boundary, cloud.normals

    # ---- operator specs: coefficients evaluated at the rows a rank asks for
    def coef_rows(c):
        cc = compile_expr(c, space)
        return float(cc({}, "numpy")) if cc.is_constant else \
            (lambda ids: _numeric(cc(_coord_env(colloc[ids]), "numpy"), (len(ids),)))

    specs = {}
    pde = an.pde
    if pde.linear:
        specs["L"] = OperatorSpec("L", "collocation",
                                  [(k, coef_rows(c)) for k, c in pde.linear], pde.theta)
    fields_pde = {}
    for name, alpha in pde.derivs.items():
        specs["D:" + name] = OperatorSpec("D:" + name, "collocation", [(term_key(alpha), 1.0)],
                                          sum(alpha))
        fields_pde[name] = "D:" + name
    for name in ("u", "u_t"):
        if name in pde.rest_fields:
            fields_pde[name] = name

    groups = {}  # condition key -> boundary positions (0..Nb-1) of the parts it covers
    for tag, key in sorted(by_tag.items()):
        groups.setdefault(key, []).append(np.flatnonzero(tags == tag))
    groups = {k: np.sort(np.concatenate(v)) for k, v in groups.items()}
    owner = np.empty(cloud.n_boundary, dtype=object)
    for key, pos in groups.items():
        owner[pos] = key
    bterms = {}  # term key -> {condition key: coefficient expr}
    btheta = 0
    for key in groups:
        _, form = an.bcs[key]
        btheta = max(btheta, form.theta)
        for k, c in form.linear:
            bterms.setdefault(k, {})[key] = c

    def coef_bnd(per_key):
        comp = {k: compile_expr(c, space + nrm) for k, c in per_key.items()}

        def f(ids):
            out = np.zeros(len(ids))
            for key, cc in comp.items():
                sel = owner[ids] == key
                if sel.any():
                    i = ids[sel]
                    out[sel] = _numeric(cc(_coord_env(bnd_nodes[i], normals[i]), "numpy"),
                                        (len(i),))
            return out
        return f

    if bterms:
        order_keys = sorted(bterms, key=_term_order)
        specs["B"] = OperatorSpec("B", "boundary", [(k, coef_bnd(bterms[k])) for k in order_keys],
                                  max(1, btheta))
    for key in groups:
        for name, alpha in an.bcs[key][1].derivs.items():
            specs.setdefault("Db:" + name, OperatorSpec("Db:" + name, "boundary",
                                                        [(term_key(alpha), 1.0)], sum(alpha)))

    # ---- assemble (each rank: its rows only)
    if backend == "petsc":
        from ..distributed.assembly import distributed_system
        system = distributed_system(cloud, order, comm, specs, dtype=dtype,
                                    partitioner=partitioner, partition=partition,
                                    n_test=n_test, device=device)
    else:
        from ..operators.torch_csr import serial_system
        system = serial_system(cloud, order, specs, dtype=dtype, device=device, backend=backend)
        if n_test is not None and system.test_points is not None:
            system.test_points = system.test_points[:n_test]

    # ---- data at this rank's points
    X = system.nodes
    rows, bnd, inner = system.row_index, system.boundary_index, system.interior_index
    T = problem.times if time_dep else None
    shape_rows = (len(rows),) + ((len(T),) if time_dep else ())
    shape_bnd = (len(bnd),) + ((len(T),) if time_dep else ())
    chk = _Checker()

    def ten(a):
        return torch.tensor(np.asarray(a), dtype=dtype, device=device)

    derived = " (derived from the exact solution)" if problem.f is None else ""
    f = compile_expr(an.f, space + tnames, what=f"the forcing f{derived}")
    data = {"X": ten(X)}
    for where, idx in (("rows", rows), ("inner", inner)):
        vals = _numeric(f(_coord_env(X[idx], t=T), "numpy"), (len(idx),) + shape_rows[1:])
        chk.check(f"the forcing f{derived}", vals, X[idx])
        data["f_" + where] = ten(vals)
    g = np.zeros(shape_bnd)
    btags = system.boundary_tags
    local_groups = {}
    for tag, key in by_tag.items():
        pos = np.flatnonzero(btags == tag)
        if len(pos):
            local_groups.setdefault(key, []).append(pos)
    local_groups = {k: np.sort(np.concatenate(v)) for k, v in local_groups.items()}
    for key, pos in local_groups.items():
        gk = compile_expr(an.g[key], space + tnames + nrm,
                          what=f"the boundary data g of part {key!r}"
                          + (" (derived from the exact solution)" if an.bcs[key][0].g is None
                             else ""))
        P = X[bnd[pos]]
        g[pos] = _numeric(gk(_coord_env(P, system.normals[pos], T), "numpy"),
                          (len(pos),) + shape_bnd[1:])
        chk.check(f"the boundary data g of part {key!r}" + (
            " (derived from the exact solution)" if an.bcs[key][0].g is None else ""), g[pos], P)
    data["g"] = ten(g)
    if time_dep:
        u0 = _numeric(compile_expr(an.u0, space, what="the initial value u0")(
            _coord_env(X[rows]), "numpy"), (len(rows),))
        chk.check("the initial value u0", u0, X[rows])
        data["u0"] = ten(u0)
    for name, idx in (("rows", rows), ("bnd", bnd), ("inner", inner)):
        data[name + "_idx"] = torch.as_tensor(np.asarray(idx, np.int64), device=device)

    def tcoords(P, nr=None):
        col = time_dep
        env = {a: ten(P[:, k:k + 1] if col else P[:, k]) for k, a in enumerate(space)}
        if nr is not None:
            env.update({"n" + a: ten(nr[:, k:k + 1] if col else nr[:, k])
                        for k, a in enumerate(space)})
        if time_dep:
            env["t"] = ten(T[None, :])
        return env

    data["coords_rows"] = tcoords(X[rows])
    data["coords_inner"] = tcoords(X[inner])
    data["coords_bnd"] = tcoords(X[bnd], system.normals)

    def lin_values(terms, P, nr=None, owner_keys=None):
        out = []
        for k, c in terms:
            cc = compile_expr(c, space + (nrm if nr is not None else []))
            if cc.is_constant:
                out.append(float(cc({}, "numpy")))
            else:
                v = _numeric(cc(_coord_env(P, nr), "numpy"), (len(P),))
                chk.check("a coefficient of the PDE", v, P)
                out.append(ten(v[:, None] if time_dep else v))
        return out

    data["lin_coef_rows"] = lin_values(pde.linear, X[rows])
    data["lin_coef_inner"] = lin_values(pde.linear, X[inner])
    lin_bnd = []
    if bterms:
        local_owner = np.empty(len(bnd), dtype=object)
        for key, pos in local_groups.items():
            local_owner[pos] = key
        for k in sorted(bterms, key=_term_order):
            v = np.zeros(len(bnd))
            for key, c in bterms[k].items():
                sel = local_owner == key
                if sel.any():
                    cc = compile_expr(c, space + nrm)
                    v[sel] = _numeric(cc(_coord_env(X[bnd][sel], system.normals[sel]),
                                         "numpy"), (int(sel.sum()),))
            chk.check("a coefficient of a boundary condition", v, X[bnd])
            lin_bnd.append((k, ten(v[:, None] if time_dep else v)))
    data["lin_coef_bnd"] = lin_bnd
    data["nb_shape"] = shape_bnd
    chk.raise_any(comm)

    test = system.test_points if system.test_points is not None else X[rows]
    data["test"] = np.asarray(test, dtype=np.float64)
    if an.exact is not None:
        ex = compile_expr(an.exact, space + tnames, what="the exact solution")
        data["exact"] = lambda P, t: _numeric(
            ex(_coord_env(P, t=None if not time_dep else float(t)), "numpy"), (len(P),))
    else:
        data["exact"] = None

    rest_names = space + tnames + ["u", "u_t"] + list(pde.derivs)
    pde_part = PDEPart(
        op="L" if pde.linear else None, linear=pde.linear,
        rest=None if pde.is_linear else compile_expr(pde.rest, rest_names),
        fields=fields_pde,
        partials={k: compile_expr(v, rest_names) for k, v in pde.rest_partials().items()
                  if k != "u_t"} if not pde.is_linear else {})
    bparts = []
    for key, pos in local_groups.items():
        cond, form = an.bcs[key]
        names_b = space + tnames + nrm + ["u"] + list(form.derivs)
        fields = {n: ("u" if n == "u" else "Db:" + n) for n in form.rest_fields}
        bparts.append(BoundaryPart(
            key=key, rows=torch.as_tensor(pos, dtype=torch.int64, device=device),
            rest=None if form.is_linear else compile_expr(form.rest, names_b), fields=fields,
            partials={k: compile_expr(v, names_b) for k, v in form.rest_partials().items()},
            linear=form.linear))
    weights = _weights(weighting, cloud, system, method, an, local_groups, data, pde_part,
                       bparts, ten, problem.times, time_dep)
    lift = build_lift(an, cloud, order, by_tag, discretize) if exact else None
    label = {t: n for n, t in names.items()}
    nodes = np.vstack([cloud.interior, cloud.boundary])  # the global cloud: same on every rank
    box = (list(nodes.min(0)) + ([float(T[0])] if time_dep else []),
           list(nodes.max(0)) + ([float(T[-1])] if time_dep else []))
    info = {"weighting": weighting, "input_box": [[float(v) for v in b] for b in box],
            "backend": backend, "dtype": "fp64" if dtype == torch.float64 else "fp32",
            "device": str(device), "ranks": comm.size, "order": int(order),
            "operators": {k: getattr(v, "nnz", None) for k, v in system.ops.items()},
            "n_interior": cloud.n_interior, "n_boundary": cloud.n_boundary,
            "n_nodes": cloud.n_nodes, "n_test": None if cloud.test is None else len(cloud.test),
            "parts": {str(label.get(t, t)): str(k) for t, k in sorted(by_tag.items())},
            "cloud_hash": cloud_hash(cloud),
            "setup_time_s": time.perf_counter() - t0}
    return Discretization(problem, an, system, method, pde_part, bparts, data, int(order),
                          info, weights, lift)


def _weights(rule, cloud, system, method, an, local_groups, data, pde_part, bparts, ten,
             times, column) -> dict:
    """The loss's row weights for this rank's rows (:mod:`.weights`), from the linear parts'
    coefficients at the rows and the pointwise parts' partial derivatives at u = 0: tensors for
    the PDE and boundary blocks (columns when time-dependent), a float for the initial
    values."""
    def num(c):
        return c.detach().cpu().numpy().reshape(-1) if isinstance(c, torch.Tensor) else c

    bnd_orders = np.zeros(len(system.boundary_index), dtype=np.int64)
    for key, pos in local_groups.items():
        bnd_orders[pos] = an.bcs[key][1].theta
    bnd_pointwise = []
    dt_rows = method == "dt"
    coef = data["lin_coef_rows" if dt_rows else "lin_coef_inner"]
    X = system.nodes
    P = X[system.row_index if dt_rows else system.interior_index]
    pointwise = []
    if rule == "symbol":  # the pointwise parts' sizes near u = 0 (at the first time slice)
        t0 = {"t": float(times[0])} if column else {}
        pointwise = _pointwise_terms(pde_part, an.pde.derivs, {**_coord_env(P), **t0}, len(P))
        bnd = system.boundary_index
        for bp in bparts:  # each part's pointwise terms on its rows, zero elsewhere
            r = bp.rows.cpu().numpy()
            env = {**_coord_env(X[bnd[r]], system.normals[r]), **t0}
            for k, c in _pointwise_terms(bp, an.bcs[bp.key][1].derivs, env, len(r)):
                full = np.zeros(len(bnd))
                full[r] = c
                bnd_pointwise.append((k, full))
    w = row_weights(rule, cloud,
                    pde_terms=[(k, num(c)) for (k, _), c in zip(an.pde.linear, coef)]
                    + pointwise,
                    pde_rows=len(system.row_index if dt_rows else system.interior_index),
                    pde_order=an.pde.theta,
                    pde_count=system.n_collocation if dt_rows else system.n_interior,
                    bnd_terms=[(k, num(c)) for k, c in data["lin_coef_bnd"]] + bnd_pointwise,
                    bnd_orders=bnd_orders, bnd_count=system.n_boundary,
                    ic_count=system.n_collocation, slices=len(times))
    for k in ("pde", "bc"):
        w[k] = ten(w[k][:, None] if column else w[k])
    return w


def _pointwise_terms(part, derivs: dict, env: dict, n: int) -> list:
    """The pointwise part's partial derivatives at u = 0 (and its derivatives 0) as linear
    terms ``(term key, coefficient per row)``: ``+ u`` in a PDE, ``u**2`` (zero), ``exp(u)``
    (one), ``u*dx(u)`` (zero) -- the size of the operator near the zero function."""
    if not part.partials:
        return []
    env = dict(env)
    zero = np.zeros(n)
    for name in part.fields:
        env[name] = zero
    out = []
    for name, comp in part.partials.items():
        if name == "u_t":
            continue
        with np.errstate(all="ignore"):
            c = np.broadcast_to(np.asarray(comp(env, "numpy"), dtype=np.float64), (n,))
        c = np.where(np.isfinite(c), c, 0.0)  # a partial singular at u = 0 adds nothing
        out.append(("id" if name == "u" else term_key(derivs[name]), c))
    return out


def cloud_hash(cloud) -> str:
    """Hex digest of the exact bits of what training sees of a cloud: interior, boundary,
    normals, ghost nodes and boundary part tags (not the test points, which only score the
    result). Checkpoints carry it, so a run is never continued on other nodes."""
    h = hashlib.sha256()
    for name in ("interior", "boundary", "normals", "ghost", "boundary_tags"):
        a = getattr(cloud, name)
        h.update(name.encode())
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def _term_order(k):
    """Deterministic order of boundary operator terms: derivatives by axis, the identity last
    (as the paper's Robin operator ``alpha n.grad + beta``)."""
    if k == "id":
        return (2, 0, 0)
    if isinstance(k, str):
        return (1, 0, 0)
    if k[0] == "d":
        return (0, 1, k[1])
    return (0, 2, k[1][0] * 3 + k[1][1])

"""A declared problem on this rank's share of a point cloud: residuals, losses and metrics.

One class for DT-PINNs and vanilla PINNs; they differ only in where derivative values come from:

* ``method="dt"`` (paper eq. (12), (16)): the network on all nodes (interior, boundary, ghost),
  derivatives by the sparse RBF-FD operators (one SpMV for the PDE's linear part), the PDE on
  interior + boundary rows; ``u_t`` by autograd (the paper's mixed treatment of time);
* ``method="vanilla"`` (eq. (4)): derivatives by autograd, the PDE on interior nodes.

Residual vector (this rank's rows): each term of the loss divided by the square root of its
GLOBAL count, so the global loss is ``comm.sum((r * r).sum())``:
``pde`` (``F(u) - f``; ``N_rows`` or ``(Nt+1) N_rows`` entries), ``bc`` (``G(u) - g`` on every
boundary part), and for time-dependent problems ``ic`` (``u(x, t0) - u0`` on the rows).
Time-dependent blocks have one column per time slice and are flattened row-major.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..operators.linear import spmv
from .autograd import autograd_fields, field_key

__all__ = ["Discretization", "PDEPart", "BoundaryPart"]


class PDEPart:
    """The PDE ``F = (linear part) + R`` on the rows, ready to evaluate (built by discretize).

    Attributes
    ----------
    op : str or None
        Name of the assembled linear operator (``"L"``) in ``system.ops``.
    linear : list of (field name, coefficient)
        The linear terms for the autograd side (coefficient: float or tensor at the points).
    rest : Compiled or None
        The pointwise part.
    fields : dict
        Field symbol of ``rest`` -> operator name (``"u"``, ``"u_t"`` read the values).
    partials : dict
        Field symbol -> Compiled ``dR/d(field)`` (the declared Jacobian structure).
    """

    def __init__(self, op, linear, rest, fields, partials):
        self.op, self.linear, self.rest, self.fields, self.partials = (op, linear, rest, fields,
                                                                       partials)


class BoundaryPart:
    """One boundary part's pointwise term: its rows (positions among the boundary rows) and
    ``R_b``; the linear parts of all conditions are one operator ``"B"``."""

    def __init__(self, key, rows, rest, fields, partials, linear):
        self.key, self.rows, self.rest = key, rows, rest
        self.fields, self.partials, self.linear = fields, partials, linear


class Discretization:
    """The result of :func:`~dtpinn_dist.problem.discretize.discretize` (see module docstring).

    Attributes
    ----------
    problem : Problem
    system : DiscreteSystem
        This rank's nodes, operators, counts and communicator.
    method : {"dt", "vanilla"}
    comm, dtype, device, dim, times
    """

    def __init__(self, problem, analysis, system, method, pde, bparts, data, order, info,
                 weights, lift=None):
        self.problem, self.analysis, self.system = problem, analysis, system
        #: row weights of the blocks (:mod:`.weights`): ``pde`` (per collocation row, DT; per
        #: interior point, vanilla), ``bc`` (per boundary row), ``ic``; columns when
        #: time-dependent (broadcast over the slices)
        self.weights = weights
        #: exact Dirichlet conditions (:mod:`.lift`): u = G + phi N; None without
        self.lift = lift
        self._G = self._phi = None
        if lift is not None:
            G, phi = lift.local(system.nodes)
            self._G = torch.as_tensor(G, dtype=system.dtype, device=system.device)
            self._phi = torch.as_tensor(phi, dtype=system.dtype, device=system.device)
        self.method = method
        self.pde, self.bparts = pde, bparts
        self.data = data
        self.order = order
        self.info = info
        self.comm = system.comm
        self.dtype, self.device = system.dtype, system.device
        self.dim = system.dim
        self.time_dependent = problem.time_dependent
        self.times = problem.times
        self.m = len(self.times)
        self._exact_cache = None

    # ------------------------------------------------------------------ sizes
    @property
    def input_box(self):
        """``(lo, hi)`` of the network's inputs: the cloud's bounding box (and the time
        interval), for the network's input map (:class:`~dtpinn_dist.model.mlp.MLP`)."""
        return tuple(self.info["input_box"])

    @property
    def input_dim(self) -> int:
        """Inputs of the network: the coordinates, and time for time-dependent problems."""
        return self.dim + (1 if self.time_dependent else 0)

    @property
    def network_points(self) -> int:
        """Points the network is evaluated at per loss evaluation (this rank): all nodes times
        the time slices (DT), or the interior, boundary (and initial) points (vanilla)."""
        d = self.data
        if self.method == "dt":
            return len(d["X"]) * self.m
        n = (len(d["inner_idx"]) + len(d["bnd_idx"])) * self.m
        return n + (len(d["rows_idx"]) if self.time_dependent else 0)

    # ------------------------------------------------------------------ network values
    def _space_time(self, X: torch.Tensor):
        """Slice-major stack of ``(X, t_k)``: ((Nt+1) n, d+1) input and its time column."""
        n = X.shape[0]
        T = torch.as_tensor(self.times, dtype=X.dtype, device=X.device)
        tcol = T.repeat_interleave(n).reshape(-1, 1).requires_grad_(True)
        return torch.cat([X.repeat(self.m, 1), tcol], 1), tcol

    def network_values(self, model):
        """DT: the network on the nodes: ``U`` (n,), or ``(U, Ut)`` both (n, Nt+1) (column k
        is time slice k; ``Ut`` by autograd)."""
        X = self.data["X"]
        if not self.time_dependent:
            return self.lifted(model(X).reshape(-1))
        inp, tcol = self._space_time(X)
        u = model(inp).reshape(-1)
        # each output depends only on its own input row: d(sum u)/dt is du/dt per point
        (ut,) = torch.autograd.grad(u.sum(), tcol, create_graph=True)
        return u.reshape(self.m, -1).T.contiguous(), ut.reshape(self.m, -1).T

    # ------------------------------------------------------------------ exact conditions
    def lifted(self, u: torch.Tensor) -> torch.Tensor:
        """Nodal values of the solution from the network's nodal values: ``u`` itself, or
        ``G + phi u`` with exact Dirichlet conditions (:mod:`.lift`)."""
        return u if self.lift is None else self._G + self._phi * u

    def network_linearization_pair(self, u: torch.Tensor):
        """:meth:`linearization_pair` as functions of the NETWORK's nodal values ``u``: at
        ``lifted(u)``, composed with ``diag(phi)`` when conditions are exact."""
        A, AT = self.linearization_pair(self.lifted(u))
        if self.lift is None:
            return A, AT
        phi = self._phi[:, None]
        return (lambda X: A(phi * X)), (lambda Y: phi * AT(Y))

    def network_linearization_matrix(self, u: torch.Tensor):
        """:meth:`linearization_matrix` at ``lifted(u)`` times ``diag(phi)`` (see
        :meth:`network_linearization_pair`)."""
        J = self.linearization_matrix(self.lifted(u))
        if J is None or self.lift is None:
            return J
        import scipy.sparse as sp
        return (J @ sp.diags(self._phi.detach().cpu().numpy())).tocsr()

    # ------------------------------------------------------------------ the DT residual
    def _env(self, where: str, idx=None) -> dict:
        env = dict(self.data["coords_" + where])
        if idx is not None:
            env = {k: (v[idx] if k != "t" else v) for k, v in env.items()}
        return env

    def _dt_pde(self, U, Ut):
        """``F(u)`` at the rows from nodal values (before subtracting f)."""
        p = self.pde
        ops = self.system.ops
        out = spmv(ops[p.op], U) if p.op is not None else None
        if p.rest is not None:
            env = self._env("rows")
            rows = self.data["rows_idx"]
            for name, opname in p.fields.items():
                env[name] = U[rows] if name == "u" else Ut[rows] if name == "u_t" \
                    else spmv(ops[opname], U)
            R = p.rest(env, "torch")
            out = R if out is None else out + R
        return out

    def _dt_bc(self, U):
        ops = self.system.ops
        out = spmv(ops["B"], U) if "B" in ops else None
        bnd = self.data["bnd_idx"]
        for bp in self.bparts:
            if bp.rest is None:
                continue
            env = self._env("bnd", bp.rows)
            for name, opname in bp.fields.items():
                v = U[bnd] if name == "u" else spmv(ops[opname], U)
                env[name] = v[bp.rows]
            out = _place(out, bp.rest(env, "torch"), bp.rows, self.data["nb_shape"], U)
        return out

    # ------------------------------------------------------------------ the vanilla residual
    def _autograd(self, model, where: str, needed, create_graph=True):
        """Autograd values at the interior / boundary / row points, as (n,) or (n, Nt+1)."""
        X = self.data["X"][self.data[where + "_idx"]]
        P = self._space_time(X.detach())[0] if self.time_dependent else X
        vals = autograd_fields(model, P, self.dim, needed, create_graph=create_graph)
        if self.time_dependent:
            vals = {k: v.reshape(self.m, -1).T for k, v in vals.items()}
        return vals

    def _vanilla_pde(self, model, where="inner", create_graph=True):
        p = self.pde
        needed = {field_key(k) for k, _ in p.linear} | set(p.fields)
        vals = self._autograd(model, where, needed, create_graph)
        coef = self.data["lin_coef_" + where]
        out = None
        for (key, _), c in zip(p.linear, coef):
            term = c * vals[field_key(key)]
            out = term if out is None else out + term
        if p.rest is not None:
            env = self._env(where)
            env.update({k: vals[k] for k in p.fields})
            R = p.rest(env, "torch")
            out = R if out is None else out + R
        return out

    def _vanilla_bc(self, model):
        needed = {field_key(k) for bp in self.bparts for k, _ in bp.linear}
        needed |= {k for bp in self.bparts for k in bp.fields}
        vals = self._autograd(model, "bnd", needed)
        out = None
        for key, c in self.data["lin_coef_bnd"]:
            term = c * vals[field_key(key)]
            out = term if out is None else out + term
        for bp in self.bparts:
            if bp.rest is None:
                continue
            env = self._env("bnd", bp.rows)
            env.update({k: vals[k][bp.rows] for k in bp.fields})
            out = _place(out, bp.rest(env, "torch"), bp.rows, self.data["nb_shape"],
                         vals["u"])
        return out

    # ------------------------------------------------------------------ losses
    def residual_parts(self, model) -> dict:
        """Name -> this rank's scaled residual (1-D): ``pde``, ``bc`` (and ``ic``)."""
        d, sc = self.data, self.weights
        parts = {}
        if self.method == "dt":
            V = self.network_values(model)
            U, Ut = V if self.time_dependent else (V, None)
            if self.time_dependent:
                parts["ic"] = (U[d["rows_idx"], 0] - d["u0"]) * sc["ic"]
            pde = self._dt_pde(U, Ut) - d["f_rows"]
            bc = self._dt_bc(U)
        else:
            if self.time_dependent:
                Xr = d["X"][d["rows_idx"]]
                inp0 = torch.cat([Xr, torch.full((Xr.shape[0], 1), float(self.times[0]),
                                                 dtype=Xr.dtype, device=Xr.device)], 1)
                parts["ic"] = (model(inp0).reshape(-1) - d["u0"]) * sc["ic"]
            pde = self._vanilla_pde(model) - d["f_inner"]
            bc = self._vanilla_bc(model)
        parts["pde"] = (pde * sc["pde"]).reshape(-1)
        parts["bc"] = ((bc - d["g"]) * sc["bc"]).reshape(-1)
        return parts

    def residual(self, model) -> torch.Tensor:
        """The scaled residual of this rank (``torch.cat`` of :meth:`residual_parts`)."""
        return torch.cat([r.reshape(-1) for r in self.residual_parts(model).values()])

    def loss_terms(self, model) -> dict:
        """Name -> global value of each loss term (collective: one ``comm.sum``)."""
        parts = self.residual_parts(model)
        local = torch.stack([(r.detach() * r.detach()).sum() for r in parts.values()])
        glob = self.comm.sum(local.to(torch.float64))
        return {k: float(v) for k, v in zip(parts, glob)}

    def loss(self, model) -> float:
        """The global loss (eq. (4), (12) or (16)); collective."""
        return float(sum(self.loss_terms(model).values()))

    # ------------------------------------------------------------------ metrics
    def predict(self, model, X, t=None) -> torch.Tensor:
        """The network at points ``X`` (n, d) (at time ``t`` for time-dependent problems)."""
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float64), dtype=self.dtype,
                             device=self.device)
        if self.time_dependent:
            if t is None:
                raise ValueError("a time-dependent problem needs the time t to predict at")
            Xt = torch.cat([Xt, torch.full((Xt.shape[0], 1), float(t), dtype=Xt.dtype,
                                           device=Xt.device)], 1)
        with torch.no_grad():
            out = model(Xt).reshape(-1)
        if self.lift is not None:
            G, phi = self.lift.at(np.asarray(X, dtype=np.float64))
            out = torch.as_tensor(G, dtype=out.dtype, device=out.device) + torch.as_tensor(
                phi, dtype=out.dtype, device=out.device) * out
        return out

    def _exact_values(self):
        """Exact values at this rank's test points for every time slice (computed once)."""
        if self._exact_cache is None:
            P = self.data["test"]
            self._exact_cache = [self.data["exact"](P, t) for t in self.times]
        return self._exact_cache

    def rel_l2(self, model):
        """Relative L2 error (eq. (18)) at the test points (else the rows), all time slices;
        global over ranks; None without an exact solution. Collective."""
        if self.data["exact"] is None:
            return None
        P = self.data["test"]
        num = den = 0.0
        for t, ue in zip(self.times, self._exact_values()):
            up = self.predict(model, P, t).to(torch.float64).cpu().numpy()
            num += float(((up - ue) ** 2).sum())
            den += float((ue ** 2).sum())
        s = self.comm.sum(np.array([num, den], dtype=np.float64))
        return float(math.sqrt(s[0] / s[1])) if s[1] > 0 else float(math.sqrt(s[0]))

    def residual_norms(self, model) -> dict:
        """RMS over the collocation rows of the discrete (RBF-FD) and of the autograd PDE
        residual ``F(u) - f``; collective."""
        d = self.data
        with torch.no_grad():
            X = d["X"]
            if self.time_dependent:
                U = model(self._space_time(X)[0]).reshape(self.m, -1).T.contiguous()
            else:
                U = self.lifted(model(X).reshape(-1))
        # the time derivative (autograd in both) and the pointwise terms agree; only the
        # spatial derivatives differ. With exact conditions G and phi have nodal values only:
        # no autograd residual.
        Ut = None
        if self.time_dependent:
            Ut = torch.zeros_like(U)
            Ut[d["rows_idx"]] = self._autograd(model, "rows", {"u_t"}, False)["u_t"].detach()
        with torch.no_grad():
            res = [self._dt_pde(U, Ut) - d["f_rows"]]
        if self.lift is None:
            auto = self._vanilla_pde(model, "rows", create_graph=False).detach()
            res.append(auto - d["f_rows"])
        s = self.comm.sum(torch.stack([(r ** 2).sum() for r in res]).to(torch.float64))
        cnt = self.system.n_collocation * self.m
        rms = [float(torch.sqrt(v / cnt)) for v in s]
        return {"discrete_pde_res": rms[0], "autograd_pde_res": rms[1] if len(rms) > 1 else None}

    # ------------------------------------------------------------------ Jacobian structure
    @property
    def has_structure(self) -> bool:
        """Whether the residual is a function of the nodal values alone (steady DT problems):
        then ``J = (dr/dU) Ju`` with ``dr/dU`` from :meth:`apply_linearization`."""
        return self.method == "dt" and not self.time_dependent

    def values_residual(self, U: torch.Tensor) -> torch.Tensor:
        """The scaled residual ``[pde; bc]`` as a function of the nodal values ``U`` (n,)."""
        d, sc = self.data, self.weights
        pde = (self._dt_pde(U, None) - d["f_rows"]) * sc["pde"]
        bc = (self._dt_bc(U) - d["g"]) * sc["bc"]
        return torch.cat([pde.reshape(-1), bc.reshape(-1)])

    def _partial_values(self, part, U, where, rows=None):
        env = self._env(where, rows)
        ops = self.system.ops
        sel = self.data["rows_idx"] if where == "rows" else self.data["bnd_idx"]
        for name, opname in part.fields.items():
            v = U[sel] if name == "u" else spmv(ops[opname], U)
            env[name] = v if rows is None else v[rows]
        return {k: c(env, "torch") for k, c in part.partials.items()}

    def _linearization_parts(self, U: torch.Tensor):
        """The pointwise partials ``dR/d(field)`` at ``U``: PDE rows, and per boundary part."""
        if not self.has_structure:
            raise ValueError("the values-Jacobian exists for steady DT problems only")
        with torch.no_grad():
            pd = self._partial_values(self.pde, U, "rows") if self.pde.rest is not None else {}
            bd = [(bp, self._partial_values(bp, U, "bnd", bp.rows)) for bp in self.bparts
                  if bp.rest is not None]
        return pd, bd

    def linearization_pair(self, U: torch.Tensor):
        """``(linearization(U), linearization_transpose(U))`` sharing one evaluation of the
        pointwise partials at ``U`` (one operator product per field, collective when
        distributed): what a Gauss-Newton step needs."""
        parts = self._linearization_parts(U)
        return self.linearization(U, parts), self.linearization_transpose(U, parts)

    def linearization(self, U: torch.Tensor, _parts=None):
        """``dr/dU`` at the nodal values ``U`` as a function ``X (n, k) -> (rows, k)``: the
        declared structure ``[s (A + sum_j diag(dR/dD_j u) D_j + diag(dR/du) P_rows);
        s_b (B + ...)]``. Steady DT problems only (:attr:`has_structure`). Collective when
        distributed (every operator product is)."""
        d, sc, ops = self.data, self.weights, self.system.ops
        pd, bd = _parts if _parts is not None else self._linearization_parts(U)
        rows, bnd = d["rows_idx"], d["bnd_idx"]
        nr, nb = len(rows), len(bnd)

        def apply(X):
            k = X.shape[1]
            top = ops[self.pde.op].matmat(X) if self.pde.op is not None else \
                X.new_zeros((nr, k))
            for name, c in pd.items():
                DX = X[rows] if name == "u" else ops[self.pde.fields[name]].matmat(X)
                top = top + _col(c) * DX
            bot = ops["B"].matmat(X) if "B" in ops else X.new_zeros((nb, k))
            for bp, parts in bd:
                for name, c in parts.items():
                    DX = X[bnd] if name == "u" else ops[bp.fields[name]].matmat(X)
                    bot = bot.index_add(0, bp.rows, _col(c) * DX[bp.rows]) \
                        if bp.rows.numel() != nb else bot + _col(c) * DX
            return torch.cat([top * _col(sc["pde"]), bot * _col(sc["bc"])], 0)

        return apply

    def linearization_transpose(self, U: torch.Tensor, _parts=None):
        """``(dr/dU)^T`` at ``U`` as a function ``Y (rows, k) -> (n, k)``: the transpose of
        :meth:`linearization`, term by term (each operator's ``rmatmat``, the same pointwise
        diagonals, the row selections as scatter-adds). With it ``J^T y = Ju^T (A^T y)``
        needs no ``J``. Steady DT problems only; collective when distributed (``rmatmat`` of a
        PETSc operator is a ``MatTransposeMatMult`` with a reverse halo scatter)."""
        d, sc, ops = self.data, self.weights, self.system.ops
        pd, bd = _parts if _parts is not None else self._linearization_parts(U)
        rows, bnd = d["rows_idx"], d["bnd_idx"]
        nr, nb = len(rows), len(bnd)
        n = len(d["X"])

        def apply_t(Y):
            k = Y.shape[1]
            top, bot = Y[:nr] * _col(sc["pde"]), Y[nr:nr + nb] * _col(sc["bc"])
            out = ops[self.pde.op].rmatmat(top) if self.pde.op is not None else \
                Y.new_zeros((n, k))
            for name, c in pd.items():
                cY = _col(c) * top
                if name == "u":
                    out = out.index_add(0, rows, cY)
                else:
                    out = out + ops[self.pde.fields[name]].rmatmat(cY)
            if "B" in ops:
                out = out + ops["B"].rmatmat(bot)
            for bp, parts in bd:
                for name, c in parts.items():
                    if bp.rows.numel() != nb:
                        cY = Y.new_zeros((nb, k)).index_put((bp.rows,), _col(c) * bot[bp.rows])
                    else:
                        cY = _col(c) * bot
                    if name == "u":
                        out = out.index_add(0, bnd, cY)
                    else:
                        out = out + ops[bp.fields[name]].rmatmat(cY)
            return out

        return apply_t

    def linearization_matrix(self, U: torch.Tensor, global_columns: bool = False):
        """``dr/dU`` at the nodal values ``U`` as a scipy CSR matrix of this rank's rows.

        Columns are this rank's nodes (serial), or with ``global_columns`` the global node
        numbering of a PETSc (distributed) system, ready for a PETSc matrix. None where the
        operators have no scipy form (CuPy), or for a distributed system without
        ``global_columns``.
        """
        import scipy.sparse as sp

        ops = self.system.ops
        petsc = all(hasattr(o, "to_scipy_local") for o in ops.values()) and bool(ops)
        if petsc and global_columns:
            any_op = next(iter(ops.values()))
            c0 = any_op.mat.getOwnershipRangeColumn()[0]
            n = any_op.global_shape[1]
            to_csr = lambda o: o.to_scipy_local()  # noqa: E731
        elif self.comm.size == 1 and all(hasattr(o, "to_scipy") for o in ops.values()):
            c0, n = 0, len(self.data["X"])
            to_csr = lambda o: o.to_scipy()  # noqa: E731
        else:
            return None
        d, sc = self.data, self.weights
        rows = d["rows_idx"].cpu().numpy()
        bnd = d["bnd_idx"].cpu().numpy()
        nr, nb = len(rows), len(bnd)

        def sel(idx, k):  # picks the node of each row: u at the row itself
            return sp.csr_matrix((np.ones(len(idx)), (np.arange(len(idx)), c0 + idx)),
                                 shape=(k, n))

        def num(c, k):
            c = c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else c
            return np.broadcast_to(np.asarray(c, dtype=np.float64), (k,))

        with torch.no_grad():
            top = to_csr(ops[self.pde.op]) if self.pde.op is not None else \
                sp.csr_matrix((nr, n))
            if self.pde.rest is not None:
                for name, c in self._partial_values(self.pde, U, "rows").items():
                    D = sel(rows, nr) if name == "u" else to_csr(ops[self.pde.fields[name]])
                    top = top + sp.diags(num(c, nr)) @ D
            bot = to_csr(ops["B"]) if "B" in ops else sp.csr_matrix((nb, n))
            for bp in self.bparts:
                if bp.rest is None:
                    continue
                r = bp.rows.cpu().numpy()
                for name, c in self._partial_values(bp, U, "bnd", bp.rows).items():
                    D = sel(bnd, nb) if name == "u" else to_csr(ops[bp.fields[name]])
                    w = np.zeros(nb)
                    w[r] = num(c, len(r))
                    bot = bot + sp.diags(w) @ D
        return sp.vstack([sp.diags(num(sc["pde"], nr)) @ top,
                          sp.diags(num(sc["bc"], nb)) @ bot]).tocsr()

    def describe(self) -> dict:
        """What was discretised (for outputs)."""
        return {"method": self.method, "order": self.order, **self.info}


def _col(c):
    """A coefficient as a column (broadcast over the columns of a block)."""
    return c[:, None] if isinstance(c, torch.Tensor) and c.dim() == 1 else c


def _place(out, R, rows, shape, like):
    """``out + R`` with ``R`` given at the positions ``rows`` of the boundary rows."""
    if isinstance(R, float):
        R = like.new_full((len(rows),) + tuple(shape[1:]), R)
    if len(rows) != shape[0]:
        R = like.new_zeros(shape).index_put((rows,), R)
    return R if out is None else out + R

"""DT-PINN and vanilla-PINN losses for the three PDEs (paper eqs. (4), (12), (16)).

Problem interface (shared by the trainer, Levenberg-Marquardt and the distributed code)
---------------------------------------------------------------------------------------
Every problem object ``P`` (``DTPoisson``, ``DTHeat``, ``VanillaPoisson``, ``VanillaHeat``) has

``P.network_values(model, system)``
    DT Poisson: ``U``, shape ``(n,)``, the network on ``system.nodes`` (operator column order).
    DT heat: a :class:`HeatValues` ``(U, Ut)``, both ``(n, Nt+1)``: column ``k`` is time slice
    ``t_k = k T / Nt``; ``Ut`` is du/dt by autograd (only its rows ``row_index`` enter the loss).
    Vanilla: the network on ``system.nodes`` (``(n,)`` resp. ``(n, Nt+1)``), no derivatives.
``P.residual_parts(model, system)``
    dict name -> this rank's weighted residual vector of that loss term (1-D tensors).
``P.residual(model, system)``
    ``torch.cat`` of the parts: the global loss is ``system.comm.sum((r * r).sum())``. Each term
    of eq. (12)/(16)/(4) is divided by the square root of its GLOBAL count (``n_rows_L``,
    ``n_rows_B``, ``n_interior``, times ``Nt+1`` for space-time terms).
``P.loss_terms(model, system)``
    dict name -> float, the global value of each loss term (collective: one ``comm.sum``).
``P.loss(model, system)``
    global loss (float, collective).
``P.rel_l2(model, system)``
    relative L2 error vs the exact solution on ``system.test_points`` (or the collocation rows
    when there are none; all time slices for heat); None without an exact solution. Collective.
``P.residual_norms(model, system)``
    RMS of the discrete (RBF-FD) and of the autograd PDE residual at the collocation rows.
``P.forcing(system, dtype, device)``
    the cached data tensors (f at rows, g at boundary rows, u0, ...), evaluated ONLY from this
    rank's ``system.nodes[system.row_index]``, ``system.nodes[system.boundary_index]`` and
    ``system.normals``, so the same code runs on a rank's partition.

Term names: DT Poisson ``pde``, ``bc``; heat adds ``ic``; vanilla the same names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..operators.linear import spmv
from .expressions import PDEData

__all__ = ["HeatValues", "DTPoisson", "DTHeat", "VanillaPoisson", "VanillaHeat", "make_problem",
           "autograd_derivatives"]


@dataclass
class HeatValues:
    """Network values for the space-time problem: ``U`` and ``Ut``, both ``(n, Nt+1)``."""

    U: torch.Tensor
    Ut: torch.Tensor


def autograd_derivatives(model, X: torch.Tensor, dim: int, normals: torch.Tensor | None = None,
                         need_lap: bool = True, create_graph: bool = True):
    """Network value, its spatial Laplacian, normal derivative and time derivative by autograd.

    ``X`` is (n, dim) or (n, dim + 1) with time last; it must require grad. Returns
    ``(u, lap, dudn, dudt)`` (each (n,) or None).
    """
    u = model(X).reshape(-1)
    (grad,) = torch.autograd.grad(u.sum(), X, create_graph=True)
    lap = None
    if need_lap:
        lap = torch.zeros_like(u)
        for k in range(dim):
            (g2,) = torch.autograd.grad(grad[:, k].sum(), X, create_graph=create_graph,
                                        retain_graph=True)
            lap = lap + g2[:, k]
    dudn = (grad[:, :dim] * normals).sum(1) if normals is not None else None
    dudt = grad[:, dim] if X.shape[1] > dim else None
    return u, lap, dudn, dudt


class _Base:
    """Shared bookkeeping: cached forcing tensors and the global reductions."""

    method = "?"

    def __init__(self, data: PDEData, nt: int = 24, t_final: float = 1.0):
        self.data = data
        self.kind = data.kind
        self.time_dependent = data.time_dependent
        self.nt = int(nt) if self.time_dependent else 0
        self.t_final = float(t_final)
        self._cache_key = None
        self._cache_val = None

    # ------------------------------------------------------------------ data
    @property
    def times(self) -> np.ndarray:
        """The Nt+1 time slices (heat); [0] otherwise."""
        if not self.time_dependent:
            return np.zeros(1)
        return np.linspace(0.0, self.t_final, self.nt + 1)

    def network_values(self, model, system) -> torch.Tensor:
        """The network on ``system.nodes`` (steady problems; the heat classes override)."""
        fc = self.forcing(system, model.dtype, model.device)
        return model(fc["X"]).reshape(-1)

    def input_dim(self, dim: int) -> int:
        return dim + (1 if self.time_dependent else 0)

    def forcing(self, system, dtype, device="cpu") -> dict:
        """Data tensors for this rank, computed once per (system, dtype, device)."""
        key = (id(system), dtype, str(device))
        if self._cache_key == key and self._cache_val[0] is system:
            return self._cache_val[1]
        d = self.data
        X = system.nodes
        rows, bnd = X[system.row_index], X[system.boundary_index]
        inner = X[system.interior_index]
        T = self.times
        out = {}

        def ten(a):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

        if self.time_dependent:
            out["f_rows"] = ten(np.stack([d.f_at(rows, t) for t in T], 1))
            out["f_int"] = ten(np.stack([d.f_at(inner, t) for t in T], 1))
            out["g"] = ten(np.stack([d.g_at(bnd, system.normals, t) for t in T], 1))
            out["u0"] = ten(d.u0_at(rows))
        else:
            out["f_rows"] = ten(d.f_at(rows))
            out["f_int"] = ten(d.f_at(inner))
            out["g"] = ten(d.g_at(bnd, system.normals))
        out["X"] = ten(X)
        out["normals"] = ten(system.normals)
        # index tensors on the device once, not one host-to-device copy per closure
        for name, idx in (("rows", system.row_index), ("bnd", system.boundary_index),
                          ("inner", system.interior_index)):
            out[name + "_idx"] = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=device)
        self._cache_key, self._cache_val = key, (system, out)
        return out

    def _space_time(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice-major stack of (X, t_k): ((Nt+1) n, d+1) input and its time column (leaf)."""
        n = X.shape[0]
        T = torch.as_tensor(self.times, dtype=X.dtype, device=X.device)
        tcol = T.repeat_interleave(n).reshape(-1, 1).requires_grad_(True)
        return torch.cat([X.repeat(len(self.times), 1), tcol], 1), tcol

    # ------------------------------------------------------------------ losses
    def residual(self, model, system) -> torch.Tensor:
        return torch.cat([r.reshape(-1) for r in self.residual_parts(model, system).values()])

    def loss_terms(self, model, system) -> dict:
        parts = self.residual_parts(model, system)
        local = torch.stack([(r.detach() * r.detach()).sum() for r in parts.values()])
        glob = system.comm.sum(local.to(torch.float64))
        return {k: float(v) for k, v in zip(parts, glob)}

    def loss(self, model, system) -> float:
        return float(sum(self.loss_terms(model, system).values()))

    # ------------------------------------------------------------------ metrics
    def predict(self, model, X: np.ndarray, t=None) -> torch.Tensor:
        """Network at points X (n, d) (and time t for heat), no grad."""
        Xt = torch.as_tensor(X, dtype=model.dtype, device=model.device)
        if self.time_dependent:
            Xt = torch.cat([Xt, torch.full((Xt.shape[0], 1), float(t), dtype=Xt.dtype,
                                           device=Xt.device)], 1)
        with torch.no_grad():
            return model(Xt).reshape(-1)

    def rel_l2(self, model, system):
        """Relative L2 error (eq. (18)); global over ranks; None without an exact solution."""
        if not self.data.has_exact:
            return None
        P = system.test_points if system.test_points is not None else system.nodes[system.row_index]
        num = den = 0.0
        for t in self.times:
            ue = self.data.exact_at(P, t)
            up = self.predict(model, P, t).to(torch.float64).cpu().numpy()
            num += float(((up - ue) ** 2).sum())
            den += float((ue ** 2).sum())
        s = system.comm.sum(np.array([num, den], dtype=np.float64))
        return float(math.sqrt(s[0] / s[1])) if s[1] > 0 else float(math.sqrt(s[0]))

    def residual_norms(self, model, system) -> dict:
        """RMS over the collocation rows of the discrete (L u) and the autograd PDE residuals."""
        fc = self.forcing(system, model.dtype, model.device)
        X = fc["X"]
        d = system.dim
        with torch.no_grad():
            if self.time_dependent:
                inp, _ = self._space_time(X)
                U = model(inp).reshape(len(self.times), -1).T
            else:
                U = model(X).reshape(-1)
            LU = spmv(system.L, U.contiguous())
        rows = fc["rows_idx"]
        Xr = X[rows]
        if self.time_dependent:
            inp, _ = self._space_time(Xr.detach())
            inp = inp.detach().requires_grad_(True)
            u, lap, _, ut = autograd_derivatives(model, inp, d, create_graph=False)
            nrow = Xr.shape[0]
            lap = lap.reshape(len(self.times), nrow).T
            ut = ut.reshape(len(self.times), nrow).T
            with torch.no_grad():
                # the discrete residual uses autograd u_t at the rows, as in training
                r_disc = ut.detach() - LU - fc["f_rows"]
                r_auto = ut.detach() - lap.detach() - fc["f_rows"]
        else:
            Xg = Xr.detach().clone().requires_grad_(True)
            u, lap, _, _ = autograd_derivatives(model, Xg, d, create_graph=False)
            lap = lap.detach()
            # the same exp(u) term in both (u at the rows is the same network value)
            extra = torch.exp(U[rows]) if self.kind == "nonlinear-poisson" else 0.0
            r_disc = LU - extra - fc["f_rows"]
            r_auto = lap - extra - fc["f_rows"]
        local = torch.stack([(r_disc ** 2).sum(), (r_auto ** 2).sum()]).to(torch.float64)
        s = system.comm.sum(local.detach())
        cnt = system.n_rows_L * len(self.times)
        return {"discrete_pde_res": float(torch.sqrt(s[0] / cnt)),
                "autograd_pde_res": float(torch.sqrt(s[1] / cnt))}


class DTPoisson(_Base):
    """DT-PINN, eq. (12): ``||L u - [exp(u)] - f||^2/(Ni+Nb) + ||B u - g||^2/Nb``."""

    method = "dt"

    def residual_parts(self, model, system) -> dict:
        fc = self.forcing(system, model.dtype, model.device)
        U = self.network_values(model, system)
        r = spmv(system.L, U) - fc["f_rows"]
        if self.kind == "nonlinear-poisson":
            r = r - torch.exp(U[fc["rows_idx"]])
        b = spmv(system.B, U) - fc["g"]
        return {"pde": r / math.sqrt(system.n_rows_L), "bc": b / math.sqrt(system.n_rows_B)}


class DTHeat(_Base):
    """DT-PINN for heat, eq. (16): RBF-FD in space (L U, B U on all Nt+1 slices), autograd in t."""

    method = "dt"

    def network_values(self, model, system) -> HeatValues:
        fc = self.forcing(system, model.dtype, model.device)
        inp, tcol = self._space_time(fc["X"])
        u = model(inp).reshape(-1)
        # each output depends only on its own input row, so grad of the sum is du/dt per point
        (ut,) = torch.autograd.grad(u.sum(), tcol, create_graph=True)
        m = len(self.times)
        # (Nt+1, n) slice-major -> (n, Nt+1): one column per time slice for L @ U
        return HeatValues(U=u.reshape(m, -1).T.contiguous(), Ut=ut.reshape(m, -1).T)

    def residual_parts(self, model, system) -> dict:
        fc = self.forcing(system, model.dtype, model.device)
        v = self.network_values(model, system)
        rows = fc["rows_idx"]
        m = len(self.times)
        ic = v.U[rows, 0] - fc["u0"]
        pde = v.Ut[rows] - spmv(system.L, v.U) - fc["f_rows"]
        bc = spmv(system.B, v.U) - fc["g"]
        return {"ic": ic.reshape(-1) / math.sqrt(system.n_rows_L),
                "pde": pde.reshape(-1) / math.sqrt(m * system.n_rows_L),
                "bc": bc.reshape(-1) / math.sqrt(m * system.n_rows_B)}


class VanillaPoisson(_Base):
    """Vanilla PINN, eq. (4): autograd Laplacian on interior nodes, autograd normal derivative."""

    method = "vanilla"

    def residual_parts(self, model, system) -> dict:
        fc = self.forcing(system, model.dtype, model.device)
        X, d = fc["X"], system.dim
        Xi = X[fc["inner_idx"]].detach().requires_grad_(True)
        Xb = X[fc["bnd_idx"]].detach().requires_grad_(True)
        u, lap, _, _ = autograd_derivatives(model, Xi, d)
        r = lap - fc["f_int"]
        if self.kind == "nonlinear-poisson":
            r = r - torch.exp(u)
        ub, _, dudn, _ = autograd_derivatives(model, Xb, d, fc["normals"], need_lap=False)
        b = system.alpha * dudn + system.beta * ub - fc["g"]
        return {"pde": r / math.sqrt(system.n_interior), "bc": b / math.sqrt(system.n_rows_B)}


class VanillaHeat(_Base):
    """Vanilla PINN for heat: autograd in space and time, interior x slices, boundary x slices."""

    method = "vanilla"

    def network_values(self, model, system) -> torch.Tensor:
        fc = self.forcing(system, model.dtype, model.device)
        inp, _ = self._space_time(fc["X"])
        return model(inp).reshape(len(self.times), -1).T

    def residual_parts(self, model, system) -> dict:
        fc = self.forcing(system, model.dtype, model.device)
        X, d, m = fc["X"], system.dim, len(self.times)
        dev = X.device
        Xi = X[fc["inner_idx"]]
        Xb = X[fc["bnd_idx"]]
        Xr = X[fc["rows_idx"]]
        inp_i, _ = self._space_time(Xi)
        inp_i = inp_i.detach().requires_grad_(True)
        u, lap, _, ut = autograd_derivatives(model, inp_i, d)
        pde = ut - lap - fc["f_int"].T.reshape(-1)
        inp_b, _ = self._space_time(Xb)
        inp_b = inp_b.detach().requires_grad_(True)
        nrm = fc["normals"].repeat(m, 1)
        ub, _, dudn, _ = autograd_derivatives(model, inp_b, d, nrm, need_lap=False)
        bc = system.alpha * dudn + system.beta * ub - fc["g"].T.reshape(-1)
        inp0 = torch.cat([Xr, torch.zeros((Xr.shape[0], 1), dtype=X.dtype, device=dev)], 1)
        ic = model(inp0).reshape(-1) - fc["u0"]
        return {"ic": ic / math.sqrt(system.n_rows_L),
                "pde": pde / math.sqrt(m * system.n_interior),
                "bc": bc / math.sqrt(m * system.n_rows_B)}


def make_problem(data: PDEData, method: str = "dt", nt: int = 24, t_final: float = 1.0):
    """The problem object for ``data.kind`` and ``method`` ('dt' or 'vanilla')."""
    table = {("dt", False): DTPoisson, ("dt", True): DTHeat,
             ("vanilla", False): VanillaPoisson, ("vanilla", True): VanillaHeat}
    if method not in ("dt", "vanilla"):
        raise ValueError(f"unknown method {method!r}: use 'dt' or 'vanilla'")
    return table[(method, data.time_dependent)](data, nt=nt, t_final=t_final)

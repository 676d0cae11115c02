"""Jacobians of a DT-PINN residual with respect to the network weights, dense or matrix-free.

A DT-PINN residual depends on the weights ``w`` only through the network: ``r(w) = R(u(w))``
with ``R`` built from the sparse RBF-FD operators (paper, eqs. (12), (16)). So

* matrix-free products ``J v`` (forward mode) and ``J^T y`` (reverse mode) go through
  ``problem.residual`` itself and cover every PDE, the heat equation included;
* the dense Jacobian is ``J = dR/du . Ju``: the network Jacobian ``Ju`` (nodes x parameters),
  derived by hand for Linear/Tanh MLPs (one backward sweep of the layer structure, all nodes at
  once), times the sparse ``[L; B]`` through ``LinearOperator.matmat`` (a PETSc MatMatMult when
  distributed), plus the ``-diag(exp(u))`` rows of the nonlinear Poisson equation.

Parameter vectors are flat fp64 tensors in ``model.parameters()`` order and are replicated:
every rank holds the same bits. Residual vectors are distributed: each rank holds its rows.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call

from ..model.params import copy_flat_into, flatten

__all__ = [
    "LeastSquaresProblem", "DTPINNLeastSquares", "DenseLeastSquares",
    "flat_params", "set_flat_params", "mlp_value_jacobian", "network_jacobian", "mlp_factors",
    "mlp_ntk", "mlp_vjp",
    "JacobianTooLarge",
]


class JacobianTooLarge(MemoryError):
    """The dense Jacobian (or its normal matrix) would not fit in the memory budget."""


# --------------------------------------------------------------------------------------------
# parameters <-> flat vector
# --------------------------------------------------------------------------------------------
def flat_params(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one detached flat vector (``model.parameters()`` order)."""
    return flatten(model.parameters())


def set_flat_params(model: nn.Module, theta: torch.Tensor) -> None:
    """Copy the flat vector ``theta`` into the model's parameters, in place."""
    copy_flat_into(theta, model.parameters())


def _unflatten(model: nn.Module, theta: torch.Tensor) -> dict:
    out, i = {}, 0
    for name, p in model.named_parameters():
        k = p.numel()
        out[name] = theta[i:i + k].view_as(p)
        i += k
    return out


class _FunctionalModel(nn.Module):
    """``model`` evaluated with the weights ``theta`` (which may carry tangents or a graph)."""

    def __init__(self, model: nn.Module, theta: torch.Tensor):
        super().__init__()
        self._model = [model]  # a list keeps it out of this module's parameters
        self._params = _unflatten(model, theta)

    def forward(self, *args, **kwargs):
        return functional_call(self._model[0], self._params, args, kwargs)

    def __getattr__(self, name):
        # Problems may read attributes of the model (e.g. its dtype); forward them.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_model"][0], name)


class _ValuesModel(nn.Module):
    """Stands in for the network: returns fixed values ``u`` at the system's nodes."""

    def __init__(self, u: torch.Tensor, out_shape):
        super().__init__()
        self.u = u
        self.out_shape = out_shape
        self.dtype, self.device = u.dtype, u.device

    def forward(self, x, *args, **kwargs):
        if x.shape[0] != self.u.shape[0]:
            raise RuntimeError("values model called on a different point set")
        return self.u.reshape(self.out_shape)


# --------------------------------------------------------------------------------------------
# network Jacobian Ju (nodes x parameters)
# --------------------------------------------------------------------------------------------
_ACT = {"tanh": (torch.tanh, lambda z, a: 1.0 - a * a),
        "sin": (torch.sin, lambda z, a: torch.cos(z))}


def _mlp_spec(model: nn.Module):
    """``(linears, activation)`` of a plain MLP (Linear, act, Linear, ..., Linear), or None.

    Recognises :class:`dtpinn_dist.model.MLP` (``layers`` + ``activation``) and
    ``nn.Sequential`` of ``nn.Linear`` / ``nn.Tanh``.
    """
    if isinstance(model, nn.Sequential):
        mods = list(model)
        lins = mods[0::2]
        acts = mods[1::2]
        if lins and all(isinstance(m, nn.Linear) for m in lins) and \
                all(isinstance(m, nn.Tanh) for m in acts) and len(lins) == len(acts) + 1:
            spec = (lins, "tanh")
        else:
            return None
    elif isinstance(getattr(model, "layers", None), nn.ModuleList) and \
            getattr(model, "activation", None) in _ACT and \
            all(isinstance(m, nn.Linear) for m in model.layers):
        spec = (list(model.layers), model.activation)
    else:
        return None
    lin_params = {id(p) for m in spec[0] for p in m.parameters()}
    if any(id(p) not in lin_params for p in model.parameters()) or spec[0][-1].out_features != 1:
        return None
    return spec


def mlp_factors(model: nn.Module, x: torch.Tensor):
    """Forward and backward sweep of a scalar MLP: the factors of its weight Jacobian.

    For layer ``k`` with input activations ``a`` (n, in) and ``delta = du/dz_k`` (n, out),
    ``du/dW_k = delta a^T`` and ``du/db_k = delta`` at every point.

    Returns
    -------
    u : (n,) tensor
    factors : list of ``(linear, delta, a)``, one per ``nn.Linear`` in forward order.
    """
    spec = _mlp_spec(model)
    if spec is None:
        raise ValueError("needs a plain MLP (dtpinn_dist.model.MLP or nn.Sequential of "
                         "nn.Linear/nn.Tanh)")
    lins, act = spec
    f, df = _ACT[act]
    with torch.no_grad():
        ins, zs, a = [], [], x
        for k, m in enumerate(lins):
            ins.append(a)
            z = torch.nn.functional.linear(a, m.weight, m.bias)
            zs.append(z)
            a = f(z) if k < len(lins) - 1 else z
        u = a[:, 0]
        deltas = [None] * len(lins)
        delta = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)  # du/dz_k
        for k in range(len(lins) - 1, -1, -1):
            deltas[k] = delta
            if k > 0:
                delta = (delta @ lins[k].weight) * df(zs[k - 1], ins[k])
    return u, [(m, deltas[k], ins[k]) for k, m in enumerate(lins)]


def mlp_value_jacobian(model: nn.Module, x: torch.Tensor):
    """Values and weight-Jacobian of a scalar MLP at the points ``x``, derived by hand.

    One forward sweep stores the activations, one backward sweep of the layer structure (all
    points at once) gives the factors of :func:`mlp_factors`: about the cost of two forward
    passes plus writing ``Ju``, far cheaper than ``n_params`` forward-mode passes.

    Parameters
    ----------
    model : nn.Module
        :class:`dtpinn_dist.model.MLP` (tanh or sin) or ``nn.Sequential`` of Linear/Tanh.
    x : (n, d) tensor

    Returns
    -------
    u : (n,) tensor
    Ju : (n, n_params) tensor, columns in ``model.parameters()`` order.
    """
    u, factors = mlp_factors(model, x)
    n = x.shape[0]
    where, i = {}, 0
    for p in model.parameters():
        where[id(p)] = i
        i += p.numel()
    Ju = torch.empty(n, i, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for m, delta, a in factors:
            j = where[id(m.weight)]
            k = m.weight.numel()
            torch.mul(delta[:, :, None], a[:, None, :], out=Ju[:, j:j + k].view(n, *m.weight.shape))
            if m.bias is not None:
                j = where[id(m.bias)]
                Ju[:, j:j + m.bias.numel()] = delta
    return u, Ju


def mlp_ntk(factors) -> torch.Tensor:
    """``Ju Ju^T`` (n x n) from the factors, without forming ``Ju``.

    ``(Ju_W Ju_W^T)_ij = (delta_i . delta_j)(a_i . a_j)``: per layer two (n x width) Gram
    products and a Hadamard product instead of an (n x n x n_params) contraction. Layers whose
    Hadamard product has low rank (the output layer, ``delta = 1``; the input layer, ``a = x``
    with 2-3 columns) are written as explicit feature columns (row-wise Kronecker products of
    ``delta`` and ``[a, 1]``) and summed by one Gram product, which saves their n x n passes.
    """
    n = factors[0][2].shape[0]
    feats, mids = [], []
    for m, delta, a in factors:
        if m.bias is not None:  # the bias is a constant input column: no "+1" pass over n x n
            a = torch.cat([a, a.new_ones(n, 1)], dim=1)
        kd, ka = delta.shape[1], a.shape[1]
        if kd * ka <= 4 * max(kd, ka):
            feats.append((delta[:, :, None] * a[:, None, :]).reshape(n, kd * ka))
        else:
            mids.append((delta, a))
    K = None
    if feats:
        F = torch.cat(feats, dim=1)
        K = F @ F.T
    for delta, a in mids:
        dd = delta @ delta.T
        aa = a @ a.T
        if K is None:
            K = dd.mul_(aa)
        else:
            K.addcmul_(dd, aa)  # in place: n x n temporaries are the cost here
    return K


def mlp_vjp(model: nn.Module, factors, w: torch.Tensor) -> torch.Tensor:
    """``Ju^T w`` (flat, ``model.parameters()`` order) from the factors."""
    blocks = {}
    for m, delta, a in factors:
        dw = delta * w[:, None]
        blocks[id(m.weight)] = (dw.T @ a).reshape(-1)
        if m.bias is not None:
            blocks[id(m.bias)] = dw.sum(0)
    return torch.cat([blocks[id(p)] for p in model.parameters()])


def network_jacobian(model: nn.Module, x: torch.Tensor):
    """``(u, Ju)`` at ``x``: hand-derived for plain MLPs, ``torch.func.jacrev`` otherwise.

    The hand-derived values are checked against ``model(x)`` so a model with a custom forward
    that merely looks like an MLP falls back to the generic path.
    """
    if _mlp_spec(model) is not None:
        u, Ju = mlp_value_jacobian(model, x)
        with torch.no_grad():
            ref = model(x).reshape(-1)
        top = float(ref.abs().max()) if ref.numel() else 0.0  # a rank may own no nodes
        if torch.allclose(u, ref, rtol=1e-12, atol=1e-12 * max(1.0, top)):
            return u, Ju
    theta = flat_params(model)

    def f(th):
        out = functional_call(model, _unflatten(model, th), (x,))
        return out.reshape(-1)

    u = f(theta).detach()
    Ju = torch.func.jacrev(f)(theta)
    return u, Ju.detach()


# --------------------------------------------------------------------------------------------
# least-squares problems
# --------------------------------------------------------------------------------------------
class LeastSquaresProblem:
    """Interface of ``min_w sum_ranks ||r_local(w)||^2`` seen by the LM / Gauss-Newton solvers.

    Subclasses provide :meth:`residual`, :meth:`jvp`, :meth:`vjp` and optionally
    :meth:`jacobian`. ``theta`` is the flat, replicated parameter vector; residual-space vectors
    are this rank's rows. Reductions over ranks are the solver's job (through ``comm.sum``).
    """

    comm = None
    n_params: int

    def get_params(self) -> torch.Tensor:
        raise NotImplementedError

    def set_params(self, theta: torch.Tensor) -> None:
        raise NotImplementedError

    def residual(self, theta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def jvp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J v`` (this rank's rows) for a parameter-space ``v``."""
        raise NotImplementedError

    def vjp(self, theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """This rank's contribution ``J_local^T y_local``; sum over ranks for ``J^T y``."""
        raise NotImplementedError

    def jacobian(self, theta: torch.Tensor):
        """``(r_local, J_local)`` dense. Default: one :meth:`jvp` per parameter (slow)."""
        r = self.residual(theta)
        cols = [self.jvp(theta, e) for e in torch.eye(self.n_params, dtype=theta.dtype,
                                                      device=theta.device)]
        return r, torch.stack(cols, dim=1)

    def jacobian_shape(self) -> tuple[int, int]:
        """(local rows, parameters) of the dense Jacobian."""
        raise NotImplementedError


class DenseLeastSquares(LeastSquaresProblem):
    """``r(w) = A w - b`` (or any callable residual with an explicit Jacobian): tests and toys.

    Parameters
    ----------
    A : (m, n) tensor
    b : (m,) tensor
    comm : communicator, optional
    """

    def __init__(self, A: torch.Tensor, b: torch.Tensor, comm=None, theta0=None):
        from ..distributed.comm import SerialComm

        self.A, self.b = A, b
        self.comm = SerialComm() if comm is None else comm
        self.n_params = A.shape[1]
        self.theta = torch.zeros(self.n_params, dtype=A.dtype) if theta0 is None else theta0.clone()

    def get_params(self):
        return self.theta.clone()

    def set_params(self, theta):
        self.theta = theta.detach().clone()

    def residual(self, theta):
        return self.A @ theta - self.b

    def jvp(self, theta, v):
        return self.A @ v

    def vjp(self, theta, y):
        return self.A.T @ y

    def jacobian(self, theta):
        return self.residual(theta), self.A

    def jacobian_shape(self):
        return tuple(self.A.shape)


class DTPINNLeastSquares(LeastSquaresProblem):
    """The DT-PINN loss of ``problem`` on ``system`` as a least-squares problem in the weights.

    Parameters
    ----------
    model : nn.Module
        The network; :meth:`set_params` writes into it in place.
    problem
        Provides ``residual(model, system)`` -> this rank's weighted residual (global loss =
        ``comm.sum((r * r).sum())``) and ``network_values(model, system)``.
    system : DiscreteSystem
    structured : {"auto", True, False}
        Dense Jacobian by ``Ju`` and sparse ``matmat`` (fast) instead of one ``jvp`` per
        parameter. ``"auto"`` uses it when the residual is a pointwise function of the network
        values at ``system.nodes`` of the form ``[s_L (L u + c(u[row_index]) - f);
        s_B (B u - g)]`` (linear and nonlinear Poisson); this is verified on a random direction
        against forward mode before it is used, so an unexpected problem falls back safely.

    Notes
    -----
    ``jvp`` uses ``torch.autograd.forward_ad`` through the network and ``spmv`` (which has a
    forward-mode rule); ``vjp`` is one backward pass. Both work for the heat equation, whose
    ``u_t`` term is itself an autograd derivative (forward-over-reverse).
    """

    def __init__(self, model: nn.Module, problem, system, structured="auto"):
        self.model, self.problem, self.system = model, problem, system
        self.comm = system.comm
        self.n_params = sum(p.numel() for p in model.parameters())
        p0 = next(model.parameters())
        self.dtype, self.device = p0.dtype, p0.device
        self._x = torch.as_tensor(system.nodes, dtype=self.dtype, device=self.device)
        self._structured = structured
        self._verdict = None    # True once the structured form was verified, else the reason
        self._L_ones = None
        self._n_rows = None

    # -- parameters ----------------------------------------------------------------------------
    def get_params(self):
        return flat_params(self.model)

    def set_params(self, theta):
        set_flat_params(self.model, theta)

    # -- residual and products -----------------------------------------------------------------
    def residual(self, theta):
        # Grad mode stays on: the heat residual takes u_t by autograd.
        r = self.problem.residual(_FunctionalModel(self.model, theta), self.system)
        r = r.detach().reshape(-1)
        self._n_rows = r.numel()
        return r

    def jvp(self, theta, v):
        with fwAD.dual_level():
            dual = fwAD.make_dual(theta.detach(), v.to(theta.dtype))
            r = self.problem.residual(_FunctionalModel(self.model, dual), self.system)
            out = fwAD.unpack_dual(r).tangent
        if out is None:  # residual independent of the weights on this rank
            out = torch.zeros_like(r)
        return out.detach().reshape(-1)

    def vjp(self, theta, y):
        th = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            r = self.problem.residual(_FunctionalModel(self.model, th), self.system).reshape(-1)
            (g,) = torch.autograd.grad(r, th, y, allow_unused=True)
        return torch.zeros_like(theta) if g is None else g.detach()

    def jacobian_shape(self):
        if self._n_rows is None:
            self.residual(self.get_params())
        return (self._n_rows, self.n_params)

    # -- dense Jacobian ------------------------------------------------------------------------
    def _values_residual(self, u: torch.Tensor) -> torch.Tensor:
        """``R(u)``: the residual with the network replaced by the values ``u`` at the nodes."""
        shape = self._out_shape
        return self.problem.residual(_ValuesModel(u, shape), self.system).reshape(-1)

    def _detect_structure(self, theta):
        """Find ``d`` with ``dR/du X = [s_L L X + d * X[row_index]; s_B B X]``; verify it."""
        sys_ = self.system
        nL, nB = sys_.L.shape[0], sys_.B.shape[0]
        sL = 1.0 / math.sqrt(sys_.n_rows_L)
        sB = 1.0 / math.sqrt(sys_.n_rows_B) if sys_.n_rows_B else 0.0
        comm = self.comm
        if self._verdict is not None:
            if self._verdict is not True:
                return None, self._verdict
            # Form verified before: only the pointwise term d (it depends on u) is recomputed.
            with torch.no_grad():
                u = functional_call(self.model, _unflatten(self.model, theta), (self._x,))
            u = u.reshape(-1)
            return (self._pointwise(u, nL, sL), sL, sB), None
        why = "residual is not of the form [s_L (L u + c(u[rows]) - f); s_B (B u - g)]"
        ok = not getattr(self.problem, "time_dependent", False)
        if not ok:
            why = "time-dependent problem (u_t by autograd): no hand-derived Jacobian"
        try:
            if ok:
                with torch.no_grad():
                    u = functional_call(self.model, _unflatten(self.model, theta), (self._x,))
                self._out_shape = (-1,) + tuple(u.shape[1:])
                u = u.reshape(-1)
                r = self._values_residual(u)
                ok = r.numel() == nL + nB
        except Exception as exc:  # the problem needs the real network (e.g. autograd in x)
            ok = False
            why = f"residual is not a function of the nodal values ({type(exc).__name__}: {exc})"
        # Agree before any collective product below, so no rank skips one the others call.
        if comm.sum(0.0 if ok else 1.0) > 0:
            self._verdict = why
            return None, why
        lin = self._lin
        d = self._pointwise(u, nL, sL)
        # Verify on a random direction (deterministic across ranks: a fixed seed per rank count;
        # only the local check is needed, the decision is reduced below).
        gen = torch.Generator().manual_seed(1234 + getattr(comm, "rank", 0))
        if ok:
            X = torch.randn(u.shape[0], 2, generator=gen, dtype=u.dtype).to(u.device)
            ref = torch.stack([lin(u, X[:, j].contiguous()) for j in range(2)], dim=1)
            got = self._apply_structure(X, d, sL, sB)
            err = (got - ref).abs().max().item() if ref.numel() else 0.0
            scale = ref.abs().max().item() if ref.numel() else 1.0
            ok = err <= 1e-10 * max(scale, 1.0)
        bad = comm.sum(0.0 if ok else 1.0)
        if bad > 0:
            self._verdict = why
            return None, why
        self._verdict = True
        return (d, sL, sB), None

    def _lin(self, u, X):
        """``dR/du X`` by forward mode through the values residual."""
        with fwAD.dual_level():
            R = self._values_residual(fwAD.make_dual(u, X))
            t = fwAD.unpack_dual(R).tangent
        return torch.zeros_like(R) if t is None else t.detach()

    def _pointwise(self, u, nL, sL):
        """The diagonal ``d`` of the pointwise part: ``dR/du 1`` minus ``s_L L 1`` (L rows)."""
        ones = torch.ones_like(u)
        if self._L_ones is None:
            self._L_ones = sL * self.system.L.matvec(ones)
        return self._lin(u, ones)[:nL] - self._L_ones

    def has_fast_jacobian(self, theta=None) -> bool:
        """Whether :meth:`jacobian` has the structured (Ju and sparse matmat) path. Collective."""
        if self._structured is False:
            return False
        theta = self.get_params() if theta is None else theta
        struct, _ = self._detect_structure(theta)
        return struct is not None

    def structured_matrix(self, theta):
        """``A_tilde`` with ``J = A_tilde Ju`` (sparse scipy CSR), or None; serial only.

        ``A_tilde = [s_L L + diag(d) P_rows; s_B B]`` (``d``: the pointwise term, e.g.
        ``-s_L exp(u)`` for nonlinear Poisson). None when the operators have no scipy form,
        the run is distributed or the residual has no such structure.
        """
        import numpy as np
        import scipy.sparse as sp

        sys_ = self.system
        if self.comm.size > 1 or not hasattr(sys_.L, "to_scipy") or not hasattr(sys_.B, "to_scipy"):
            return None
        struct, _ = self._detect_structure(theta)
        if struct is None:
            return None
        d, sL, sB = struct
        nL = sys_.L.shape[0]
        base = getattr(self, "_At_base", None)
        if base is None:  # [s_L L; s_B B] and the pointwise pattern: built once
            base = sp.vstack([sL * sys_.L.to_scipy(), sB * sys_.B.to_scipy()]).tocsr()
            self._At_base = base
        dn = d.detach().cpu().numpy()
        if not dn.any():  # linear problems: no pointwise term
            return base
        P = sp.csr_matrix((dn, (np.arange(nL), np.asarray(sys_.row_index))), shape=base.shape)
        return (base + P).tocsr()

    def gram(self, theta):
        """``(r, G, jt)``: residual, ``G = J J^T`` and ``jt(z) = J^T z``, without forming J.

        ``G = A_tilde (Ju Ju^T) A_tilde^T`` with ``Ju Ju^T`` from :func:`mlp_ntk` (the network's
        neural tangent kernel on the nodes): for the paper's 4 x 50 MLP about 25x fewer flops
        than ``J J^T`` from an explicit J. Serial, plain MLPs and structured residuals only;
        returns None otherwise (the caller then forms J).
        """
        import numpy as np

        if _mlp_spec(self.model) is None:
            return None
        At = self.structured_matrix(theta)
        if At is None:
            return None
        m = _ModelAt(self.model, theta)
        u, factors = mlp_factors(m, self._x)
        r = self._values_residual(u).detach()
        K = mlp_ntk(factors).cpu().numpy()
        AK = At @ K                      # (M, n): sparse x dense
        # G = A K A^T is symmetric up to round-off (the Cholesky reads one triangle)
        G = np.ascontiguousarray((At @ AK.T).T)
        tG = torch.from_numpy(G).to(self.dtype).to(self.device)
        AtT = At.T.tocsr()

        def jt(z):
            w = torch.from_numpy(AtT @ z.detach().cpu().numpy()).to(z.dtype).to(z.device)
            return mlp_vjp(m, factors, w)

        self._n_rows = r.numel()
        return r, tG, jt

    def _apply_structure(self, X, d, sL, sB):
        sys_ = self.system
        XL = sL * sys_.L.matmat(X)
        XL = XL + d[:, None] * X[torch.as_tensor(sys_.row_index, device=X.device)]
        XB = sB * sys_.B.matmat(X)
        return torch.cat([XL, XB], dim=0)

    def jacobian(self, theta):
        """``(r_local, J_local)``: structured (fast) when possible, else one jvp per parameter."""
        if self._structured is not False:
            struct, why = self._detect_structure(theta)
            if struct is None and self._structured is True:
                raise ValueError(f"structured Jacobian unavailable: {why}")
            if struct is not None:
                u, Ju = network_jacobian(_ModelAt(self.model, theta), self._x)
                r = self._values_residual(u).detach()
                J = self._apply_structure(Ju, *struct)
                self._n_rows = r.numel()
                return r, J
            if not getattr(self, "_warned", False):
                warnings.warn(f"dense Jacobian by {self.n_params} forward-mode products ({why}); "
                              "use the matrix-free step (step='cg') for speed", stacklevel=2)
                self._warned = True
        return super().jacobian(theta)


class _ModelAt(nn.Module):
    """``model`` with its parameters replaced by the flat vector ``theta`` (a detached copy)."""

    def __new__(cls, model, theta):
        import copy

        m = copy.deepcopy(model)
        set_flat_params(m, theta)
        return m

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

__all__ = [
    "LeastSquaresProblem", "DTPINNLeastSquares", "DenseLeastSquares",
    "flat_params", "set_flat_params", "mlp_value_jacobian", "network_jacobian",
    "JacobianTooLarge",
]


class JacobianTooLarge(MemoryError):
    """The dense Jacobian (or its normal matrix) would not fit in the memory budget."""


# --------------------------------------------------------------------------------------------
# parameters <-> flat vector
# --------------------------------------------------------------------------------------------
def flat_params(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one detached flat vector (``model.parameters()`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_flat_params(model: nn.Module, theta: torch.Tensor) -> None:
    """Copy the flat vector ``theta`` into the model's parameters, in place."""
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            k = p.numel()
            p.copy_(theta[i:i + k].view_as(p))
            i += k
    if i != theta.numel():
        raise ValueError(f"theta has {theta.numel()} entries but the model has {i} parameters")


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


def mlp_value_jacobian(model: nn.Module, x: torch.Tensor):
    """Values and weight-Jacobian of a scalar MLP at the points ``x``, derived by hand.

    One forward sweep stores the activations, one backward sweep of the layer structure (all
    points at once) gives ``du/dW = delta a^T`` and ``du/db = delta`` per point: about the cost
    of two forward passes plus writing ``Ju``, far cheaper than ``n_params`` forward-mode passes.

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
    spec = _mlp_spec(model)
    if spec is None:
        raise ValueError("mlp_value_jacobian needs a plain MLP (dtpinn_dist.model.MLP or "
                         "nn.Sequential of nn.Linear/nn.Tanh)")
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
        n = x.shape[0]
        blocks = {}
        delta = torch.ones(n, 1, dtype=x.dtype, device=x.device)  # du/dz_k
        for k in range(len(lins) - 1, -1, -1):
            m = lins[k]
            blocks[id(m.weight)] = (delta[:, :, None] * ins[k][:, None, :]).reshape(n, -1)
            if m.bias is not None:
                blocks[id(m.bias)] = delta
            if k > 0:
                delta = (delta @ m.weight) * df(zs[k - 1], ins[k])
        Ju = torch.cat([blocks[id(p)] for p in model.parameters()], dim=1)
    return u, Ju


def network_jacobian(model: nn.Module, x: torch.Tensor):
    """``(u, Ju)`` at ``x``: hand-derived for plain MLPs, ``torch.func.jacrev`` otherwise.

    The hand-derived values are checked against ``model(x)`` so a model with a custom forward
    that merely looks like an MLP falls back to the generic path.
    """
    if _mlp_spec(model) is not None:
        u, Ju = mlp_value_jacobian(model, x)
        with torch.no_grad():
            ref = model(x).reshape(-1)
        if torch.allclose(u, ref, rtol=1e-12, atol=1e-12 * max(1.0, float(ref.abs().max()))):
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
        self._structure = None
        self._structured = structured
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
            return None, why

        def lin(u, X):
            with fwAD.dual_level():
                R = self._values_residual(fwAD.make_dual(u, X))
                t = fwAD.unpack_dual(R).tangent
            return torch.zeros_like(R) if t is None else t.detach()

        d = None
        if ok:
            ones = torch.ones_like(u)
            d = lin(u, ones)[:nL] - sL * sys_.L.matvec(ones)
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
            return None, why
        return (d, sL, sB), None

    def has_fast_jacobian(self, theta=None) -> bool:
        """Whether :meth:`jacobian` has the structured (Ju and sparse matmat) path. Collective."""
        if self._structured is False:
            return False
        theta = self.get_params() if theta is None else theta
        struct, _ = self._detect_structure(theta)
        return struct is not None

    def _apply_structure(self, X, d, sL, sB):
        sys_ = self.system
        XL = sL * sys_.L.matmat(X)
        XL = XL + d[:, None] * X[torch.as_tensor(sys_.row_index, device=X.device)]
        XB = sB * sys_.B.matmat(X)
        return torch.cat([XL, XB], dim=0)

    def jacobian(self, theta):
        """``(r_local, J_local)``: structured (fast) when possible, else one jvp per parameter."""
        if self._structured is not False:
            # The linearisation d depends on u (nonlinear Poisson): recompute per call.
            struct, why = self._detect_structure(theta) if self._structure is None or \
                self._structure_nonlinear else (self._structure, None)
            if struct is None and self._structured is True:
                raise ValueError(f"structured Jacobian unavailable: {why}")
            if struct is not None:
                self._structure = struct
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

    # The diagonal term of R's linearisation changes with u unless the problem is linear; we do
    # not know which, so the (cheap: 3 residual evaluations) detection runs for every Jacobian.
    _structure_nonlinear = True


class _ModelAt(nn.Module):
    """``model`` with its parameters replaced by the flat vector ``theta`` (a detached copy)."""

    def __new__(cls, model, theta):
        import copy

        m = copy.deepcopy(model)
        set_flat_params(m, theta)
        return m

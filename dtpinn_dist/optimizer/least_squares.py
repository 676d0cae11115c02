"""A PINN loss as a least-squares problem in the network weights: residual, J v, J^T y, dense J.

A DT-PINN residual depends on the weights ``w`` only through the network: ``r(w) = R(u(w))``
with ``R`` built from the sparse RBF-FD operators (paper eqs. (12), (16)). So

* matrix-free products ``J v`` (forward mode) and ``J^T y`` (reverse mode) go through
  ``Discretization.residual`` itself and cover every problem, time-dependent ones included;
* for steady DT problems the dense Jacobian is ``J = (dR/du) Ju``: the network Jacobian ``Ju``
  (:mod:`dtpinn_dist.model.jacobian`) times the linearisation the declaration provides
  (:meth:`~dtpinn_dist.problem.discrete.Discretization.linearization`: the linear operator plus
  ``diag(dR/d(D_j u)) D_j``), applied through ``LinearOperator.matmat`` (a PETSc MatMatMult when
  distributed). Nothing is detected: the structure is declared.

Parameter vectors are flat tensors in ``model.parameters()`` order and are replicated (every rank
holds the same bits). Residual vectors are distributed: each rank holds its rows.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call

from ..model.jacobian import (is_plain_mlp, mlp_factors, mlp_ntk, mlp_vjp, network_jacobian,
                              unflatten)
from ..model.params import copy_flat_into, flatten

__all__ = ["LeastSquaresProblem", "DenseLeastSquares", "PINNLeastSquares", "JacobianTooLarge"]


class JacobianTooLarge(MemoryError):
    """The dense Jacobian (or its normal matrix) would not fit in the memory budget."""


class _FunctionalModel(nn.Module):
    """``model`` evaluated with the weights ``theta`` (which may carry tangents or a graph)."""

    def __init__(self, model: nn.Module, theta: torch.Tensor):
        super().__init__()
        self._model = [model]  # a list keeps it out of this module's parameters
        self._params = unflatten(model, theta)

    def forward(self, *args, **kwargs):
        return functional_call(self._model[0], self._params, args, kwargs)


def _model_at(model: nn.Module, theta: torch.Tensor) -> nn.Module:
    """A detached copy of ``model`` holding the weights ``theta``."""
    m = copy.deepcopy(model)
    copy_flat_into(theta, m.parameters())
    return m


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

    def has_fast_jacobian(self) -> bool:
        """Whether :meth:`jacobian` is cheaper than one :meth:`jvp` per parameter."""
        return True

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
    """``r(w) = A w - b`` with an explicit matrix: tests and toys.

    Parameters
    ----------
    A : (m, n) tensor
    b : (m,) tensor
    comm : communicator, optional
    """

    def __init__(self, A: torch.Tensor, b: torch.Tensor, comm=None, theta0=None):
        from ..comm import SerialComm

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


class PINNLeastSquares(LeastSquaresProblem):
    """The loss of a :class:`~dtpinn_dist.problem.discrete.Discretization` as least squares in
    the weights of ``model`` (updated in place by :meth:`set_params`).

    Parameters
    ----------
    model : nn.Module
    disc : Discretization
        Provides ``residual(model)`` (this rank's scaled rows; the loss is
        ``comm.sum((r * r).sum())``) and, for steady DT problems, ``values_residual(U)``,
        ``linearization(U)`` and ``linearization_matrix(U)``.

    Notes
    -----
    ``jvp`` uses ``torch.autograd.forward_ad`` through the network and ``spmv`` (which has a
    forward-mode rule); ``vjp`` is one backward pass. Both work for the heat equation, whose
    ``u_t`` term is itself an autograd derivative (forward-over-reverse).
    """

    def __init__(self, model: nn.Module, disc):
        self.model, self.disc = model, disc
        self.comm = disc.comm
        self.n_params = sum(p.numel() for p in model.parameters())
        self._x = disc.data["X"]
        self._n_rows = None
        self._warned = False

    # -- parameters ----------------------------------------------------------------------------
    def get_params(self):
        return flatten(self.model.parameters())

    def set_params(self, theta):
        copy_flat_into(theta, self.model.parameters())

    # -- residual and products -----------------------------------------------------------------
    def residual(self, theta):
        # Grad mode stays on: a time-dependent residual takes u_t by autograd.
        r = self.disc.residual(_FunctionalModel(self.model, theta)).detach().reshape(-1)
        self._n_rows = r.numel()
        return r

    def jvp(self, theta, v):
        with fwAD.dual_level():
            dual = fwAD.make_dual(theta.detach(), v.to(theta.dtype))
            r = self.disc.residual(_FunctionalModel(self.model, dual))
            out = fwAD.unpack_dual(r).tangent
        if out is None:  # residual independent of the weights on this rank
            out = torch.zeros_like(r)
        return out.detach().reshape(-1)

    def vjp(self, theta, y):
        th = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            r = self.disc.residual(_FunctionalModel(self.model, th)).reshape(-1)
            (g,) = torch.autograd.grad(r, th, y, allow_unused=True)
        return torch.zeros_like(theta) if g is None else g.detach()

    def jacobian_shape(self):
        if self._n_rows is None:
            self.residual(self.get_params())
        return (self._n_rows, self.n_params)

    # -- the declared structure ------------------------------------------------------------------
    def has_fast_jacobian(self) -> bool:
        return bool(self.disc.has_structure)

    def jacobian(self, theta):
        """``(r_local, J_local)``: ``(dR/du) Ju`` for steady DT problems, else one jvp per
        parameter (with a warning: use the matrix-free step there)."""
        if not self.disc.has_structure:
            if not self._warned:
                warnings.warn(f"dense Jacobian by {self.n_params} forward-mode products (the "
                              "residual is not a function of nodal values alone); use the "
                              "matrix-free step (step='cg') for speed", stacklevel=2)
                self._warned = True
            return super().jacobian(theta)
        u, Ju = network_jacobian(_model_at(self.model, theta), self._x)
        r = self.disc.values_residual(u).detach()
        J = self.disc.linearization(u)(Ju)
        self._n_rows = r.numel()
        return r, J

    def structured_matrix(self, theta):
        """``A_tilde`` with ``J = A_tilde Ju`` (scipy CSR; serial torch backend), or None."""
        if not self.disc.has_structure:
            return None
        with torch.no_grad():
            u = _model_at(self.model, theta)(self._x).reshape(-1)
        return self.disc.linearization_matrix(u)

    def gram(self, theta):
        """``(r, G, jt)``: residual, ``G = J J^T`` and ``jt(z) = J^T z``, without forming J.

        ``G = A_tilde (Ju Ju^T) A_tilde^T`` with ``Ju Ju^T`` the network's tangent kernel on the
        nodes (:func:`~dtpinn_dist.model.jacobian.mlp_ntk`): for the paper's 4 x 50 MLP about 25x
        fewer flops than ``J J^T`` from an explicit J. Serial, plain MLPs and steady DT problems
        only; returns None otherwise (the caller then forms J).
        """
        import numpy as np

        if not is_plain_mlp(self.model):
            return None
        At = self.structured_matrix(theta)
        if At is None:
            return None
        m = _model_at(self.model, theta)
        u, factors = mlp_factors(m, self._x)
        r = self.disc.values_residual(u).detach()
        K = mlp_ntk(factors).cpu().numpy()
        AK = At @ K                      # (M, n): sparse x dense
        # G = A K A^T is symmetric up to round-off (the Cholesky reads one triangle)
        G = np.ascontiguousarray((At @ AK.T).T)
        dtype, device = self._x.dtype, self._x.device
        tG = torch.from_numpy(G).to(dtype).to(device)
        AtT = At.T.tocsr()

        def jt(z):
            w = torch.from_numpy(AtT @ z.detach().cpu().numpy()).to(z.dtype).to(z.device)
            return mlp_vjp(m, factors, w)

        self._n_rows = r.numel()
        return r, tG, jt

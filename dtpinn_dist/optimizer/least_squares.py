"""A PINN loss as a least-squares problem in the network weights: residual, J v, J^T y, dense J.

A DT-PINN residual depends on the weights ``w`` only through the network: ``r(w) = R(u(w))``
with ``R`` built from the sparse RBF-FD operators (paper eqs. (12), (16)). So

* for steady DT problems ``J = A Ju``: the network Jacobian ``Ju``
  (:mod:`dtpinn_dist.model.jacobian`) times the linearisation ``A = dR/du`` the declaration
  provides (:meth:`~dtpinn_dist.problem.discrete.Discretization.linearization`: the linear
  operator plus ``diag(dR/d(D_j u)) D_j``, and its transpose), applied through
  ``LinearOperator.matmat`` / ``rmatmat`` (PETSc MatMatMult / MatTransposeMatMult when
  distributed, halo exchange inside). For a plain MLP ``J v = A (Ju v)`` and
  ``J^T y = Ju^T (A^T y)`` come from the layer factors without forming ``Ju`` (about one forward
  pass each), and the dense ``J`` is built block of columns by block. Nothing is detected: the
  structure is declared;
* otherwise (time-dependent problems, other networks) ``J v`` by forward mode and ``J^T y`` by
  reverse mode through ``Discretization.residual`` itself (:meth:`PINNLeastSquares.linearize`
  keeps one graph per linearisation for all ``J^T y``).

:meth:`LeastSquaresProblem.linearize` gives everything a Gauss-Newton step needs at one point
(:class:`Linearization`).

Parameter vectors are flat tensors in ``model.parameters()`` order and are replicated (every rank
holds the same bits). Residual vectors are distributed: each rank holds its rows.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call

from ..model.jacobian import (is_plain_mlp, mlp_factors, mlp_jacobian_columns, mlp_jvp,
                              mlp_matches, mlp_ntk, mlp_vjp, network_jacobian, unflatten)
from ..model.params import copy_flat_into, flatten

__all__ = ["LeastSquaresProblem", "DenseLeastSquares", "PINNLeastSquares", "JacobianTooLarge",
           "Linearization", "gram_of_columns"]

#: Columns of ``J`` formed per block when the dense ``J`` is built from ``A`` and ``Ju``: bounds
#: the temporaries (and the dense work blocks a PETSc operator keeps per block width).
JACOBIAN_BLOCK = 512


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


def gram_of_columns(J: torch.Tensor) -> torch.Tensor:
    """``J^T J`` (symmetric, both triangles). For float64 CPU tensors by BLAS ``dsyrk`` (one
    triangle: half the flops of ``J.T @ J``), mirrored in place; else ``J.T @ J``."""
    if J.device.type != "cpu" or J.dtype != torch.float64 or not J.is_contiguous():
        return J.T @ J
    from scipy.linalg.blas import dsyrk

    # J (C order, m x P) is J^T in Fortran order: dsyrk(J^T) = J^T J, lower triangle only
    H = torch.from_numpy(dsyrk(1.0, J.numpy().T, lower=1))
    H.add_(H.tril(-1).T)
    return H.T  # symmetric: the transpose is the same matrix, C-contiguous


class Linearization:
    """A least-squares problem at one point ``theta``: what a Gauss-Newton step needs.

    Attributes
    ----------
    r : tensor
        This rank's residual rows at ``theta``.
    kind : str
        How the products are computed: ``"factors"`` (``A`` and the MLP's layer factors),
        ``"autograd"`` (forward / reverse mode through the residual) or ``"explicit"``.
    n_params : int
        P, the length of the parameter vector.

    Methods ``jvp(v)`` (``J v``, this rank's rows), ``vjp(y)`` (this rank's share of ``J^T y``:
    sum over ranks with ``comm.sum``), ``jacobian()`` (this rank's rows of the dense ``J``),
    ``normal()`` (this rank's ``J^T J``, P x P: sum over ranks), ``gram()`` (``J J^T`` by the
    tangent kernel, serial plain MLPs only, else None). ``products`` counts ``jvp`` + ``vjp``
    calls.
    """

    def __init__(self, r, jvp, vjp, jacobian, kind, n_params, gram=None):
        self.r, self.kind = r, kind
        self._jvp, self._vjp, self._jacobian, self._gram = jvp, vjp, jacobian, gram
        self.n_params = n_params
        self.products = 0

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self._jvp(v)

    def vjp(self, y: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self._vjp(y)

    def jacobian(self) -> torch.Tensor:
        return self._jacobian()

    def normal(self) -> torch.Tensor:
        """``J_local^T J_local`` (P x P) from this rank's rows of ``J`` (n_r x P: the one
        O(N P / ranks) array; built in blocks of ``JACOBIAN_BLOCK`` columns when the structure
        gives them, so ``Ju`` is never whole)."""
        return gram_of_columns(self.jacobian())

    def gram(self):
        """``J J^T`` (rows x rows) from the network's tangent kernel, or None."""
        return None if self._gram is None else self._gram()


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

    def work(self) -> dict:
        """Floating-point work of a Gauss-Newton step's pieces on this rank, for the step-kind
        cost model of :class:`~dtpinn_dist.optimizer.lm.LevenbergMarquardt` (``step="auto"``).

        ``product``: one ``J v`` (one ``J^T y`` costs the same); ``jacobian``: this rank's rows
        of the dense ``J``; ``kernel``: ``J J^T`` (serial; None where :meth:`Linearization.gram`
        has no cheap form). Each is ``(dense, sparse)`` flops: work at BLAS rates and work at
        sparse-times-dense rates. Default: ``J`` by one :meth:`jvp` per parameter.
        """
        m, P = self.jacobian_shape()
        prod = (2.0 * m * P, 0.0)
        return {"product": prod, "jacobian": (P * prod[0], 0.0),
                "kernel": (P * prod[0] + 2.0 * m * m * P, 0.0)}

    def linearize(self, theta: torch.Tensor) -> Linearization:
        """Residual and products at ``theta`` (default: this problem's own methods)."""
        def gram():
            J = self.jacobian(theta)[1]
            return J @ J.T

        return Linearization(self.residual(theta), lambda v: self.jvp(theta, v),
                             lambda y: self.vjp(theta, y), lambda: self.jacobian(theta)[1],
                             kind="explicit", n_params=self.n_params,
                             gram=gram if self.comm.size == 1 else None)


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

    def work(self):
        m, P = self.A.shape
        return {"product": (2.0 * m * P, 0.0), "jacobian": (0.0, 0.0),
                "kernel": (2.0 * m * m * P, 0.0)}


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
        self._work = None

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

    def work(self):
        """Flops (see :meth:`LeastSquaresProblem.work`) from the sizes: ``n`` network points,
        ``m`` rows, ``P`` parameters, ``nnz`` of the linearisation ``A`` (this rank's rows).

        Factor products (plain MLP, steady DT problem): ``Ju v`` and ``Ju^T w`` about two
        forward passes each (``4 n P``) plus ``A x`` (``2 nnz`` sparse); the dense ``J`` is
        ``Ju``'s columns (``2 n P``) times ``A`` (``2 nnz P`` sparse); the tangent kernel costs
        ``2 (fan_out + fan_in + 1)`` flops per layer and point pair (two Gram products of
        :func:`~dtpinn_dist.model.jacobian.mlp_ntk`), then ``A K A^T`` ``2 nnz (n + m)``
        sparse. Otherwise (autograd products) a product costs about three forward passes and
        ``J`` one forward-mode product per parameter. Computed once (the sizes do not change).
        """
        if self._work is not None:
            return self._work
        theta = self.get_params()
        m, P = self.jacobian_shape()
        n = int(getattr(self.disc, "network_points", m))
        mlp = self._mlp_at(theta)
        if mlp is None:
            prod = (6.0 * n * P, 0.0)
            self._work = {"product": prod, "jacobian": (P * prod[0], 0.0), "kernel": None}
            return self._work
        u = mlp[1].detach().reshape(-1)
        # global columns: this rank's rows of a PETSc system too (any rank count)
        A = self.disc.linearization_matrix(u, global_columns=True)
        nnz = 0.0 if A is None else float(A.nnz)
        kernel = None
        if self.comm.size == 1 and self.disc.linearization_matrix(u) is not None:  # as _gram
            pair = sum(2.0 * (lay.out_features + lay.in_features + 1)
                       for lay in self.model.modules() if isinstance(lay, nn.Linear))
            kernel = (pair * n * n, 2.0 * nnz * (n + m))
        self._work = {"product": (4.0 * n * P, 2.0 * nnz),
                      "jacobian": (2.0 * n * P, 2.0 * nnz * P), "kernel": kernel}
        return self._work

    # -- the declared structure ------------------------------------------------------------------
    def has_fast_jacobian(self) -> bool:
        return bool(self.disc.has_structure)

    def _mlp_at(self, theta):
        """``(model copy, u, factors)`` when the factor products apply (plain MLP, and its
        hand-derived values equal ``model(X)``: a custom forward that merely looks like an MLP
        falls back), else None."""
        if not (self.disc.has_structure and is_plain_mlp(self.model)):
            return None
        m = _model_at(self.model, theta)
        u, factors = mlp_factors(m, self._x)
        if not mlp_matches(m, self._x, u):
            return None
        return m, u, factors

    def linearize(self, theta) -> Linearization:
        """Residual and Jacobian products at ``theta``.

        Steady DT problem with a plain MLP: ``J v = A (Ju v)``, ``J^T y = Ju^T (A^T y)`` with
        ``A`` = :meth:`~dtpinn_dist.problem.discrete.Discretization.linearization` and its
        transpose, ``Ju`` products from the layer factors (one forward and one backward sweep
        at ``theta``, then ~one forward pass per product). Otherwise forward / reverse mode
        through the residual; the reverse-mode graph is built once and kept for every ``J^T y``.
        """
        mlp = self._mlp_at(theta)
        if mlp is not None:
            return self._factor_linearization(theta, *mlp)
        th = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            r_graph = self.disc.residual(_FunctionalModel(self.model, th)).reshape(-1)
        r = r_graph.detach()
        self._n_rows = r.numel()

        def vjp(y):
            if not r_graph.requires_grad:  # no rows on this rank
                return torch.zeros_like(theta)
            (g,) = torch.autograd.grad(r_graph, th, y, retain_graph=True, allow_unused=True)
            return torch.zeros_like(theta) if g is None else g.detach()

        return Linearization(r, lambda v: self.jvp(theta, v), vjp,
                             lambda: self.jacobian(theta)[1], kind="autograd",
                             n_params=self.n_params)

    def _factor_linearization(self, theta, m, u, factors) -> Linearization:
        disc = self.disc
        # exact Dirichlet conditions: the solution's nodal values are G + phi u (problem.lift)
        r = disc.values_residual(disc.lifted(u)).detach()
        self._n_rows = r.numel()
        A, AT = disc.network_linearization_pair(u)

        def jvp(v):
            return A(mlp_jvp(m, factors, v)[:, None])[:, 0]

        def vjp(y):
            return mlp_vjp(m, factors, AT(y.reshape(-1, 1))[:, 0])

        def columns(j0, j1):
            return A(mlp_jacobian_columns(m, factors, j0, j1))

        def jacobian():
            P = self.n_params
            J = r.new_empty((r.numel(), P))
            for j0 in range(0, P, JACOBIAN_BLOCK):  # Ju never whole; one block's temporaries
                j1 = min(P, j0 + JACOBIAN_BLOCK)
                J[:, j0:j1] = columns(j0, j1)
            return J

        gram = None
        if self.comm.size == 1:
            def gram():
                return self._gram(u, factors)

        return Linearization(r, jvp, vjp, jacobian, kind="factors", n_params=self.n_params,
                             gram=gram)

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
        mlp = self._mlp_at(theta)
        if mlp is not None:
            lin = self._factor_linearization(theta, *mlp)
            return lin.r, lin.jacobian()
        u, Ju = network_jacobian(_model_at(self.model, theta), self._x)
        r = self.disc.values_residual(self.disc.lifted(u)).detach()
        J = self.disc.network_linearization_pair(u)[0](Ju)
        self._n_rows = r.numel()
        return r, J

    def structured_matrix(self, theta):
        """``A_tilde`` with ``J = A_tilde Ju`` (scipy CSR; serial torch backend), or None."""
        if not self.disc.has_structure:
            return None
        with torch.no_grad():
            u = _model_at(self.model, theta)(self._x).reshape(-1)
        return self.disc.network_linearization_matrix(u)

    def _gram(self, u, factors):
        """``A_tilde (Ju Ju^T) A_tilde^T`` with the tangent kernel
        (:func:`~dtpinn_dist.model.jacobian.mlp_ntk`), or None without a scipy operator form."""
        At = self.disc.network_linearization_matrix(u)
        if At is None:
            return None
        K = mlp_ntk(factors).cpu().numpy()
        AK = At @ K                      # (M, n): sparse x dense
        del K
        # G = A K A^T is symmetric up to round-off (the Cholesky reads one triangle)
        G = np.ascontiguousarray((At @ AK.T).T)
        return torch.from_numpy(G).to(self._x.dtype).to(self._x.device)

    def gram(self, theta):
        """``(r, G, jt)``: residual, ``G = J J^T`` and ``jt(z) = J^T z``, without forming J.

        ``G = A_tilde (Ju Ju^T) A_tilde^T`` with ``Ju Ju^T`` the network's tangent kernel on the
        nodes (:func:`~dtpinn_dist.model.jacobian.mlp_ntk`): for the paper's 4 x 50 MLP about 25x
        fewer flops than ``J J^T`` from an explicit J. Serial, plain MLPs and steady DT problems
        only; returns None otherwise.
        """
        lin = self.linearize(theta)
        G = lin.gram()
        if G is None:
            return None
        return lin.r, G, lin.vjp

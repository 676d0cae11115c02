"""The one operator interface every backend implements, and the autograd SpMV built on it.

A :class:`LinearOperator` is this process's block of a (possibly distributed) sparse matrix A:
it maps the values this rank owns at the matrix's columns to the rows this rank owns.
Backends: torch sparse CSR (:mod:`.torch_csr`), CuPy CSR (:mod:`.cupy_csr`) and PETSc MPIAIJ
(:mod:`dtpinn_dist.distributed.petsc_operator`). The trainer and the optimizers only see this
interface, so serial and distributed training share one code path.

Collective semantics: for a distributed backend every method is collective (all ranks call it,
in the same order); serial backends are trivially so.
"""
from __future__ import annotations

import abc

import torch


class LinearOperator(abc.ABC):
    """Local block of a sparse linear operator ``A`` with products ``A x``, ``A^T y``, ``A X``.

    Attributes
    ----------
    shape : (int, int)
        Local (rows, columns): the rows this rank owns, and the column entries (network values)
        this rank owns. Serially, the whole matrix.
    global_shape : (int, int)
        The shape of the whole matrix across all ranks.
    dtype : torch.dtype
    device : torch.device
    """

    shape: tuple[int, int]
    global_shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    @abc.abstractmethod
    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x`` of shape ``(cols,)``; returns ``(rows,)``."""

    @abc.abstractmethod
    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y`` for ``y`` of shape ``(rows,)``; returns ``(cols,)``."""

    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        """``A X`` for a dense block ``X`` of shape ``(cols, k)``; returns ``(rows, k)``.

        Backends with a native sparse-times-dense product override this; the fallback applies
        :meth:`matvec` column by column (same result, ``k`` collective calls).
        """
        if X.shape[1] == 0:
            return X.new_zeros((self.shape[0], 0))
        return torch.stack([self.matvec(X[:, j].contiguous()) for j in range(X.shape[1])], dim=1)

    def rmatmat(self, Y: torch.Tensor) -> torch.Tensor:
        """``A^T Y`` for a dense block ``Y`` of shape ``(rows, k)``; returns ``(cols, k)``."""
        if Y.shape[1] == 0:
            return Y.new_zeros((self.shape[1], 0))
        return torch.stack([self.rmatvec(Y[:, j].contiguous()) for j in range(Y.shape[1])], dim=1)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return spmv(self, x)


class _SpMV(torch.autograd.Function):
    """forward ``A x``, backward ``A^T g`` (paper, appendix A.2), forward-mode ``A dx``."""

    @staticmethod
    def forward(x, op):
        return op.matvec(x) if x.dim() == 1 else op.matmat(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx, grad_out):
        op = ctx.op
        grad_out = grad_out.contiguous()
        grad_x = op.rmatvec(grad_out) if grad_out.dim() == 1 else op.rmatmat(grad_out)
        return grad_x, None

    @staticmethod
    def jvp(ctx, x_tangent, op_tangent):
        op = ctx.op
        x_tangent = x_tangent.contiguous()
        return op.matvec(x_tangent) if x_tangent.dim() == 1 else op.matmat(x_tangent)


def spmv(op: LinearOperator, x: torch.Tensor) -> torch.Tensor:
    """Differentiable ``A x`` for ``x`` of shape ``(cols,)`` or ``(cols, k)``.

    Gradients flow to ``x`` through ``A^T`` (reverse mode) and ``A`` (forward mode); ``A``
    itself is a constant. Collective when ``op`` is distributed.
    """
    if x.shape[0] != op.shape[1]:
        raise ValueError(
            f"operator has {op.shape[1]} local columns but the vector has {x.shape[0]} entries: "
            "evaluate the network on exactly the nodes the operator was built for")
    return _SpMV.apply(x, op)

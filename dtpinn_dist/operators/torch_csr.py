"""Torch sparse-CSR backend of :class:`~dtpinn_dist.operators.linear.LinearOperator`, and the
serial :class:`~dtpinn_dist.operators.system.DiscreteSystem` builder.

The transpose is stored as its own CSR matrix (built once), so the backward pass ``A^T g`` is a
row-parallel CSR product too instead of a scatter-add through ``A``.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from .linear import LinearOperator
from .system import DiscreteSystem

__all__ = ["TorchCSROperator", "serial_system", "serial_operator"]


def _to_torch_csr(A: sp.csr_matrix, dtype: torch.dtype, device) -> torch.Tensor:
    A = sp.csr_matrix(A)
    A.sort_indices()
    with warnings.catch_warnings():
        # "CSR support is in beta" is noise for us: we only use CSR @ dense.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(A.indptr.astype(np.int64)),
            torch.from_numpy(A.indices.astype(np.int64)),
            torch.from_numpy(np.asarray(A.data, dtype=np.float64)).to(dtype),
            size=A.shape, device=device, check_invariants=False)


class TorchCSROperator(LinearOperator):
    """``A`` as a torch sparse CSR tensor, with a precomputed CSR copy of ``A^T``.

    Parameters
    ----------
    A : scipy.sparse matrix
        The (local) matrix; converted to CSR.
    dtype : torch.dtype
        Value dtype of the products (cast once here; ``x`` must have the same dtype).
    device : str or torch.device
    global_shape : (int, int), optional
        Defaults to ``A.shape`` (serial use).
    """

    def __init__(self, A, dtype: torch.dtype = torch.float64, device="cpu", global_shape=None):
        A = sp.csr_matrix(A)
        self.shape = (int(A.shape[0]), int(A.shape[1]))
        self.global_shape = tuple(global_shape) if global_shape is not None else self.shape
        self.dtype = dtype
        self.device = torch.device(device)
        self.nnz = int(A.nnz)
        self._A = _to_torch_csr(A, dtype, self.device)
        self._AT = _to_torch_csr(A.T.tocsr(), dtype, self.device)

    def _check(self, x: torch.Tensor, n: int, what: str) -> None:
        if x.shape[0] != n:
            raise ValueError(f"{what}: expected {n} rows, got tensor of shape {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(f"{what}: operator is {self.dtype} but the tensor is {x.dtype}; build "
                            "the operator with the network's dtype")

    def matvec(self, x):
        self._check(x, self.shape[1], "matvec")
        return torch.mv(self._A, x)

    def rmatvec(self, y):
        self._check(y, self.shape[0], "rmatvec")
        return torch.mv(self._AT, y)

    def matmat(self, X):
        self._check(X, self.shape[1], "matmat")
        return self._A @ X

    def rmatmat(self, Y):
        self._check(Y, self.shape[0], "rmatmat")
        return self._AT @ Y

    def to_scipy(self) -> sp.csr_matrix:
        """The matrix back as scipy CSR (float64), e.g. for reference checks."""
        A = self._A.to("cpu")
        return sp.csr_matrix((A.values().double().numpy(), A.col_indices().numpy(),
                              A.crow_indices().numpy()), shape=self.shape)

    def __repr__(self):
        return f"TorchCSROperator(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype})"


def serial_operator(A, backend: str = "torch", dtype: torch.dtype = torch.float64, device="cpu"):
    """A serial :class:`LinearOperator` for scipy matrix ``A`` on ``backend`` ('torch', 'cupy')."""
    if backend == "torch":
        return TorchCSROperator(A, dtype=dtype, device=device)
    if backend == "cupy":
        from .cupy_csr import CupyCSROperator
        return CupyCSROperator(A, dtype=dtype, device="cuda" if device == "cpu" else device)
    raise ValueError(f"unknown serial backend {backend!r}: use 'torch' or 'cupy' "
                     "('petsc' goes through dtpinn_dist.distributed.assembly.distributed_system)")


def serial_system(cloud, order: int, specs: dict | None = None, *, alpha=1.0, beta=1.0,
                  dtype: torch.dtype = torch.float64, device="cpu",
                  backend: str = "torch") -> DiscreteSystem:
    """The whole cloud as one rank's :class:`DiscreteSystem` (``comm = SerialComm()``).

    Parameters
    ----------
    cloud : dtpinn_dist.geometry.PointCloud
        Ghost nodes are added (``cloud.with_ghost()``) when missing.
    order : int
        RBF-FD order p.
    specs : dict, optional
        Name -> :class:`~dtpinn_dist.operators.rbffd.OperatorSpec`; default: the paper's L and B
        (:func:`~dtpinn_dist.operators.rbffd.paper_specs` with ``alpha``, ``beta``).
    dtype, device, backend
        Of the operators' products ('torch' sparse CSR or 'cupy').
    """
    from ..comm import SerialComm
    from .rbffd import paper_specs, spec_matrices

    if cloud.ghost is None:
        cloud = cloud.with_ghost()
    if specs is None:
        specs = paper_specs(cloud, alpha, beta)
    if backend == "cupy" and torch.device(device).type == "cpu":
        device = "cuda"
    ni, nb = cloud.n_interior, cloud.n_boundary
    ops = {name: serial_operator(A, backend, dtype, device)
           for name, A in spec_matrices(cloud, order, specs).items()}
    tags = getattr(cloud, "boundary_tags", None)
    return DiscreteSystem(
        nodes=cloud.nodes, row_index=np.arange(ni + nb), boundary_index=np.arange(ni, ni + nb),
        interior_index=np.arange(ni), normals=np.asarray(cloud.normals, dtype=np.float64),
        boundary_tags=np.zeros(nb, np.int64) if tags is None else np.asarray(tags, np.int64),
        ops=ops, rows_of={name: spec.rows for name, spec in specs.items()},
        n_collocation=ni + nb, n_boundary=nb, n_interior=ni, comm=SerialComm(),
        dtype=dtype, device=torch.device(device),
        test_points=None if cloud.test is None else np.asarray(cloud.test, dtype=np.float64),
        info={"backend": backend, "order": int(order), "n_nodes": int(cloud.n_nodes)})

"""PETSc MPIAIJ backend of :class:`~dtpinn_dist.operators.linear.LinearOperator`.

``A x`` is ``MatMult`` and ``A^T y`` is ``MatMultTranspose``: PETSc does the halo exchange (a
``VecScatter`` of the off-rank columns each rank's rows reference, forward for ``A x``, reverse
with addition for ``A^T y``). Blocks ``A X`` / ``A^T Y`` (heat: one column per time slice) are one
``MatMatMult`` / ``MatTransposeMatMult`` with a MATDENSE block, i.e. one halo exchange for all
columns instead of one per column.

Memory: on CPU, vectors share memory with the torch tensors (``VecPlaceArray`` on persistent work
Vecs: no copies and no per-call PETSc allocation; only the output tensor is new, as autograd
needs). Dense blocks are copied into / out of persistent MATDENSE work matrices, because petsc4py
does not expose ``MatDensePlaceArray``. ``VecPlaceArray`` bumps the Vec's object state, so PETSc's
cached norms are never stale. A GPU tensor is copied to the host
and the result copied back (the documented fallback; a CUDA-enabled PETSc with
``-mat_type aijcusparse -vec_type cuda`` would share device memory through DLPack instead; see
docs/distributed.md).

Collective semantics: every product method is collective over the Mat's communicator: all ranks
call it, in the same order, with their local blocks (a rank with zero local rows passes and gets
empty tensors, but still calls).
"""
from __future__ import annotations

import numpy as np
import torch

from ..operators.linear import LinearOperator

__all__ = ["PETScOperator", "petsc_scalar_dtype"]


def petsc_scalar_dtype():
    """numpy dtype of PETSc's scalar (float64 for our builds; complex/single builds refused)."""
    from petsc4py import PETSc

    return np.dtype(PETSc.ScalarType)


class PETScOperator(LinearOperator):
    """A PETSc AIJ matrix (MPIAIJ, SeqAIJ, or any type chosen at runtime from the options
    database) behind the :class:`LinearOperator` interface.

    Parameters
    ----------
    mat : petsc4py.PETSc.Mat
        Assembled matrix; its row layout is this operator's rows, its column layout the
        network values each rank owns.
    dtype : torch.dtype
        float64 (PETSc's scalar: products share memory with PETSc) or float32 (inputs are cast
        to float64 copies and results cast back; for fp32 vanilla PINNs, which never apply the
        matrices in training).
    device : torch device
        Where inputs live and outputs are returned. CPU shares memory with PETSc; CUDA copies
        through the host (see module docstring).
    explicit_transpose : bool
        Ask GPU matrix types to form ``A^T`` once (``MAT_FORM_EXPLICIT_TRANSPOSE``) so
        ``MatMultTranspose`` runs as a row-parallel product; ignored by CPU AIJ, where the
        transpose product is already a scatter-add over the CSR rows.

    Collective: construction (creates the work Vecs with ``MatCreateVecs``) and every product.
    """

    def __init__(self, mat, dtype: torch.dtype = torch.float64, device="cpu",
                 explicit_transpose: bool = True, name: str | None = None):
        from petsc4py import PETSc

        self.PETSc = PETSc
        if petsc_scalar_dtype() != np.float64:
            raise ValueError(f"PETSc scalar type is {petsc_scalar_dtype()}; dtpinn_dist needs a "
                             "real float64 PETSc (configure without --with-scalar-type=complex and "
                             "--with-precision=single)")
        if dtype not in (torch.float64, torch.float32):
            raise TypeError(f"PETScOperator supports torch.float64 (native, zero-copy) and "
                            f"torch.float32 (cast through float64 copies); got {dtype}")
        self.mat = mat
        self.name = name or mat.getName() or "A"
        (m, M), (n, N) = mat.getSizes()
        self.shape = (int(m), int(n))
        self.global_shape = (int(M), int(N))
        self.dtype = dtype
        self.device = torch.device(device)
        self.comm = mat.getComm()
        mtype = mat.getType()
        self.mat_type = mtype
        if explicit_transpose and any(k in mtype for k in ("cusparse", "hipsparse", "kokkos")):
            mat.setOption(PETSc.Mat.Option.FORM_EXPLICIT_TRANSPOSE, True)
        # Persistent work Vecs: x has the column layout, y the row layout (MatCreateVecs gives
        # the Vec type matching the Mat type, e.g. CUDA Vecs for aijcusparse).
        self._x, self._y = mat.createVecs()
        self._dense = {}  # k -> (X, AX, Y, ATY) persistent dense blocks and products
        self.nnz = int(mat.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_used"])

    # ---- helpers ---------------------------------------------------------------------------
    def _host(self, t: torch.Tensor, n: int, what: str) -> np.ndarray:
        if t.shape[0] != n:
            raise ValueError(f"{self.name}.{what}: expected {n} local rows, got a tensor of shape "
                             f"{tuple(t.shape)}")
        if t.dtype != self.dtype:
            raise TypeError(f"{self.name}.{what}: operator is {self.dtype} but the tensor is "
                            f"{t.dtype}")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")  # copy fallback for GPU tensors
        if t.dtype != torch.float64:
            t = t.to(torch.float64)  # fp32 fallback: PETSc computes in float64
        return t.contiguous().numpy()

    def _out(self, host: torch.Tensor) -> torch.Tensor:
        if self.dtype != torch.float64:
            host = host.to(self.dtype)
        return host if self.device.type == "cpu" else host.to(self.device)

    def _apply(self, transpose: bool, x: torch.Tensor) -> torch.Tensor:
        n_in, n_out = (self.shape[0], self.shape[1]) if transpose else (self.shape[1], self.shape[0])
        xin = self._host(x, n_in, "rmatvec" if transpose else "matvec")
        out = torch.empty(n_out, dtype=torch.float64)
        vin, vout = (self._y, self._x) if transpose else (self._x, self._y)
        # A zero-length local block has no memory to share: leave those Vecs as they are.
        placed_in, placed_out = n_in > 0, n_out > 0
        if placed_in:
            vin.placeArray(xin)
        if placed_out:
            vout.placeArray(out.numpy())
        try:
            if transpose:
                self.mat.multTranspose(vin, vout)
            else:
                self.mat.mult(vin, vout)
        finally:
            if placed_in:
                vin.resetArray()
            if placed_out:
                vout.resetArray()
        return self._out(out)

    def _blocks(self, k: int):
        """Persistent dense work blocks for ``k`` columns (created once per k, collectively)."""
        blk = self._dense.get(k)
        if blk is None:
            PETSc = self.PETSc
            (m, M), (n, N) = self.mat.getSizes()
            X = PETSc.Mat().createDense(((n, N), (PETSc.DECIDE, k)), comm=self.comm)
            X.setUp()
            X.assemble()
            Y = PETSc.Mat().createDense(((m, M), (PETSc.DECIDE, k)), comm=self.comm)
            Y.setUp()
            Y.assemble()
            AX = self.mat.matMult(X)
            ATY = self.mat.transposeMatMult(Y)
            blk = self._dense[k] = (X, AX, Y, ATY)
        return blk

    def _apply_block(self, transpose: bool, X: torch.Tensor) -> torch.Tensor:
        n_in, n_out = (self.shape[0], self.shape[1]) if transpose else (self.shape[1], self.shape[0])
        if X.dim() != 2:
            raise ValueError(f"{self.name}: expected a 2-D block, got shape {tuple(X.shape)}")
        k = int(X.shape[1])
        if k == 0:
            return X.new_zeros((n_out, 0))
        xin = self._host(X, n_in, "rmatmat" if transpose else "matmat")
        Xd, AX, Yd, ATY = self._blocks(k)
        src, dst = (Yd, ATY) if transpose else (Xd, AX)
        # petsc4py has no MatDensePlaceArray: copy the block into the persistent dense Mat's
        # (column-major) storage, one pass over n*k numbers, tiny next to the sparse product.
        if n_in > 0:
            src.getDenseArray(readonly=False)[...] = xin
        src.stateIncrease()  # we wrote behind PETSc's back
        if transpose:
            self.mat.transposeMatMult(src, result=dst)
        else:
            self.mat.matMult(src, result=dst)
        out = torch.from_numpy(np.array(dst.getDenseArray(readonly=True), order="C", copy=True))
        return self._out(out)

    # ---- LinearOperator ----------------------------------------------------------------------
    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` (MatMult). Collective."""
        return self._apply(False, x)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y`` (MatMultTranspose). Collective."""
        return self._apply(True, y)

    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        """``A X`` for a local block (cols, k) (MatMatMult with a dense block). Collective; all
        ranks must pass the same k."""
        return self._apply_block(False, X)

    def rmatmat(self, Y: torch.Tensor) -> torch.Tensor:
        """``A^T Y`` for a local block (rows, k) (MatTransposeMatMult). Collective; same k."""
        return self._apply_block(True, Y)

    # ---- inspection ------------------------------------------------------------------------
    def ownership(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Global (row range, column range) this rank owns."""
        return self.mat.getOwnershipRange(), self.mat.getOwnershipRangeColumn()

    def to_scipy_local(self):
        """This rank's rows as scipy CSR with GLOBAL column indices (shape (rows, N)). Local."""
        import scipy.sparse as sp

        indptr, indices, data = self.mat.getValuesCSR()
        return sp.csr_matrix((data, indices, indptr), shape=(self.shape[0], self.global_shape[1]))

    def halo_size(self) -> int:
        """Number of off-rank columns this rank's rows reference (what MatMult receives). Local."""
        A = self.to_scipy_local()
        c0, c1 = self.mat.getOwnershipRangeColumn()
        cols = np.unique(A.indices)
        return int(np.count_nonzero((cols < c0) | (cols >= c1)))

    def __repr__(self):
        return (f"PETScOperator({self.name}, type={self.mat_type}, local={self.shape}, "
                f"global={self.global_shape}, nnz={self.nnz})")

"""CuPy CSR backend (the paper's route, appendix A.2): SpMV on the GPU via cuSPARSE, tensors
shared with torch through DLPack without copies. ``A^T`` is precomputed as its own CSR matrix.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .linear import LinearOperator

__all__ = ["CupyCSROperator", "cupy_available"]


def cupy_available() -> tuple[bool, str]:
    """(True, "") when cupy imports and sees a CUDA device, else (False, reason naming the fix)."""
    try:
        import cupy
    except ImportError:
        return False, ("the cupy backend needs CuPy: pip install 'dtpinn-dist[gpu]' (cupy-cuda12x "
                       "matching your CUDA), or use the torch backend")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy raises its own CUDARuntimeError without a driver
        return False, f"CuPy found no usable CUDA device ({exc}); use the torch backend"
    if n < 1 or not torch.cuda.is_available():
        return False, ("the cupy backend needs a CUDA GPU visible to both CuPy and torch; "
                       "use --backend torch")
    return True, ""


class CupyCSROperator(LinearOperator):
    """``A`` (and a precomputed ``A^T``) as ``cupyx.scipy.sparse.csr_matrix`` on the GPU.

    Raises
    ------
    RuntimeError
        When CuPy or a CUDA GPU is missing (the message names the fix).
    """

    def __init__(self, A, dtype: torch.dtype = torch.float64, device="cuda", global_shape=None):
        ok, why = cupy_available()
        if not ok:
            raise RuntimeError(why)
        import cupy
        import cupyx.scipy.sparse as csp

        A = sp.csr_matrix(A)
        np_dtype = {torch.float64: np.float64, torch.float32: np.float32}[dtype]
        self.shape = (int(A.shape[0]), int(A.shape[1]))
        self.global_shape = tuple(global_shape) if global_shape is not None else self.shape
        self.dtype = dtype
        self.device = torch.device(device)
        self._cp = cupy
        with cupy.cuda.Device(self.device.index or 0):
            self._A = csp.csr_matrix(A.astype(np_dtype))
            self._AT = csp.csr_matrix(A.T.tocsr().astype(np_dtype))

    def _apply(self, M, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype or x.device.type != "cuda":
            raise TypeError(f"CupyCSROperator needs a CUDA {self.dtype} tensor, got "
                            f"{x.dtype} on {x.device}")
        xc = self._cp.from_dlpack(x.detach().contiguous())
        return torch.from_dlpack(M.dot(xc))

    def matvec(self, x):
        return self._apply(self._A, x)

    def rmatvec(self, y):
        return self._apply(self._AT, y)

    def matmat(self, X):
        return self._apply(self._A, X)

    def rmatmat(self, Y):
        return self._apply(self._AT, Y)

"""Torch CSR (and CuPy) backends of the autograd SpMV: values and gradients."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dtpinn_dist.operators.linear import spmv
from dtpinn_dist.operators.torch_csr import TorchCSROperator, serial_operator


def _matrix(m=13, n=17, seed=0):
    return sp.random(m, n, density=0.3, format="csr", random_state=seed) + sp.eye(m, n)


def test_products_match_scipy():
    A = _matrix().tocsr()
    op = TorchCSROperator(A, dtype=torch.float64)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(17), rng.standard_normal(13)
    X, Y = rng.standard_normal((17, 4)), rng.standard_normal((13, 4))
    t = torch.from_numpy
    np.testing.assert_allclose(op.matvec(t(x)).numpy(), A @ x, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(op.rmatvec(t(y)).numpy(), A.T @ y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(op.matmat(t(X)).numpy(), A @ X, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(op.rmatmat(t(Y)).numpy(), A.T @ Y, rtol=1e-13, atol=1e-13)
    assert op.shape == (13, 17) and op.global_shape == (13, 17)
    assert abs(op.to_scipy() - A).max() == 0


@pytest.mark.parametrize("cols", [None, 3])
def test_gradcheck_reverse_and_forward(cols):
    op = TorchCSROperator(_matrix(), dtype=torch.float64)
    shape = (17,) if cols is None else (17, cols)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    f = lambda v: spmv(op, v)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    assert torch.autograd.gradcheck(f, (x,), check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False, check_batched_grad=False)


def test_backward_uses_transpose_of_non_square():
    A = _matrix(5, 9, seed=3)
    op = TorchCSROperator(A, dtype=torch.float64)
    x = torch.randn(9, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, dtype=torch.float64)
    (spmv(op, x) * g).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), A.T @ g.numpy(), rtol=1e-13, atol=1e-13)


def test_fp32_and_dtype_mismatch():
    op = TorchCSROperator(_matrix(), dtype=torch.float32)
    x = torch.randn(17, dtype=torch.float32)
    assert spmv(op, x).dtype == torch.float32
    with pytest.raises(TypeError, match="dtype"):
        op.matvec(torch.randn(17, dtype=torch.float64))
    with pytest.raises(ValueError, match="columns"):
        spmv(op, torch.randn(16, dtype=torch.float32))


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        serial_operator(_matrix(), backend="nope")


def _has_cupy_gpu():
    from dtpinn_dist.operators.cupy_csr import cupy_available
    return cupy_available()[0]


def test_cupy_missing_is_a_clear_error():
    if _has_cupy_gpu():
        pytest.skip("cupy and a GPU are present")
    from dtpinn_dist.operators.cupy_csr import CupyCSROperator
    with pytest.raises(RuntimeError, match="--backend torch"):
        CupyCSROperator(_matrix())


@pytest.mark.skipif(not _has_cupy_gpu(), reason="needs cupy and a CUDA GPU")
@pytest.mark.parametrize("cols", [None, 3])
def test_cupy_gradcheck(cols):
    from dtpinn_dist.operators.cupy_csr import CupyCSROperator
    A = _matrix()
    op = CupyCSROperator(A, dtype=torch.float64)
    shape = (17,) if cols is None else (17, cols)
    x = torch.randn(shape, dtype=torch.float64, device="cuda", requires_grad=True)
    np.testing.assert_allclose(spmv(op, x).detach().cpu().numpy(),
                               A @ x.detach().cpu().numpy(), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: spmv(op, v), (x,))
    assert torch.autograd.gradcheck(lambda v: spmv(op, v), (x,), check_forward_ad=True,
                                    check_backward_ad=False, check_undefined_grad=False,
                                    check_batched_grad=False)

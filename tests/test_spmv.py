"""Torch CSR (and CuPy) backends of the autograd SpMV: values and gradients."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dtpinn_dist.operators.linear import spmv
from dtpinn_dist.operators.torch_csr import TorchCSROperator, serial_operator
from roundoff import matvec_diff_bound


def _matrix(m=13, n=17, seed=0):
    A = sp.random(m, n, density=0.3, format="csr", random_state=np.random.default_rng(seed))
    return A + sp.eye(m, n)


def _randn(*shape, seed, dtype=torch.float64, **kw):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype, **kw)


def test_products_match_scipy(spread):
    A = _matrix().tocsr()
    op = TorchCSROperator(A, dtype=torch.float64)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(17), rng.standard_normal(13)
    X, Y = rng.standard_normal((17, 4)), rng.standard_normal((13, 4))
    t = torch.from_numpy
    # torch and scipy sum each row in their own order: round-off bound 2 gamma_nnz |A| |x|
    for got, M, v in ((op.matvec(t(x)), A, x), (op.rmatvec(t(y)), A.T, y),
                      (op.matmat(t(X)), A, X), (op.rmatmat(t(Y)), A.T, Y)):
        err, bound = np.abs(got.numpy() - M @ v), matvec_diff_bound(M, v)
        spread("spmv.products/bound", (err / bound).max(), 1.0)
        assert np.all(err <= bound)
    assert op.shape == (13, 17) and op.global_shape == (13, 17)
    assert abs(op.to_scipy() - A).max() == 0


@pytest.mark.parametrize("cols", [None, 3])
def test_gradcheck_reverse_and_forward(cols):
    op = TorchCSROperator(_matrix(), dtype=torch.float64)
    shape = (17,) if cols is None else (17, cols)
    x = _randn(shape, seed=2, requires_grad=True)
    f = lambda v: spmv(op, v)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    assert torch.autograd.gradcheck(f, (x,), check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False, check_batched_grad=False)


def test_backward_uses_transpose_of_non_square(spread):
    A = _matrix(5, 9, seed=3)
    op = TorchCSROperator(A, dtype=torch.float64)
    x = _randn(9, seed=3, requires_grad=True)
    g = _randn(5, seed=4)
    (spmv(op, x) * g).sum().backward()
    # the gradient is A^T g summed in torch's order: round-off bound 2 gamma_nnz |A^T| |g|
    err = np.abs(x.grad.numpy() - A.T @ g.numpy())
    bound = matvec_diff_bound(A.T, g.numpy())
    # bound 0 on empty rows of A^T (err 0 there too): not a 0/0 in the record
    spread("spmv.backward/bound", (err / np.where(bound > 0, bound, 1.0)).max(), 1.0)
    assert np.all(err <= bound)


def test_fp32_and_dtype_mismatch():
    op = TorchCSROperator(_matrix(), dtype=torch.float32)
    x = _randn(17, seed=5, dtype=torch.float32)
    assert spmv(op, x).dtype == torch.float32
    with pytest.raises(TypeError, match="dtype"):
        op.matvec(_randn(17, seed=5))
    with pytest.raises(ValueError, match="columns"):
        spmv(op, _randn(16, seed=5, dtype=torch.float32))


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
    with pytest.raises(RuntimeError, match="torch backend"):
        CupyCSROperator(_matrix())


@pytest.mark.skipif(not _has_cupy_gpu(), reason="needs cupy and a CUDA GPU")
@pytest.mark.parametrize("cols", [None, 3])
def test_cupy_gradcheck(cols):
    from dtpinn_dist.operators.cupy_csr import CupyCSROperator
    A = _matrix()
    op = CupyCSROperator(A, dtype=torch.float64)
    shape = (17,) if cols is None else (17, cols)
    x = _randn(shape, seed=6).to("cuda").requires_grad_(True)
    xh = x.detach().cpu().numpy()
    # cuSPARSE sums each row in its own order: round-off bound 2 gamma_nnz |A| |x|
    err = np.abs(spmv(op, x).detach().cpu().numpy() - A @ xh)
    assert np.all(err <= matvec_diff_bound(A, xh))
    assert torch.autograd.gradcheck(lambda v: spmv(op, v), (x,))
    assert torch.autograd.gradcheck(lambda v: spmv(op, v), (x,), check_forward_ad=True,
                                    check_backward_ad=False, check_undefined_grad=False,
                                    check_batched_grad=False)

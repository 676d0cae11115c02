"""PETScOperator (issue 2 §4): MatMult / MatMultTranspose / dense blocks against scipy on the
gathered matrix, the adjoint identity with global sums, autograd. Runs serially and under
``mpirun -n 2/3`` (every rank asserts; all ranks reach the same collectives)."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from roundoff import dot_diff_bound, matvec_diff_bound, normal_product_diff_bound, row_nnz

pytest.importorskip("petsc4py")
pytest.importorskip("mpi4py")

pytestmark = pytest.mark.mpi


def _petsc():
    from dtpinn_dist.comm import init_petsc

    return init_petsc()


def _layout(n, size, uneven=True):
    """Uneven split of n items over size ranks; with >= 2 ranks rank 1 gets nothing."""
    if size == 1:
        return np.array([0, n])
    w = np.arange(1, size + 1, dtype=float) if uneven else np.ones(size)
    if uneven:
        w[1] = 0.0
    cuts = np.floor(np.cumsum(w) / w.sum() * n).astype(int)
    return np.concatenate([[0], cuts])


def _random_global(M, N, seed, density=0.08):
    rng = np.random.default_rng(seed)
    A = sp.random(M, N, density=density, random_state=rng, format="csr")
    # a full band so every row has entries, including far off-process columns
    A = (A + sp.eye(M, N, k=0) + sp.eye(M, N, k=N // 2)).tocsr()
    A.sort_indices()
    return A


def _operator(A, rows, cols, comm):
    from dtpinn_dist.distributed.assembly import petsc_aij
    from dtpinn_dist.distributed.petsc_operator import PETScOperator

    PETSc = _petsc()
    r = comm.rank
    pcomm = comm.comm if comm.size > 1 else PETSc.COMM_SELF
    local = A[rows[r]:rows[r + 1]]
    mat = petsc_aij(local, (rows[r + 1] - rows[r], A.shape[0]), (cols[r + 1] - cols[r], A.shape[1]),
                    pcomm, "A")
    return PETScOperator(mat, name="A")


@pytest.mark.parametrize("shape", [(37, 53), (60, 41)])
def test_products_match_scipy(comm, shape, spread):
    M, N = shape
    A = _random_global(M, N, seed=M)
    rows, cols = _layout(M, comm.size), _layout(N, comm.size, uneven=comm.size > 2)
    op = _operator(A, rows, cols, comm)
    r = comm.rank
    assert op.shape == (rows[r + 1] - rows[r], cols[r + 1] - cols[r])
    assert op.global_shape == (M, N)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal(N), rng.standard_normal(M)
    X, Y = rng.standard_normal((N, 4)), rng.standard_normal((M, 4))
    xs, ys = slice(cols[r], cols[r + 1]), slice(rows[r], rows[r + 1])

    AT = A.T.tocsr()

    def close(got, M, v):
        """got = M v; PETSc and scipy sum each row in their own order (and PETSc splits it
        into diagonal and off-process blocks): round-off bound 2 gamma_nnz |M| |v|."""
        got, want = got.numpy(), M @ v
        assert got.shape == want.shape
        err, bound = np.abs(got - want), matvec_diff_bound(M, v)
        spread("petsc.products/bound", (err / bound).max(initial=0), 1.0)
        assert np.all(err <= bound)

    for _ in range(2):  # twice: the persistent work objects are reused correctly
        close(op.matvec(torch.from_numpy(x[xs].copy())), A[ys], x)
        close(op.rmatvec(torch.from_numpy(y[ys].copy())), AT[xs], y)
        close(op.matmat(torch.from_numpy(X[xs].copy())), A[ys], X)
        close(op.rmatmat(torch.from_numpy(Y[ys].copy())), AT[xs], Y)
    # a non-contiguous block (a column slice of a wider tensor) and k = 1
    Xw = torch.from_numpy(X[xs].copy())
    close(op.matmat(Xw[:, 1:3]), A[ys], X[:, 1:3])
    close(op.matmat(Xw[:, :1]), A[ys], X[:, :1])
    assert op.matmat(Xw[:, :0]).shape == (op.shape[0], 0)
    # inputs are left untouched
    assert np.array_equal(Xw.numpy(), X[xs])


def test_local_block_and_halo(comm):
    M, N = 30, 30
    A = _random_global(M, N, seed=3)
    rows = cols = _layout(M, comm.size, uneven=False)
    op = _operator(A, rows, cols, comm)
    r = comm.rank
    loc = op.to_scipy_local()
    assert (loc != A[rows[r]:rows[r + 1]]).nnz == 0
    cols_used = np.unique(A[rows[r]:rows[r + 1]].indices)
    want = np.count_nonzero((cols_used < cols[r]) | (cols_used >= cols[r + 1]))
    assert op.halo_size() == want
    if comm.size > 1:
        assert comm.sum(op.halo_size()) > 0  # the test really has off-process entries


def test_adjoint_identity_global(comm, spread):
    """<A x, y> = <x, A^T y> with global (deterministic) sums: the distributed gradient check."""
    M, N = 45, 52
    A = _random_global(M, N, seed=11)
    rows, cols = _layout(M, comm.size), _layout(N, comm.size)
    op = _operator(A, rows, cols, comm)
    g = torch.Generator().manual_seed(100 + comm.rank)
    x = torch.randn(op.shape[1], dtype=torch.float64, generator=g)
    y = torch.randn(op.shape[0], dtype=torch.float64, generator=g)

    def bound(xl, yl, k):
        """Both sides sum the terms a_ij x_j y_i in different orders; each term passes through
        at most (longest row or column) + k (local dot) + ranks additions: 2 gamma |y|^T|A||x|."""
        xg = np.concatenate(comm.allgather(xl.numpy()))
        yg = np.concatenate(comm.allgather(yl.numpy()))
        n = max(row_nnz(A).max(), row_nnz(A.T).max()) + k + comm.size
        return dot_diff_bound(float(np.sum(np.abs(yg) * (abs(A) @ np.abs(xg)))), n)

    lhs = comm.sum(float(op.matvec(x) @ y))
    rhs = comm.sum(float(x @ op.rmatvec(y)))
    tol = bound(x[:, None], y[:, None], max(M, N))
    spread("petsc.adjoint", abs(lhs - rhs), tol)
    assert abs(lhs - rhs) <= tol
    Xb = torch.randn(op.shape[1], 3, dtype=torch.float64, generator=g)
    Yb = torch.randn(op.shape[0], 3, dtype=torch.float64, generator=g)
    lhs = comm.sum(float((op.matmat(Xb) * Yb).sum()))
    rhs = comm.sum(float((Xb * op.rmatmat(Yb)).sum()))
    tol = bound(Xb, Yb, 3 * max(M, N))
    spread("petsc.adjoint.block", abs(lhs - rhs), tol)
    assert abs(lhs - rhs) <= tol


def test_autograd_through_spmv_distributed(comm, spread):
    """Gradient of sum((A x)^2) through spmv equals 2 A^T A x on the gathered matrix."""
    from dtpinn_dist.operators.linear import spmv

    M, N = 40, 40
    A = _random_global(M, N, seed=5)
    rows, cols = _layout(M, comm.size), _layout(N, comm.size)
    op = _operator(A, rows, cols, comm)
    r = comm.rank
    xg = np.random.default_rng(1).standard_normal(N)
    x = torch.from_numpy(xg[cols[r]:cols[r + 1]].copy()).requires_grad_(True)
    (spmv(op, x) ** 2).sum().backward()
    want = (2 * A.T @ (A @ xg))[cols[r]:cols[r + 1]]
    # two computations of 2 A^T A x: round-off bound of roundoff.normal_product_diff_bound
    bound = normal_product_diff_bound(A, xg)[cols[r]:cols[r + 1]]
    spread("petsc.autograd/bound", (np.abs(x.grad.numpy() - want) / bound).max(initial=0), 1.0)
    assert np.all(np.abs(x.grad.numpy() - want) <= bound)
    Xg = np.random.default_rng(2).standard_normal((N, 3))
    X = torch.from_numpy(Xg[cols[r]:cols[r + 1]].copy()).requires_grad_(True)
    (spmv(op, X) ** 2).sum().backward()
    want = (2 * A.T @ (A @ Xg))[cols[r]:cols[r + 1]]
    bound = normal_product_diff_bound(A, Xg)[cols[r]:cols[r + 1]]
    assert np.all(np.abs(X.grad.numpy() - want) <= bound)


def test_gradcheck_serial_operator(comm):
    """torch.autograd.gradcheck (reverse and forward mode) on a one-process PETSc matrix;
    every rank runs its own COMM_SELF copy, so the number of products may differ freely."""
    from dtpinn_dist.distributed.assembly import petsc_aij
    from dtpinn_dist.distributed.petsc_operator import PETScOperator
    from dtpinn_dist.operators.linear import spmv

    PETSc = _petsc()
    A = _random_global(12, 9, seed=2)
    op = PETScOperator(petsc_aij(A, (12, 12), (9, 9), PETSc.COMM_SELF, "A"))
    g = torch.Generator().manual_seed(9)
    x = torch.randn(9, dtype=torch.float64, generator=g).requires_grad_(True)
    X = torch.randn(9, 3, dtype=torch.float64, generator=g).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: spmv(op, v), (x,), check_forward_ad=True)
    assert torch.autograd.gradcheck(lambda v: spmv(op, v), (X,), check_forward_ad=True)


def test_bad_inputs_raise(comm):
    A = _random_global(10, 10, seed=1)
    rows = cols = _layout(10, comm.size, uneven=False)
    op = _operator(A, rows, cols, comm)
    with pytest.raises(ValueError, match="local rows"):
        op.matvec(torch.zeros(op.shape[1] + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="float64"):
        op.matvec(torch.zeros(op.shape[1], dtype=torch.float32))  # operator built for float64


def test_mat_type_from_options(comm):
    """Matrices take their type from the options database (-mat_type): here an explicit
    'aij' prefix option; the products are unchanged."""
    from dtpinn_dist.distributed.assembly import petsc_aij
    from dtpinn_dist.distributed.petsc_operator import PETScOperator

    PETSc = _petsc()
    opts = PETSc.Options()
    opts.setValue("tst_mat_type", "baij")
    try:
        A = _random_global(20, 20, seed=9)
        rows = cols = _layout(20, comm.size, uneven=False)
        r = comm.rank
        pcomm = comm.comm if comm.size > 1 else PETSc.COMM_SELF
        mat = petsc_aij(A[rows[r]:rows[r + 1]], (rows[r + 1] - rows[r], 20),
                        (cols[r + 1] - cols[r], 20), pcomm, "A", options_prefix="tst_")
        assert "baij" in mat.getType()
        op = PETScOperator(mat)
        x = np.arange(20.0)
        got = op.matvec(torch.from_numpy(x[cols[r]:cols[r + 1]].copy())).numpy()
        # round-off bound 2 gamma_nnz |A| |x| (BAIJ sums in its own block order)
        Ar = A[rows[r]:rows[r + 1]]
        assert np.all(np.abs(got - Ar @ x) <= matvec_diff_bound(Ar, x))
    finally:
        opts.delValue("tst_mat_type")

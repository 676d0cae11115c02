"""RBF-FD weights: polynomial exactness, convergence orders, Poisson solve on the authors' nodes,
row subsets, error paths, CLI."""
import itertools
from math import factorial

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl

from dtpinn_dist.geometry import PointCloud, load_mat, make_cloud
from dtpinn_dist.operators import (assemble, biharmonic_matrix, boundary_matrix, gradient_matrix,
                                   laplacian_matrix, rbffd_weights, stencil_params)
from dtpinn_dist.operators.polynomials import multi_indices, n_poly
from roundoff import gamma



# Polynomial exactness is the saddle system's last block row, P^T w = L q. LU with partial pivoting
# is backward stable, so that residual is <= c gamma_(n+M) times the rows' absolute scale
# (n stencil nodes, M polynomials), c the pivot growth; evaluating A f adds gamma_n. Measured
# max |A f - exact| / ((|A||f| + |exact|) gamma_(n+M)) = 0.70 over all cases here and in the
# tests below (threads 1 and 2); tolerance EXACTNESS gamma_(n+M).
EXACTNESS = 16


def exactness_ratio(A, f, exact):
    """max |A f - exact| / (|A| |f| + |exact|): polynomial exactness relative to round-off scale."""
    err = np.abs(A @ f - exact)
    return float((err / (abs(A) @ np.abs(f) + np.abs(exact) + 1e-300)).max())


def mono_deriv(x, a, b):
    """D^b x^a at points x (N, d)."""
    if any(bi > ai for ai, bi in zip(a, b)):
        return np.zeros(len(x))
    c = np.prod([factorial(ai) / factorial(ai - bi) for ai, bi in zip(a, b)])
    return c * np.prod([x[:, k] ** (a[k] - b[k]) for k in range(len(a))], axis=0)


def unit(d, k, v=1):
    return tuple(v * (j == k) for j in range(d))


def exact_op(op, x, a, normals=None, alpha=None, beta=None):
    d = x.shape[1]
    if op == "laplacian":
        return sum(mono_deriv(x, a, unit(d, k, 2)) for k in range(d))
    if op == "biharmonic":
        out = sum(mono_deriv(x, a, unit(d, k, 4)) for k in range(d))
        for i, j in itertools.combinations(range(d), 2):
            out = out + 2 * mono_deriv(x, a, tuple(2 * (q in (i, j)) for q in range(d)))
        return out
    if op.startswith("grad"):
        return mono_deriv(x, a, unit(d, int(op[-1])))
    if op == "robin":
        g = sum(normals[:, k] * mono_deriv(x, a, unit(d, k)) for k in range(d))
        return alpha * g + beta * mono_deriv(x, a, (0,) * d)
    raise AssertionError(op)


@pytest.fixture(scope="module")
def clouds():
    return {2: make_cloud("disk", n=700, seed=11), 3: make_cloud("ball", n=1800, seed=12)}


CASES = ([(2, op, p) for op in ("laplacian", "grad0", "grad1", "robin") for p in range(2, 7)]
         + [(2, "biharmonic", p) for p in (2, 3, 4)]
         + [(3, op, p) for op in ("laplacian", "grad2", "robin") for p in (2, 3, 4)]
         + [(3, "biharmonic", 2)])


@pytest.mark.parametrize("d, op, p", CASES)
def test_polynomial_exactness(clouds, d, op, p, spread):
    """Every operator reproduces the exact derivatives of all monomials of degree <= l."""
    c = clouds[d]
    theta = {"laplacian": 2, "biharmonic": 4}.get(op, 1)
    l, _, n = stencil_params(p, theta, d)
    rng = np.random.default_rng(p)
    X = c.nodes
    # a sample of rows incl. boundary-adjacent ones keeps this fast
    if op == "robin":
        rows = rng.choice(c.n_boundary, 40, replace=False)
        alpha = rng.uniform(0.5, 2.0, c.n_boundary)  # per-node alpha, scalar beta
        beta = -1.3
        A = boundary_matrix(c, p, alpha=alpha, beta=beta, rows=rows)
        xr = c.boundary[rows]
        kw = dict(normals=c.normals[rows], alpha=alpha[rows], beta=beta)
    else:
        rows = np.concatenate([rng.choice(c.n_interior, 30, replace=False),
                               c.n_interior + rng.choice(c.n_boundary, 10, replace=False)])
        if op == "laplacian":
            A = laplacian_matrix(c, p, rows=rows)
        elif op == "biharmonic":
            A = biharmonic_matrix(c, p, rows=rows)
        else:
            A = gradient_matrix(c, p, axis=int(op[-1]), rows=rows)
        xr = X[rows]
        kw = {}
    assert A.shape == (len(rows), len(X))
    absA = abs(A)
    worst = 0.0
    for a in multi_indices(l, d):
        f = mono_deriv(X, tuple(a), (0,) * d)
        exact = exact_op(op, xr, tuple(a), **kw)
        err = np.abs(A @ f - exact)
        # round-off scale: sum_j |w_ij| |f_j|
        scale = absA @ np.abs(f) + np.abs(exact) + 1e-300
        worst = max(worst, float((err / scale).max()))
    spread("rbffd.exactness/gamma", worst / gamma(n + n_poly(l, d)), EXACTNESS)
    assert worst <= EXACTNESS * gamma(n + n_poly(l, d)), worst


def _lap_errors(ds, p, d):
    errs, hs = [], []
    for c in ds:
        X = c.nodes
        u = np.exp(0.7 * X[:, 0]) * np.sin(1.3 * X[:, 1] + 0.4) * (np.cos(X[:, 2]) if d == 3 else 1)
        lap_u = (0.49 - 1.69 - (1.0 if d == 3 else 0.0)) * u
        # RMS error over a fixed-size sample of interior and boundary rows (the max over all
        # rows is dominated by a few worst stencils and is noisy on random clouds)
        rng = np.random.default_rng(0)
        rows = np.concatenate([rng.choice(c.n_interior, min(c.n_interior, 500), replace=False),
                               c.n_interior + rng.choice(c.n_boundary, min(c.n_boundary, 250), replace=False)])
        L = laplacian_matrix(c, p, rows=rows)
        errs.append(np.sqrt(np.mean((L @ u - lap_u[rows]) ** 2)))
        hs.append(c.h)
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    return slope, errs


@pytest.fixture(scope="module")
def disk_sequence():
    return [make_cloud("disk", n=n, seed=1) for n in (1000, 2000, 4000, 8000)]


@pytest.fixture(scope="module")
def ball_sequence():
    return [make_cloud("ball", n=n, seed=1) for n in (3000, 6000, 12000, 24000)]


@pytest.mark.parametrize("p", [2, 3, 4, 5])
def test_convergence_2d(disk_sequence, p):
    slope, errs = _lap_errors(disk_sequence, p, 2)
    assert slope >= p - 0.5, (slope, errs)


@pytest.mark.parametrize("p", [2, 3, 4])
def test_convergence_3d(ball_sequence, p):
    slope, errs = _lap_errors(ball_sequence, p, 3)
    assert slope >= p - 0.5, (slope, errs)


def _poisson_error(c, p):
    L, B = assemble(c, p)
    X = c.nodes
    x, y = X[:, 0], X[:, 1]
    u = 1 + np.sin(np.pi * x) * np.cos(np.pi * y)
    f = -2 * np.pi ** 2 * np.sin(np.pi * x) * np.cos(np.pi * y)
    ux, uy = np.pi * np.cos(np.pi * x) * np.cos(np.pi * y), -np.pi * np.sin(np.pi * x) * np.sin(np.pi * y)
    Ni, Nc = c.n_interior, c.n_interior + c.n_boundary
    g = c.normals[:, 0] * ux[Ni:Nc] + c.normals[:, 1] * uy[Ni:Nc] + u[Ni:Nc]
    A = sp.vstack([L, B]).tocsc()
    assert A.shape == (Nc + c.n_boundary, Nc + c.n_ghost)
    U = spl.spsolve(A, np.concatenate([f[:Nc], g]))
    return np.linalg.norm(U[:Nc] - u[:Nc]) / np.linalg.norm(u[:Nc])


def test_poisson_solve_authors_nodes(shared_reference):
    c = load_mat(shared_reference / "DiskPoissonNodes.mat", n=4975)
    errs = {p: _poisson_error(c, p) for p in (2, 3, 4, 5)}
    print("relative L2 errors, N=4975:", errs)
    assert errs[2] > errs[3] > errs[4] > errs[5]
    assert errs[4] < 2e-6
    assert errs[3] < 1e-5 and errs[5] < 5e-8


def test_poisson_solve_converges_with_n(shared_reference):
    e = [_poisson_error(load_mat(shared_reference / "DiskPoissonNodes.mat", n=n), 3)
         for n in (828, 3196)]
    assert e[1] < e[0] / 4


def _exact_tol(p, theta, d):
    l, _, n = stencil_params(p, theta, d)
    return EXACTNESS * gamma(n + n_poly(l, d))


def test_rows_subset_matches_full(clouds, spread):
    c = clouds[2]
    L = laplacian_matrix(c, 3)
    rows = np.array([5, c.n_interior + 3, 0, 17])
    np.testing.assert_array_equal(laplacian_matrix(c, 3, rows=rows).toarray(),
                                  L[rows].toarray())
    B = boundary_matrix(c, 3, alpha=2.0, beta=0.5)
    rb = np.array([4, 1])
    np.testing.assert_array_equal(boundary_matrix(c, 3, 2.0, 0.5, rows=rb).toarray(),
                                  B[rb].toarray())
    assert L.shape == (c.n_interior + c.n_boundary, c.n_nodes) and B.shape == (c.n_boundary, c.n_nodes)
    _, _, n = stencil_params(3, 2, 2)
    assert np.all(np.diff(L.indptr) == n) and L.has_sorted_indices
    # gradient of a linear function is exact; each row of L annihilates constants (to round-off
    # of the weights' size, see EXACTNESS)
    one = np.ones(c.n_nodes)
    spread("rbffd.L1/gamma", exactness_ratio(L, one, 0.0) / _exact_tol(3, 2, 2), 1.0)
    assert exactness_ratio(L, one, 0.0) <= _exact_tol(3, 2, 2)
    gx = gradient_matrix(c, 3, axis=0)
    lin = 3 * c.nodes[:, 0] - c.nodes[:, 1]
    spread("rbffd.grad_linear/gamma", exactness_ratio(gx, lin, 3.0) / _exact_tol(3, 1, 2), 1.0)
    assert exactness_ratio(gx, lin, 3.0) <= _exact_tol(3, 1, 2)


def test_dirichlet_and_neumann(clouds, spread):
    c = clouds[2]
    D = boundary_matrix(c, 4, alpha=0.0, beta=1.0)
    # Dirichlet: the stencil centre is a node, so the weights interpolate exactly: row i is the
    # unit vector of its centre. These are the solution of the saddle system itself, so their
    # error is its forward error (condition number times round-off), not a residual like the
    # exactness checks: measured max |w - e_centre| / sum |w| = 2.3e-12 (threads 1 and 2);
    # tolerance 1e-10.
    Ni, nb = c.n_interior, c.n_boundary
    E = sp.csr_matrix((np.ones(nb), (np.arange(nb), Ni + np.arange(nb))), shape=D.shape)
    dev = abs(D - E).max(axis=1).toarray()[:, 0] / np.asarray(abs(D).sum(axis=1))[:, 0]
    spread("rbffd.dirichlet", dev.max(), 1e-10)
    assert dev.max() <= 1e-10
    N = boundary_matrix(c, 4, alpha=1.0, beta=0.0)
    ratio = exactness_ratio(N, np.ones(c.n_nodes), 0.0)
    spread("rbffd.neumann1/gamma", ratio / _exact_tol(4, 1, 2), 1.0)
    assert ratio <= _exact_tol(4, 1, 2)


def test_rbffd_weights_arbitrary_centres(spread):
    c = make_cloud("disk", n=500, seed=4)
    ctr = np.array([[0.1, 0.2], [-0.33, 0.05]])
    idx, w = rbffd_weights(c.nodes, ctr, "laplacian", 4)
    f = c.nodes[:, 0] ** 2 * c.nodes[:, 1] + c.nodes[:, 1] ** 2
    exact = 2 * ctr[:, 1] + 2
    ratio = (np.abs(np.sum(w * f[idx], 1) - exact)
             / (np.sum(np.abs(w * f[idx]), 1) + np.abs(exact))).max()
    spread("rbffd.arbitrary_centres/gamma", ratio / _exact_tol(4, 2, 2), 1.0)
    assert ratio <= _exact_tol(4, 2, 2)


# ----------------------------------------------------------------------------- errors
def test_bad_order():
    c = make_cloud("disk", n=300, seed=0)
    for p in (1, 7, 2.5):
        with pytest.raises(ValueError, match="2 <= p <= 6"):
            laplacian_matrix(c, p)


def test_too_few_nodes():
    c = PointCloud(interior=np.random.default_rng(0).uniform(-0.5, 0.5, (20, 2)),
                   boundary=[[1.0, 0.0], [0.0, 1.0]], normals=[[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"order p=4 .* needs stencils of 43 nodes .* only 22"):
        laplacian_matrix(c, 4)


def test_singular_stencils():
    rng = np.random.default_rng(0)
    nodes = rng.uniform(-1, 1, (200, 2))
    dup = np.vstack([nodes, nodes[:1]])  # duplicate node next to centre 0
    with pytest.raises(ValueError, match="stencil of centre 0 is (nearly )?singular"):
        rbffd_weights(dup, dup[:3], "laplacian", 3)
    line = np.column_stack([np.linspace(0, 1, 200), np.zeros(200)])  # polynomials not unisolvent
    with pytest.raises(ValueError, match="stencil of centre 0 is (nearly )?singular"):
        rbffd_weights(line, line[:5], "gradient", 2, axis=0)


def test_bad_rows_and_operator(clouds):
    c = clouds[2]
    with pytest.raises(ValueError, match=r"rows must lie in 0..%d" % (c.n_boundary - 1)):
        boundary_matrix(c, 3, rows=[c.n_boundary])
    with pytest.raises(ValueError, match=r"alpha must be a scalar or one value per boundary node"):
        boundary_matrix(c, 3, alpha=np.ones(3))
    with pytest.raises(ValueError, match="1-D integer array"):
        laplacian_matrix(c, 3, rows=[0.5])
    with pytest.raises(ValueError, match="axis in 0..1"):
        gradient_matrix(c, 3, axis=2)
    with pytest.raises(ValueError, match="unknown operator 'curl'"):
        rbffd_weights(c.nodes, c.nodes[:2], "curl", 3)


def test_cli(tmp_path, capsys):
    from dtpinn_dist.operators import load_operators
    from dtpinn_dist.operators.__main__ import main
    out = tmp_path / "ops.npz"
    assert main(["--domain", "disk", "--n", "600", "--order", "3", "--out", str(out)]) == 0
    assert "nnz" in capsys.readouterr().out
    L, B, cloud = load_operators(out)
    L2, B2 = assemble(cloud, 3)
    assert (L != L2).nnz == 0 and (B != B2).nnz == 0
    with np.load(out, allow_pickle=False) as z:
        assert {"L_data", "B_indptr", "interior", "ghost", "order"} <= set(z.files)
    assert main(["--nodes", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o2.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err

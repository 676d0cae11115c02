"""Large clouds (issue 20): reading by slices (.npz stored / compressed, HDF5), the distributed
read (Hilbert partition among the ranks, halo), and assembly from share + halo, each checked
against the whole-cloud path. Serial and under ``mpirun -n 2 / 3``."""
import numpy as np
import pytest

from dtpinn_dist.distributed.scatter import local_matrices, read_distributed
from dtpinn_dist.geometry import load_npz, make_cloud, save_npz
from dtpinn_dist.geometry.slices import CloudFile, save_h5
from dtpinn_dist.operators.rbffd import paper_specs, spec_matrices
from dtpinn_dist.partition import partition_cloud


@pytest.mark.parametrize("d,l", [(2, 5), (3, 4)])
def test_polynomial_tables_in_both_layouts_are_the_same_bits(d, l):
    """The assembly's component-first polynomial values are poly_values' bit for bit (the same
    products in the same order), which keeps the operators of before."""
    from dtpinn_dist.operators.polynomials import poly_values, poly_values_first

    y = np.random.default_rng(d).uniform(-1, 1, (7, 11, d))
    first = poly_values_first(np.ascontiguousarray(np.moveaxis(y, -1, 0)), l)
    np.testing.assert_array_equal(np.moveaxis(first, 0, -1), poly_values(y, l))


def _cloud(ghost=True):
    return make_cloud("disk", n=1500, seed=3, ghost=ghost, n_test=200)


def _shared_tmp(comm, tmp_path_factory):
    """Rank 0's temporary folder on every rank (one machine)."""
    return comm.bcast(str(tmp_path_factory.mktemp("scale")) if comm.rank == 0 else None)


def _write(cloud, folder, kind):
    from pathlib import Path

    p = Path(folder) / f"cloud.{kind}"
    if kind == "npz":
        save_npz(p, cloud)
    elif kind == "zip.npz":
        np.savez_compressed(p, interior=cloud.interior, boundary=cloud.boundary,
                            normals=cloud.normals, ghost=cloud.ghost)
    else:
        pytest.importorskip("h5py")  # the [io] extra
        save_h5(p, cloud)
    return p


@pytest.mark.parametrize("kind", ["npz", "zip.npz", "h5"])
def test_rows_equal_whole_arrays(tmp_path, kind):
    """Any row range of any array, from every format, is that range of the array."""
    c = _cloud()
    p = _write(c, tmp_path, kind)
    with CloudFile(p) as f:
        assert f.shape("interior") == c.interior.shape and f.shape("nothing") is None
        for name, a in (("interior", c.interior), ("normals", c.normals), ("ghost", c.ghost)):
            for s0, s1 in ((0, len(a)), (7, 500), (len(a) - 3, len(a) + 10), (5, 5)):
                np.testing.assert_array_equal(f.rows(name, s0, s1), a[s0:s1])


def test_bad_files(tmp_path):
    """Pickled arrays, a truncated member, a foreign suffix: one line naming the file."""
    p = tmp_path / "obj.npz"
    np.savez(p, interior=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        CloudFile(p)
    good = _write(_cloud(), tmp_path, "npz")
    raw = good.read_bytes()
    bad = tmp_path / "trunc.npz"
    bad.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match="trunc.npz"):
        CloudFile(bad).rows("interior")
    other = tmp_path / "cloud.mat"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="by slices; use .npz or .h5"):
        CloudFile(other)


def _solve_bound(cloud, theta, loc, name):
    """Per row: a bound on the difference of the row's weights computed from the whole cloud
    and from share + halo (the same saddle system K x = b up to a symmetric permutation where
    stencil nodes tie in distance). A solve by LU with partial pivoting gives x with
    (K + dK) x = b, |dK| <= gamma_(3m) |L||U| (Higham, Accuracy and Stability, thm 9.4; L, U
    that solve's factors), so |x - x*| <= gamma_(3m) |K^-1| |L||U| |x| to first order; the sum
    of the two solves' bounds bounds their difference."""
    import scipy.linalg as sl
    from scipy.spatial import cKDTree

    from dtpinn_dist.operators import rbffd
    from dtpinn_dist.operators.polynomials import n_poly
    from roundoff import gamma

    d = cloud.dim
    l, m, n = rbffd.stencil_params(4, theta, d)
    nrows = loc.n_interior + loc.n_boundary
    ctr = loc.nodes[:nrows] if name == "L" else loc.nodes[loc.n_interior:nrows]
    op = (rbffd.make_operator("laplacian", d) if name == "L" else
          rbffd.make_operator("robin", d, normals=loc.normals))
    g = gamma(3 * (n + n_poly(l, d)))
    total = np.zeros(len(ctr))
    for nodes in (cloud.nodes, loc.nodes):
        dist, idx = cKDTree(nodes).query(ctr, k=n)
        R = dist[:, -1]
        Y = np.stack([(nodes[idx, k] - ctr[:, k, None]) / R[:, None] for k in range(d)])
        rhs = rbffd._rhs(op, Y, dist / R[:, None], R, slice(None), l, m)
        K, _ = rbffd._saddle_matrices(Y, l, m)
        for i in range(len(ctr)):
            lu, piv = sl.lu_factor(K[i])
            x = sl.lu_solve((lu, piv), rhs[i])
            LU = np.abs(np.tril(lu, -1) + np.eye(len(lu))) @ (np.abs(np.triu(lu)) @ np.abs(x))
            total[i] += g * (np.abs(np.linalg.inv(K[i])) @ LU)[:n].max()
    return total


@pytest.mark.mpi
@pytest.mark.parametrize("kind,ghost", [("npz", True), ("h5", True), ("npz", False)])
def test_read_distributed_is_the_hilbert_partition(comm, tmp_path_factory, kind, ghost, spread):
    """Each rank ends with exactly the Hilbert part of partition_cloud on the whole cloud, in
    its numbering, and a halo holding every column its rows reference; the operator rows
    assembled from share + halo have the whole-cloud rows' columns and their weights (bit for
    bit, but where two stencil nodes tie in distance to the centre -- neighbours on a uniformly
    sampled circle: the k-d tree of share + halo may list them in the other order, a permuted
    saddle system, round-off apart; see _solve_bound). Ghosts from the file, or (ghost=False in
    the file) computed by each rank as PointCloud.with_ghost does."""
    if kind == "h5":
        pytest.importorskip("h5py")  # on every rank alike, before any collective
    folder = _shared_tmp(comm, tmp_path_factory)
    whole = _cloud(ghost=ghost)
    from pathlib import Path

    if comm.rank == 0:
        _write(whole, folder, kind)
        save_npz(Path(folder) / "whole.npz", whole)
    comm.barrier()
    loc = read_distributed(Path(folder) / f"cloud.{kind}", comm, order=4)
    # the whole cloud as the existing path reads it (ghosts from the file, or added)
    cloud = load_npz(Path(folder) / "whole.npz", ghost=True)
    P = partition_cloud(cloud, comm.size, method="hilbert")
    r = comm.rank
    own = P.owned_nodes(r)
    np.testing.assert_array_equal(loc.gid[:loc.n_owned], own)
    np.testing.assert_array_equal(loc.new_index, P.new_index[loc.gid])
    np.testing.assert_array_equal(loc.nodes, cloud.nodes[loc.gid])
    np.testing.assert_array_equal(loc.offsets, P.offsets)
    np.testing.assert_array_equal(loc.normals, cloud.normals[P.boundary_ids[r]])
    assert loc.n_owned + loc.n_halo < cloud.n_nodes or comm.size == 1
    assert sum(comm.allgather(loc.n_owned)) == cloud.n_nodes

    mats = local_matrices(loc, 4)
    whole_m = spec_matrices(cloud, 4, paper_specs(cloud),
                            rows={"collocation": P.L_rows(r), "boundary": P.B_rows(r)})
    for name in ("L", "B"):
        A = whole_m[name]
        A = type(A)((A.data, P.new_index[A.indices], A.indptr), shape=A.shape)
        A.sort_indices()
        B = mats[name]
        assert B.shape == A.shape
        np.testing.assert_array_equal(B.indptr, A.indptr)
        np.testing.assert_array_equal(B.indices, A.indices)
        diff = np.abs(B.data - A.data).reshape(A.shape[0], -1).max(1)
        tol = _solve_bound(cloud, 2 if name == "L" else 1, loc, name)
        spread(f"{name} rows from share + halo", (diff / tol).max(), 1.0)
        assert np.all(diff <= tol)
        # rows whose stencil has no two nodes at the same distance are equal bit for bit
        assert (diff == 0).mean() > 0.5


def test_one_rank_reads_the_whole_cloud():
    """One process: the distributed read is the whole cloud in cloud order, no halo."""
    from dtpinn_dist.comm import SerialComm
    import tempfile
    from pathlib import Path

    c = _cloud()
    with tempfile.TemporaryDirectory() as d:
        loc = read_distributed(_write(c, d, "npz"), SerialComm(), order=4)
    assert loc.n_halo == 0 and loc.n_owned == c.n_nodes
    np.testing.assert_array_equal(loc.nodes, c.nodes)


@pytest.mark.mpi
def test_bad_slice_on_one_rank_raises_everywhere(comm, tmp_path_factory):
    """A NaN in the last interior row fails only on the rank that reads that row; every rank
    raises the same one-line error (no rank left waiting in a collective)."""
    from pathlib import Path

    folder = _shared_tmp(comm, tmp_path_factory)
    p = Path(folder) / "nan.npz"
    if comm.rank == 0:
        c = _cloud()
        interior = c.interior.copy()
        interior[-1, 0] = np.nan
        np.savez(p, interior=interior, boundary=c.boundary, normals=c.normals)
    comm.barrier()
    with pytest.raises(ValueError, match="nan.npz: points rows must be finite") as e:
        read_distributed(p, comm)
    assert len(set(comm.allgather(str(e.value)))) == 1

"""Point clouds: domains, node generation, validation, boundary parts, file IO."""
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy.spatial import cKDTree

from dtpinn_dist.geometry import (Annulus, Ball, Box, Disk, Ellipse, PointCloud, Polygon,
                                  Rectangle, Star, load_cloud, load_mat, load_npz, make_cloud,
                                  save_npz, spacing_ratio)
from dtpinn_dist.geometry.io import mat_sizes
from roundoff import gamma

EPS = float(np.finfo(np.float64).eps)

REF = Path(os.environ.get("DTPINN_REFERENCE_DIR")
           or Path(__file__).resolve().parents[1].parent / "shared" / "reference")
MAT = REF / "DiskPoissonNodes.mat"
needs_ref = pytest.mark.skipif(not MAT.exists(), reason=f"reference data not found at {REF}")

L_SHAPE = [(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)]
DOMAINS_2D = [Disk(), Star(a=1.0, b=0.25, k=5), Annulus(0.4, 1.0), Rectangle((0, 0), (2, 1)),
              Ellipse(1.0, 0.5), Polygon(L_SHAPE), Polygon(L_SHAPE[::-1])]
DOMAINS_3D = [Ball(), Box((0, 0, 0), (1, 2, 1))]


def _small_cloud():
    return PointCloud(interior=[[0.0, 0.0], [0.3, 0.1]], boundary=[[1.0, 0.0], [0.0, 1.0]],
                      normals=[[1.0, 0.0], [0.0, 1.0]])


# ----------------------------------------------------------------------------- PointCloud
def test_cloud_properties_and_ghost():
    c = _small_cloud()
    assert c.dim == 2 and c.n_interior == 2 and c.n_boundary == 2
    assert c.h == pytest.approx(4 ** -0.5)
    g = c.with_ghost()
    np.testing.assert_allclose(g.ghost, c.boundary + 0.25 * c.h * c.normals)
    np.testing.assert_array_equal(g.nodes, np.vstack([c.interior, c.boundary, g.ghost]))
    assert g.n_nodes == 6 and c.ghost is None  # with_ghost returns a copy
    g3 = c.with_ghost(offset=0.5)
    np.testing.assert_allclose(g3.ghost - c.boundary, 0.5 * c.h * c.normals)
    g.validate()


@pytest.mark.parametrize("change, match", [
    (dict(interior=[[0.0, np.nan], [0.3, 0.1]]), "interior row 0 has a NaN/inf"),
    (dict(boundary=[[np.inf, 0.0], [0.0, 1.0]]), "boundary row 0 has a NaN/inf"),
    (dict(interior=[[1.0, 0.0], [0.3, 0.1]]),
     r"duplicate nodes: interior row 0 and boundary row 0 are both at"),
    (dict(normals=[[0.0, 0.0], [0.0, 1.0]]), "normals row 0 is zero"),
    (dict(normals=[[2.0, 0.0], [0.0, 1.0]]), "row 0 has length 2, not 1; normalise"),
    (dict(normals=[[1.0, 0.0]]), "normals has 1 rows but there are 2 boundary nodes"),
    (dict(boundary=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "must have 2 columns"),
    (dict(interior=np.zeros((2, 4)) + np.arange(2)[:, None]), "d=4 is not supported"),
    (dict(interior=[0.0, 1.0]), "expected a 2-D"),
])
def test_validate_errors(change, match):
    kw = dict(interior=[[0.0, 0.0], [0.3, 0.1]], boundary=[[1.0, 0.0], [0.0, 1.0]],
              normals=[[1.0, 0.0], [0.0, 1.0]])
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        PointCloud(**kw).validate()


def test_validate_ghost_rows():
    c = _small_cloud()
    c.ghost = np.array([[2.0, 2.0]])
    with pytest.raises(ValueError, match="one ghost per boundary node"):
        c.validate()


# ----------------------------------------------------------------------------- domains
@pytest.mark.parametrize("dom", DOMAINS_2D + DOMAINS_3D, ids=lambda d: repr(d)[:30])
def test_boundary_normals_unit_and_outward(dom):
    s = 0.05 if dom.dim == 2 else 0.15
    pts, nrm, tags = dom.sample_boundary(s)
    assert pts.shape == nrm.shape and pts.shape[1] == dom.dim
    assert tags.shape == (len(pts),) and tags.dtype == np.int64
    assert set(np.unique(tags)) == set(dom.tag_names.values())  # every part has nodes
    # Every normal is v / |v| (or (cos t, sin t)): its norm is 1 within gamma_(d+2), and the
    # norm computed here adds gamma_(d+1); 4 gamma_(d+2) allows 1-ulp libm functions.
    # Measured: <= 1 eps (4 gamma_(d+2) = 8-10 eps).
    d = dom.dim
    assert np.all(np.abs(np.linalg.norm(nrm, axis=1) - 1.0) <= 4 * gamma(d + 2))
    eps = 1e-4
    assert not dom.inside(pts + eps * nrm).any(), "normal points into the domain"
    assert dom.inside(pts - eps * nrm).all(), "normal points out of the domain from inside"
    lo, hi = dom.bbox()
    # points on the boundary, computed with a few roundings of their coordinates' size
    # (measured: none outside the box at all)
    slack = 4 * EPS * max(np.abs(lo).max(), np.abs(hi).max())
    assert np.all(pts >= lo - slack) and np.all(pts <= hi + slack)
    # boundary spacing about s: nearest-neighbour distances within a modest factor
    nn = np.sort(np.linalg.norm(pts[:, None] - pts[None], axis=2), axis=1)[:, 1]
    assert 0.4 * s < nn.min() and nn.max() < 1.6 * s


def test_annulus_inner_normals_point_to_centre():
    dom = Annulus(0.5, 1.0, center=(0.2, -0.1))
    pts, nrm, _ = dom.sample_boundary(0.05)
    r = np.linalg.norm(pts - dom.center, axis=1)
    inner = np.isclose(r, 0.5)
    assert inner.sum() > 10 and (~inner).sum() > 10
    radial = (pts - dom.center) / r[:, None]
    # pts = c + R u rounds by eps (|c| + R) per coordinate and pts - c again, relative to R,
    # plus a few roundings in each normalisation: tolerance 8 eps (2 |c| + R) / R.
    # Measured: 0.5 eps.
    c = np.linalg.norm(dom.center)
    for sel, sign, R in ((inner, -1, 0.5), (~inner, 1, 1.0)):
        assert np.all(np.abs(nrm[sel] - sign * radial[sel]) <= 8 * EPS * (2 * c + R) / R)


def test_star_normals_exact():
    # compare with the normal of the implicit curve f = |x| - r(theta) = 0 by finite differences
    dom = Star(a=1.0, b=0.3, k=4)
    pts, nrm, _ = dom.sample_boundary(0.02)
    f = lambda x: np.hypot(x[:, 0], x[:, 1]) - dom._r(np.arctan2(x[:, 1], x[:, 0]))
    e = 1e-6
    g = np.column_stack([(f(pts + [e, 0]) - f(pts - [e, 0])) / (2 * e),
                         (f(pts + [0, e]) - f(pts - [0, e])) / (2 * e)])
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(nrm, g, atol=1e-6)


def test_domain_errors():
    with pytest.raises(ValueError, match="0 <= b < a"):
        Star(a=1.0, b=1.5)
    with pytest.raises(ValueError, match="r_inner < r_outer"):
        Annulus(1.0, 0.5)
    with pytest.raises(ValueError, match="zero area"):
        Polygon([(0, 0), (1, 1), (2, 2)])
    with pytest.raises(ValueError, match="unknown domain 'blob'"):
        make_cloud("blob", n=100)
    with pytest.raises(ValueError, match="exactly one of n"):
        make_cloud("disk")


# ----------------------------------------------------------------------------- generation
@pytest.mark.parametrize("dom, n, bound", [(Disk(), 3000, 1.6), (Star(1.0, 0.25, 5), 3000, 1.7),
                                           (Annulus(0.4, 1.0), 3000, 1.7),
                                           (Polygon(L_SHAPE), 3000, 1.8),
                                           (Ball(), 3000, 2.5), (Box(), 3000, 2.5)],
                         ids=["disk", "star", "annulus", "L", "ball", "box"])
def test_make_cloud_quality(dom, n, bound):
    c = make_cloud(dom, n=n, seed=3, n_test=500)
    c.validate()
    N = c.n_interior + c.n_boundary
    assert abs(N - n) < 0.05 * n, N
    assert dom.inside(c.interior).all()
    assert not dom.inside(c.ghost).any()
    assert spacing_ratio(c.collocation) < bound
    assert c.test is not None and abs(len(c.test) - 500) < 50
    # the test set is an independent cloud: its interior points differ from the training nodes
    # (boundary samplers are deterministic, so some test boundary points may coincide)
    # (a separation check, not a round-off tolerance: distinct points, spacing ~0.03)
    assert cKDTree(c.interior).query(c.test)[0].min() > 1e-9
    assert not np.array_equal(c.test[:50], c.interior[:50])


def test_make_cloud_seeded():
    a = make_cloud("disk", n=800, seed=5)
    b = make_cloud("disk", n=800, seed=5)
    c = make_cloud("disk", n=800, seed=6)
    np.testing.assert_array_equal(a.interior, b.interior)
    np.testing.assert_array_equal(a.ghost, b.ghost)
    assert a.interior.shape != c.interior.shape or not np.array_equal(a.interior, c.interior)


def test_make_cloud_spacing_and_method():
    c = make_cloud(Disk(radius=2.0), spacing=0.1, ghost=False)
    assert c.ghost is None
    nn = np.sort(np.linalg.norm(c.boundary[:, None] - c.boundary[None], axis=2), 1)[:, 1]
    np.testing.assert_allclose(nn, 0.1, rtol=0.02)
    assert abs(c.n_interior - np.pi * 4 / 0.01) < 0.1 * np.pi * 4 / 0.01


# ----------------------------------------------------------------------------- IO
def test_load_mat_authors_nodes(shared_reference):
    mat = shared_reference / "DiskPoissonNodes.mat"
    assert mat_sizes(mat) == [582, 828, 1663, 3196, 4975]
    c = load_mat(mat, n=4975)
    assert (c.n_interior, c.n_boundary) == (4747, 228)
    assert c.h == pytest.approx(4975 ** -0.5)
    np.testing.assert_allclose(c.ghost, c.boundary + 0.25 * c.h * c.normals)
    c0 = load_cloud(mat, index=0, ghost=False)
    assert c0.n_interior + c0.n_boundary == 582 and c0.ghost is None
    assert load_cloud(mat).n_interior == 4747  # default: last entry
    with pytest.raises(ValueError, match=r"no node set with N=1000; available N: \[582"):
        load_mat(mat, n=1000)
    with pytest.raises(ValueError, match="index 7 out of range .* use 0..4"):
        load_mat(mat, index=7)


def test_mat_roundtrip_and_errors(tmp_path):
    c = make_cloud("disk", n=300, seed=1, ghost=False)
    cells = lambda arrs: np.array([[a] for a in arrs] + [[None]], dtype=object)[:-1]
    p = tmp_path / "nodes.mat"
    scipy.io.savemat(p, {"fullintnodes": cells([c.interior, c.interior[:50]]),
                         "bdrynodes": cells([c.boundary, c.boundary]),
                         "normals": cells([c.normals, c.normals])})
    d = load_mat(p, index=0, ghost=False)
    np.testing.assert_array_equal(d.interior, c.interior)
    np.testing.assert_array_equal(d.normals, c.normals)
    assert load_mat(p, n=50 + c.n_boundary).n_interior == 50
    bad = tmp_path / "bad.mat"
    scipy.io.savemat(bad, {"fullintnodes": cells([c.interior])})
    with pytest.raises(ValueError, match=r"lacks \['bdrynodes', 'normals'\]"):
        load_cloud(bad)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match="cannot read .* MATLAB"):
        load_cloud(junk)


def test_npz_roundtrip_and_errors(tmp_path):
    c = make_cloud("star", n=600, seed=2, n_test=100)
    p = tmp_path / "c.npz"
    save_npz(p, c)
    with np.load(p, allow_pickle=False) as z:
        assert sorted(z.files) == ["boundary", "ghost", "interior", "normals", "test"]
    d = load_cloud(p)
    for k in ("interior", "boundary", "normals", "ghost", "test"):
        np.testing.assert_array_equal(getattr(d, k), getattr(c, k))
    assert load_npz(p, ghost=False).ghost is None
    # without ghost in the file: added on load by default
    q = tmp_path / "noghost.npz"
    np.savez(q, interior=c.interior, boundary=c.boundary, normals=c.normals)
    # a file carries no domain: its ghosts follow the authors' rule, 0.25 h with h = N^(-1/d)
    np.testing.assert_allclose(load_cloud(q).ghost, c.with_ghost().ghost)
    r = tmp_path / "missing.npz"
    np.savez(r, interior=c.interior, boundary=c.boundary)
    with pytest.raises(ValueError, match=r"lacks arrays \['normals'\].*docs/point_clouds.md"):
        load_cloud(r)
    o = tmp_path / "obj.npz"
    np.savez(o, interior=np.array([c.interior, None], dtype=object), boundary=c.boundary,
             normals=c.normals)
    with pytest.raises(ValueError, match="pickled objects"):
        load_cloud(o)
    t = tmp_path / "c.txt"
    t.write_text("1 2\n")
    with pytest.raises(ValueError, match="unknown point-cloud file kind '.txt'"):
        load_cloud(t)
    with pytest.raises(ValueError, match="does not exist"):
        load_cloud(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="hold one cloud"):
        load_cloud(p, index=1)
    nan = tmp_path / "nan.npz"
    np.savez(nan, interior=np.vstack([c.interior, [[np.nan, 0]]]), boundary=c.boundary,
             normals=c.normals)
    with pytest.raises(ValueError, match="NaN/inf"):
        load_cloud(nan)


def test_generated_ghosts_scale_with_the_domain():
    """Ghosts sit at the same fraction of the node spacing on a small and a unit disk, so the
    boundary stencils (and their accuracy) do not depend on the domain's size."""
    from dtpinn_dist.geometry import Disk, nearest_distances

    ratios = []
    for radius in (0.05, 1.0):
        c = make_cloud(Disk(radius=radius), n=800, seed=1)
        offset = np.linalg.norm(c.ghost - c.boundary, axis=1).mean()
        ratios.append(offset / np.median(nearest_distances(c.collocation)))
    assert ratios[0] == pytest.approx(ratios[1], rel=0.05)
    assert 0.05 < ratios[0] < 0.5

"""Boundary parts (issue 10 section 1): every built-in domain tags its boundary nodes, the tags
follow the nodes through every operation, and the .npz format stores them."""
import numpy as np
import pytest

from dtpinn_dist.geometry import (Annulus, Ball, Box, Disk, Domain, Ellipse, PointCloud, Polygon,
                                  Rectangle, Star, load_cloud, make_cloud, save_npz)

L_SHAPE = [(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)]


def _covers_all(cloud):
    """The parts' index sets partition 0..Nb-1."""
    idx = np.concatenate([cloud.part_index(name) for name, _ in cloud.parts])
    assert np.array_equal(np.sort(idx), np.arange(cloud.n_boundary))


def test_rectangle_sides_and_corners():
    lo, hi = (-1.0, 0.5), (2.0, 1.5)
    c = make_cloud(Rectangle(lo, hi), n=900, seed=0)
    assert c.parts == [("bottom", 0), ("right", 1), ("top", 2), ("left", 3)]
    _covers_all(c)
    # side: (axis, coordinate, outward normal, the corner it owns: where it starts going ccw)
    sides = {"bottom": (1, lo[1], (0, -1), (lo[0], lo[1])),
             "right": (0, hi[0], (1, 0), (hi[0], lo[1])),
             "top": (1, hi[1], (0, 1), (hi[0], hi[1])),
             "left": (0, lo[0], (-1, 0), (lo[0], hi[1]))}
    for name, (axis, value, normal, corner) in sides.items():
        idx = c.part_index(name)
        pts, nrm = c.boundary[idx], c.normals[idx]
        assert len(idx) > 10
        # nodes are lo + s (hi - lo) along the side: the fixed coordinate is exact
        assert np.all(pts[:, axis] == value), name
        at_corner = np.all(pts == corner, axis=1)
        assert at_corner.sum() == 1, f"{name} owns exactly its starting corner"
        # normals exact (one rounding of the normalisation) except at the corner: the bisector
        np.testing.assert_allclose(nrm[~at_corner], np.broadcast_to(normal, nrm[~at_corner].shape),
                                   atol=1e-15)
        assert abs(abs(nrm[at_corner][0, 0]) - 2 ** -0.5) < 1e-15
    # the "left" nodes are those with x == lo and normal (-1, 0), plus the corner (lo, hi)
    left = c.part_index("left")
    on_left = np.flatnonzero((c.boundary[:, 0] == lo[0]) & (c.normals[:, 0] == -1.0))
    assert set(left) - set(on_left) == {int(np.flatnonzero(np.all(c.boundary == (lo[0], hi[1]),
                                                                   axis=1))[0])}


def test_annulus_outer_and_inner():
    dom = Annulus(0.3, 1.2, center=(0.5, -0.2))
    c = make_cloud(dom, n=900, seed=1)
    assert c.parts == [("outer", 0), ("inner", 1)]
    _covers_all(c)
    for name, r, sign in (("outer", 1.2, 1.0), ("inner", 0.3, -1.0)):
        idx = c.part_index(name)
        d = c.boundary[idx] - dom.center
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), r, rtol=1e-14)
        np.testing.assert_allclose(c.normals[idx], sign * d / r, atol=1e-14)


@pytest.mark.parametrize("reverse", [False, True], ids=["ccw", "cw"])
def test_polygon_edges_follow_the_given_order(reverse):
    verts = L_SHAPE[::-1] if reverse else L_SHAPE
    names = [f"side{i}" for i in range(len(verts))]
    dom = Polygon(verts, names=names)
    pts, nrm, tags = dom.sample_boundary(0.05)
    v = np.asarray(verts, dtype=np.float64)
    for i in range(len(v)):
        a, b = v[i], v[(i + 1) % len(v)]
        p = pts[tags == i]
        # every node of part i lies on the segment from vertex i to vertex i+1 (given order)
        t = (p - a) @ (b - a) / ((b - a) @ (b - a))
        assert np.all((t >= 0) & (t < 1))
        np.testing.assert_allclose(p, a + t[:, None] * (b - a), atol=1e-14)
        # vertex i belongs to edge i (the edge that starts there), not to edge i-1
        assert np.any(np.all(p == a, axis=1)) and not np.any(np.all(p == b, axis=1))
    c = make_cloud(dom, n=800, seed=2)
    assert c.parts == [(n, i) for i, n in enumerate(names)]
    _covers_all(c)
    assert np.array_equal(c.part_index("side3"), np.flatnonzero(c.tags == 3))


def test_polygon_names_checked():
    with pytest.raises(ValueError, match="6 non-empty strings"):
        Polygon(L_SHAPE, names=["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        Polygon(L_SHAPE, names=["a"] * 6)
    with pytest.raises(ValueError, match="lo < hi"):
        Rectangle((1, 0), (0, 1))


def test_box_faces_and_edge_rule():
    lo, hi = np.array([0.0, -1.0, 0.5]), np.array([1.0, 1.0, 1.5])
    c = make_cloud(Box(lo, hi), n=1500, seed=3)
    assert c.parts == [("x0", 0), ("x1", 1), ("y0", 2), ("y1", 3), ("z0", 4), ("z1", 5)]
    _covers_all(c)
    on = np.column_stack([c.boundary[:, 0] == lo[0], c.boundary[:, 0] == hi[0],
                          c.boundary[:, 1] == lo[1], c.boundary[:, 1] == hi[1],
                          c.boundary[:, 2] == lo[2], c.boundary[:, 2] == hi[2]])
    assert np.all(on.any(axis=1)), "every boundary node lies on a face"
    # documented rule: a node on several faces (box edge / corner) goes to the first face
    np.testing.assert_array_equal(c.tags, np.argmax(on, axis=1))
    assert np.sum(on.sum(axis=1) > 1) > 20  # the rule was exercised


@pytest.mark.parametrize("dom", [Disk(), Ellipse(1.0, 0.5), Star(1.0, 0.2, 5), Ball()],
                         ids=["disk", "ellipse", "star", "ball"])
def test_one_part_domains(dom):
    c = make_cloud(dom, n=500, seed=0)
    assert c.parts == [("boundary", 0)]
    assert np.array_equal(c.part_index("boundary"), np.arange(c.n_boundary))
    assert np.array_equal(c.part_index(0), np.arange(c.n_boundary))


def test_user_domain_without_tags_is_one_part():
    class HalfPlaneStrip(Domain):  # a user domain whose sample_boundary returns 2 arrays
        dim = 2
        volume, boundary_measure = np.pi, 2 * np.pi

        def bbox(self):
            return np.array([-1.0, -1.0]), np.array([1.0, 1.0])

        def inside(self, x):
            return np.sum(np.asarray(x) ** 2, axis=1) < 1

        def sample_boundary(self, spacing):
            pts, nrm, _ = Disk().sample_boundary(spacing)
            return pts, nrm

    c = make_cloud(HalfPlaneStrip(), n=400, seed=0)
    assert c.boundary_tags is None and c.parts == [("boundary", 0)]


def test_tags_follow_subset_and_ghosts():
    c = make_cloud(Rectangle((0, 0), (1, 1)), n=500, seed=4)
    assert np.array_equal(c.with_ghost().tags, c.tags)
    rev = np.arange(c.n_boundary)[::-1]
    s = c.subset(interior=slice(0, 10), boundary=rev)
    np.testing.assert_array_equal(s.tags, c.tags[rev])
    np.testing.assert_array_equal(s.normals, c.normals[rev])
    np.testing.assert_array_equal(s.ghost, c.ghost[rev])
    assert s.n_interior == 10 and s.parts == c.parts
    mask = c.tags == 2
    top = c.subset(boundary=mask)
    assert np.all(top.tags == 2) and top.n_boundary == mask.sum()
    assert len(top.part_index("left")) == 0  # a named part may be empty


def test_unnamed_tags_and_errors():
    base = dict(interior=[[0.0, 0.0], [0.2, 0.1]], boundary=[[1, 0], [0, 1], [-1, 0], [0, -1]],
                normals=[[1, 0], [0, 1], [-1, 0], [0, -1]])
    c = PointCloud(**base, boundary_tags=[0, 1, 1, 4])
    assert c.parts == [("part0", 0), ("part1", 1), ("part4", 4)]
    assert np.array_equal(c.part_index("part1"), [1, 2])
    c = PointCloud(**base, boundary_tags=[0, 1, 1, 0], tag_names=["wall", ""])
    assert c.parts == [("wall", 0), ("part1", 1)]
    with pytest.raises(ValueError, match=r"unknown boundary part 'left'; this cloud's parts are "
                                         r"'wall' \(tag 0\), 'part1' \(tag 1\)"):
        c.part_index("left")
    with pytest.raises(ValueError, match="no boundary part has tag 7"):
        c.part_index(7)
    with pytest.raises(ValueError, match="a name or an integer tag"):
        c.part_index(True)
    bad = [(dict(boundary_tags=[0.0, 1.0, 1.0, 0.0]), "dtype float64; give one integer"),
           (dict(boundary_tags=[0, 1, 1]), r"shape \(3,\) but there are 4 boundary nodes"),
           (dict(boundary_tags=[0, -1, 1, 0]), "row 1 is -1; tags must be non-negative"),
           (dict(tag_names={"a": 0, "b": 0}), "tag 0 two names, 'a' and 'b'"),
           (dict(tag_names={"": 0}), "non-empty strings"),
           (dict(tag_names={"a": -2}), "non-negative integers"),
           (dict(boundary_tags=[0, 1, 1, 0], tag_names={"part1": 0}), "default name 'part1'")]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            PointCloud(**base, **kw).validate()


def test_npz_round_trip_and_bad_tags(tmp_path):
    c = make_cloud(Annulus(0.4, 1.0), n=600, seed=5)
    p = tmp_path / "a.npz"
    save_npz(p, c)
    with np.load(p, allow_pickle=False) as z:
        assert z["boundary_tags"].dtype == np.int64 and z["tag_names"].dtype.kind == "U"
        assert list(z["tag_names"]) == ["outer", "inner"]
    d = load_cloud(p)
    np.testing.assert_array_equal(d.tags, c.tags)
    assert d.parts == c.parts
    # an unnamed tag is stored as "" and comes back unnamed
    e = PointCloud(c.interior, c.boundary, c.normals, boundary_tags=c.tags * 2,
                   tag_names={"outer": 0})
    save_npz(p, e)
    with np.load(p, allow_pickle=False) as z:
        assert list(z["tag_names"]) == ["outer", "", ""]
    assert load_cloud(p).parts == [("outer", 0), ("part2", 2)]
    # a single-part cloud is written without tags, as before
    save_npz(p, make_cloud("disk", n=300, seed=0))
    with np.load(p, allow_pickle=False) as z:
        assert "boundary_tags" not in z.files
    assert load_cloud(p).parts == [("boundary", 0)]

    nb = c.n_boundary
    arrays = dict(interior=c.interior, boundary=c.boundary, normals=c.normals)
    cases = [(dict(boundary_tags=np.zeros(nb)), "boundary_tags has dtype float64"),
             (dict(boundary_tags=np.zeros(nb - 1, dtype=np.int32)),
              rf"shape \({nb - 1},\) but there are {nb} boundary nodes"),
             (dict(boundary_tags=-np.ones(nb, dtype=np.int64)), "tags must be non-negative"),
             (dict(boundary_tags=np.zeros(nb, np.int64), tag_names=np.array(["a", "a"])),
              r"tag_names repeats \['a'\]"),
             (dict(boundary_tags=np.zeros(nb, np.int64), tag_names=np.array([1, 2])),
              "1-D unicode string array")]
    for extra, match in cases:
        q = tmp_path / "bad.npz"
        np.savez(q, **arrays, **extra)
        with pytest.raises(ValueError, match=match):
            load_cloud(q)
    f = tmp_path / "obj.npz"
    np.savez(f, **arrays, tag_names=np.array(["a", None], dtype=object))
    with pytest.raises(ValueError, match="pickled objects"):
        load_cloud(f)
    with pytest.raises(ValueError, match="too large for the .npz format"):
        save_npz(p, PointCloud(c.interior, c.boundary, c.normals,
                               boundary_tags=np.full(nb, 10 ** 6)))

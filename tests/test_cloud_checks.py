"""Clouds that used to validate but were wrong, and files that used to crash or hang the reader
(issue 11 section 6): each is now one ValueError line naming the problem and the fix."""
import os
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from dtpinn_dist.geometry import (PointCloud, load_cloud, load_mat, make_cloud,
                                  nearest_distances, save_npz)
from dtpinn_dist.geometry.cloud import CLOSE_RTOL

REF = Path(os.environ.get("DTPINN_REFERENCE_DIR")
           or Path(__file__).resolve().parents[1].parent / "shared" / "reference")
needs_ref = pytest.mark.skipif(not (REF / "DiskPoissonNodes.mat").exists(),
                               reason=f"reference data not found at {REF}")


@pytest.fixture(scope="module")
def disk():
    return make_cloud("disk", n=700, seed=0, ghost=False)


def _spacing(c):
    return float(np.median(nearest_distances(c.collocation)))


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- normals
def test_inward_normals_refused(disk, tmp_path):
    bad = PointCloud(disk.interior, disk.boundary, -disk.normals)
    with pytest.raises(ValueError, match=r"normals point into the domain at \d+ of \d+ boundary "
                                         r"nodes .* flip them \(normals = -normals\)"):
        bad.validate()
    p = tmp_path / "inward.npz"
    np.savez(p, interior=disk.interior, boundary=disk.boundary, normals=-disk.normals)
    with pytest.raises(ValueError, match="inward.npz: .*flip them"):
        load_cloud(p)


def test_a_few_inward_normals_named(disk):
    n = disk.normals.copy()
    n[[3, 17]] *= -1
    with pytest.raises(ValueError, match=r"normals rows 3, 17 \(2 of \d+\) point into the domain"):
        PointCloud(disk.interior, disk.boundary, n).validate()


def test_outward_normals_pass_on_every_builtin_domain():
    from dtpinn_dist.geometry import Annulus, Ball, Box, Polygon, Star
    for dom in (Annulus(0.15, 1.0), Polygon([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)]),
                Star(1.0, 0.3, 5), Ball(), Box()):
        make_cloud(dom, n=1500, seed=1).validate()  # re-entrant corners, small holes, 3D


# ----------------------------------------------------------------------------- inside
@pytest.mark.parametrize("beyond", [0.5, 3.0])
def test_interior_node_outside_refused(disk, beyond):
    s = _spacing(disk)
    out = disk.boundary[5] + beyond * s * disk.normals[5]
    bad = PointCloud(np.vstack([disk.interior, out]), disk.boundary, disk.normals)
    ni = disk.n_interior
    with pytest.raises(ValueError, match=rf"interior rows {ni} \(1 of {ni + 1}\) lie outside the "
                                         "boundary"):
        bad.validate()


def test_interior_nodes_far_outside_refused():
    """Far from every boundary node (where a nearest-boundary query would be slow) a node
    outside the domain is caught by the bounding box, or by not being joined to the boundary
    layer through neighbouring interior nodes (a stray pair in an L-shape's notch)."""
    from dtpinn_dist.geometry import Polygon

    c = make_cloud(Polygon([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)]), n=3000, seed=0,
                   ghost=False)
    s = _spacing(c)
    ni = c.n_interior
    far = PointCloud(np.vstack([c.interior, [[9.0, -4.0]]]), c.boundary, c.normals)
    with pytest.raises(ValueError, match=rf"rows {ni} \(1 of {ni + 1}\) lie outside the boundary "
                                         r"\(beyond the bounding box"):
        far.validate()
    notch = np.array([[1.5, 1.5], [1.5 + s, 1.5]])  # 0.5 = many spacings from any edge
    stray = PointCloud(np.vstack([c.interior, notch]), c.boundary, c.normals)
    with pytest.raises(ValueError, match=rf"rows {ni}, {ni + 1} \(2 of {ni + 2}\) are not joined "
                                         "to the boundary"):
        stray.validate()


def test_graded_cloud_passes():
    """A coarse core (3x the spacing) inside a fine cloud is joined to the boundary through its
    k nearest neighbours even where the quick one-spacing cells leave it in pieces."""
    from dtpinn_dist.geometry.cloud import _cell_components

    c = make_cloud("disk", n=6000, seed=0, ghost=False)
    a = 3 * _spacing(c)
    g = np.arange(-0.5, 0.5, a)
    core = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2) + a / 4
    core = core[np.linalg.norm(core, axis=1) < 0.5 - 0.5 * a]
    keep = np.linalg.norm(c.interior, axis=1) > 0.5
    graded = PointCloud(np.vstack([c.interior[keep], core]), c.boundary, c.normals)
    med = _spacing(graded)
    labels = _cell_components(graded.interior, np.array([-2.0, -2.0]), np.array([2.0, 2.0]), med)
    assert labels.max() > 10  # the quick pass alone would not have joined the core
    graded.validate()


@pytest.mark.parametrize("d", [2, 3])
def test_cell_components_grid_and_hashing_agree(monkeypatch, d):
    """The quick connectivity pass labels a dense grid, or hashes cells when the grid would be
    too large: both give the same grouping (points in a cube with a spherical hole)."""
    from dtpinn_dist.geometry import cloud

    x = np.random.default_rng(d).uniform(0, 1, (3000, d))
    x = x[np.linalg.norm(x - 0.5, axis=1) > 0.3]
    lo, hi = np.zeros(d), np.ones(d)
    grid = cloud._cell_components(x, lo, hi, 0.05)
    monkeypatch.setattr(cloud, "_MAX_GRID_PER_POINT", 0)
    hashed = cloud._cell_components(x, lo, hi, 0.05)
    pairs = set(zip(grid.tolist(), hashed.tolist()))
    assert len(pairs) == len(set(grid.tolist())) == len(set(hashed.tolist()))
    assert len(pairs) > 1 if d == 3 else len(pairs) == 1  # sparse 3D sample: several groups


# ----------------------------------------------------------------------------- spacing
def test_nearly_coincident_nodes_refused(disk):
    x = np.vstack([disk.interior, disk.interior[10] + [1e-9, 0.0]])
    with pytest.raises(ValueError) as e:
        PointCloud(x, disk.boundary, disk.normals).validate()
    msg = _one_line(e)
    assert f"interior row 10 and interior row {disk.n_interior} are 1e-09 apart" in msg
    assert "times the median spacing" in msg and "remove one" in msg
    # just above the threshold passes
    s = _spacing(disk)
    y = np.vstack([disk.interior[:10], disk.interior[11:], disk.interior[10] + [0, 0]])
    PointCloud(y, disk.boundary, disk.normals).validate()
    z = disk.interior.copy()
    z[0] = z[1] + [2 * CLOSE_RTOL * s, 0]
    PointCloud(z, disk.boundary, disk.normals).validate()


@pytest.mark.parametrize("scale, shift", [(1e-14, 0.0), (1e9, 0.0), (1.0, 1e6)])
def test_tolerances_are_relative_to_the_spacing(disk, scale, shift):
    """A cloud scaled by 1e-14 (or 1e9, or far from the origin) is the same cloud: not flagged
    (the former absolute 1e-12 tolerance called every node of the 1e-14 cloud a duplicate);
    an exact duplicate in it still is."""
    c = PointCloud(disk.interior * scale + shift, disk.boundary * scale + shift, disk.normals)
    c.validate()
    c.with_ghost(length=_spacing(c) / np.sqrt(np.pi)).validate()
    dup = PointCloud(np.vstack([c.interior, c.interior[4]]), c.boundary, c.normals)
    with pytest.raises(ValueError, match="duplicate nodes: interior row 4 and interior row"):
        dup.validate()
    with pytest.raises(ValueError, match="flip them"):  # the other checks work at any scale
        PointCloud(c.interior, c.boundary, -c.normals).validate()


def test_node_at_a_ghost_place_refused(disk, tmp_path):
    """It passes validate() before the ghosts exist (it is only 0.14 spacings outside) and used
    to fail later in the weights; every path that adds ghosts now refuses it."""
    g = disk.boundary[7] + 0.25 * disk.with_ghost().h * disk.normals[7]  # authors' ghost place
    bad = PointCloud(np.vstack([disk.interior, g]), disk.boundary, disk.normals)
    bad.validate()
    match = r"ghost row 7 \(the ghost of boundary row 7\) is .* from interior row \d+ .*a node " \
            r"sits where a ghost goes"
    with pytest.raises(ValueError, match=match):
        bad.with_ghost()
    p = tmp_path / "g.npz"
    np.savez(p, interior=bad.interior, boundary=bad.boundary, normals=bad.normals)
    with pytest.raises(ValueError, match="g.npz: PointCloud ghost row 7"):
        load_cloud(p)
    q = tmp_path / "g.mat"
    scipy.io.savemat(q, {"fullintnodes": bad.interior, "bdrynodes": bad.boundary,
                         "normals": bad.normals})
    with pytest.raises(ValueError, match="g.mat node set 0 .*ghost row 7"):
        load_cloud(q)
    with pytest.raises(ValueError, match="ghost offset is too small"):
        disk.with_ghost(offset=1e-4)


# ----------------------------------------------------------------------------- .mat normals
def _cells(arrs):
    out = np.empty((len(arrs), 1), dtype=object)
    for i, a in enumerate(arrs):
        out[i, 0] = a
    return out


def test_mat_normals_slightly_off_are_normalised(disk, tmp_path):
    n = disk.normals.copy()
    n[3] *= 0.67
    n[9] *= 1.3
    p = tmp_path / "off.mat"
    scipy.io.savemat(p, {"fullintnodes": _cells([disk.interior]),
                         "bdrynodes": _cells([disk.boundary]), "normals": _cells([n])})
    with pytest.warns(UserWarning, match=r"off.mat node set 0 \(N=\d+\): normalised 2 normal\(s\) "
                                         r"that were not unit length: row 3 \(length 0.67\), "
                                         r"row 9 \(length 1.3\)"):
        c = load_mat(p)
    np.testing.assert_allclose(c.normals, disk.normals, atol=1e-15)
    # our own formats stay strict
    with pytest.raises(ValueError, match="row 3 has length 0.67, not 1"):
        PointCloud(disk.interior, disk.boundary, n).validate()
    q = tmp_path / "off.npz"
    np.savez(q, interior=disk.interior, boundary=disk.boundary, normals=n)
    with pytest.raises(ValueError, match="row 3 has length 0.67"):
        load_cloud(q)


@pytest.mark.parametrize("change, match", [(lambda v: 0 * v, "normals row 3 is zero"),
                                           (lambda v: v + np.nan, "normals row 3 has a NaN/inf"),
                                           (lambda v: 5 * v, "normals row 3 has length 5, not 1")],
                         ids=["zero", "nan", "long"])
def test_mat_bad_normals_still_refused(disk, tmp_path, change, match):
    n = disk.normals.copy()
    n[3] = change(n[3])
    p = tmp_path / "bad.mat"
    scipy.io.savemat(p, {"fullintnodes": disk.interior, "bdrynodes": disk.boundary,
                         "normals": n})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is silently normalised here
        with pytest.raises(ValueError, match=match):
            load_mat(p)


@pytest.mark.skipif(not (REF / "SpherePoissonNodes.mat").exists(),
                    reason=f"reference data not found at {REF}")
def test_authors_sphere_file_loads_with_a_warning():
    from dtpinn_dist.geometry.io import mat_sizes

    path = REF / "SpherePoissonNodes.mat"
    for i, n in enumerate(mat_sizes(path)):
        with pytest.warns(UserWarning, match=r"row 0 \(length 0\.(67|588)"):
            c = load_mat(path, index=i)
        assert c.dim == 3 and c.n_interior + c.n_boundary == n
        np.testing.assert_allclose(np.linalg.norm(c.normals, axis=1), 1.0, atol=1e-14)
        # the pole normal points along the pole (it was only short)
        np.testing.assert_allclose(c.normals[0], c.boundary[0] / np.linalg.norm(c.boundary[0]),
                                   atol=1e-6)


@needs_ref
def test_authors_disk_files_pass_every_check():
    from dtpinn_dist.geometry.io import mat_sizes

    for name in ("DiskPoissonNodes.mat", "DiskPoissonNodesLarge.mat"):
        for i in range(len(mat_sizes(REF / name))):
            load_mat(REF / name, index=i).validate()


# ----------------------------------------------------------------------------- files
def test_fifo_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.npz"
    os.mkfifo(fifo)
    result = {}

    def load():
        try:
            load_cloud(fifo)
        except ValueError as e:
            result["msg"] = str(e)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("load_cloud blocked on a FIFO")
    assert "is a FIFO (named pipe); give a regular .mat or .npz file" in result["msg"]
    d = tmp_path / "dir.mat"
    d.mkdir()
    with pytest.raises(ValueError, match="dir.mat is a directory"):
        load_cloud(d)


def _npz_bytes(tmp_path, compressed):
    c = make_cloud("disk", n=300, seed=0)
    p = tmp_path / "ok.npz"
    (np.savez_compressed if compressed else np.savez)(p, interior=c.interior, boundary=c.boundary,
                                                      normals=c.normals)
    return c, p.read_bytes()


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_truncated_and_corrupt_npz_one_line(tmp_path, compressed):
    c, data = _npz_bytes(tmp_path, compressed)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cannot read .*cut.npz as .npz") as e:
        load_cloud(cut)
    assert "truncated, corrupt or not a .npz" in _one_line(e)
    # flip bytes inside the interior array's data: the CRC (stored) or inflate (deflated) fails
    bad = bytearray(data)
    if compressed:
        with zipfile.ZipFile(tmp_path / "ok.npz") as z:
            info = z.getinfo("interior.npy")
        mid = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
        for k in range(mid, mid + 16):
            bad[k] ^= 0xFF
    else:
        pos = bytes(data).find(c.interior[50].tobytes())
        assert pos > 0
        bad[pos] ^= 0x01
    crc = tmp_path / "crc.npz"
    crc.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="crc.npz") as e:
        load_cloud(crc)
    _one_line(e)


def test_truncated_mat_one_line(tmp_path):
    c = make_cloud("disk", n=300, seed=0, ghost=False)
    p = tmp_path / "ok.mat"
    scipy.io.savemat(p, {"fullintnodes": c.interior, "bdrynodes": c.boundary,
                         "normals": c.normals})
    data = p.read_bytes()
    for frac in (0.5, 0.9):
        cut = tmp_path / "cut.mat"
        cut.write_bytes(data[:int(len(data) * frac)])
        with pytest.raises(ValueError, match="cannot read .*cut.mat as a MATLAB .mat file") as e:
            load_cloud(cut)
        _one_line(e)


def test_round_trip_still_validates(tmp_path):
    c = make_cloud("star", n=500, seed=3, n_test=50)
    p = tmp_path / "c.npz"
    save_npz(p, c)
    d = load_cloud(p)
    np.testing.assert_array_equal(d.ghost, c.ghost)
    d.validate()

"""The loss's row weights, the error split, and the network's input map (issue 17)."""
import numpy as np
import pytest
import torch

import dtpinn_dist as dt
from dtpinn_dist.model.jacobian import network_jacobian
from dtpinn_dist.problem.diagnostics import error_split
from dtpinn_dist.problem.weights import domain_length, local_spacing

from clouds import tagged_square
from roundoff import EPS


@pytest.fixture(scope="module")
def square():
    return tagged_square(500, seed=3, n_test=400)


def test_local_spacing_is_the_lattice_spacing():
    for h in (0.1, 0.05):
        n = int(round(1 / h))
        g = np.arange(n + 1) * h
        P = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        on = (np.isclose(P, 0) | np.isclose(P, 1)).any(1)
        c = dt.PointCloud(interior=P[~on], boundary=P[on], normals=np.zeros((on.sum(), 2)))
        # every interior lattice node has its 4 nearest neighbours at distance h (up to the
        # rounding of the coordinates i*h and of the distance)
        assert np.allclose(local_spacing(c, c.interior), h, rtol=8 * EPS, atol=0)


def test_domain_length_is_the_faber_krahn_length():
    # the disk is the equality case: 1/l^2 = j01^2 / R^2 is its first Dirichlet eigenvalue;
    # the node-based area is an estimate (quasi-uniform clouds): within 5%
    disk = dt.make_cloud(dt.Disk(), n=1500, seed=1)
    assert abs(domain_length(disk) - 1 / 2.404825557695773) <= 0.05 / 2.4048
    sq = dt.make_cloud(dt.Rectangle((0, 0), (3, 3)), n=1500, seed=1)
    ref = np.sqrt(9 / np.pi) / 2.404825557695773
    assert abs(domain_length(sq) - ref) <= 0.05 * ref


def test_symbol_weights_divide_each_row_by_its_operator_on_the_smoothest_mode(square):
    # PDE -div((1+x^2) grad u) + u = -(1+x^2) lap u - 2x u_x + u: size (1+x^2)/l^2 + |2x|/l + 1
    # Neumann on 'left': |n|/l = 1/l; Robin(2, 3) on the rest: 2/l + 3
    pb = dt.Problem("-div((1 + x**2)*grad(u)) + u",
                    bc={"left": dt.Neumann(), "*": dt.Robin(2, 3)}, exact="sin(x)*exp(y)")
    disc = dt.discretize(pb, square, 4, weighting="symbol")
    s, w, ell = disc.system, disc.weights, domain_length(square)
    x = s.nodes[s.row_index, 0]
    ref_pde = 1 / ((1 + x ** 2) / ell ** 2 + np.abs(2 * x) / ell + 1) / np.sqrt(s.n_collocation)
    # the same few operations in another order (and |n| = 1 to rounding): a few ulps
    assert np.allclose(w["pde"].numpy(), ref_pde, rtol=16 * EPS, atol=0)
    left = s.boundary_tags == 3
    nb = 1 / np.sqrt(s.n_boundary)
    assert np.allclose(w["bc"].numpy()[left], nb * ell, rtol=16 * EPS, atol=0)
    assert np.allclose(w["bc"].numpy()[~left], nb / (2 / ell + 3), rtol=16 * EPS, atol=0)
    # Dirichlet rows weigh 1/sqrt(Nb); the paper's rule: 1/sqrt(rows) per block
    d = dt.discretize(dt.Problem("-lap(u)", bc=dt.Dirichlet(), exact="x*y"), square, 4)
    assert np.all(d.weights["bc"].numpy() == nb)
    c = dt.discretize(pb, square, 4, weighting="count").weights
    assert np.all(c["pde"].numpy() == 1 / np.sqrt(s.n_collocation))
    assert np.all(c["bc"].numpy() == nb)


def test_auto_is_symbol_with_a_dirichlet_part_else_count(square):
    for bc, rule in (({"left": dt.Neumann(), "*": dt.Robin(1, 1)}, "count"),
                     ({"left": dt.Neumann(), "*": dt.Dirichlet()}, "symbol"),
                     (dt.Dirichlet(), "symbol")):
        disc = dt.discretize(dt.Problem("-lap(u)", bc=bc, exact="x*y + 1"), square, 3)
        assert disc.info["weighting"] == rule


def test_rows_without_a_linear_part_fall_back_to_the_order(square):
    pb = dt.Problem("sqrt(1 + dx(u)**2 + dy(u)**2)", bc=dt.Dirichlet(), exact="x + y**2")
    w = dt.discretize(pb, square, 4).weights
    n = w["pde"].numel()
    assert torch.all(w["pde"] == domain_length(square) ** 1 / np.sqrt(n))


def test_the_weighted_loss_does_not_change_when_the_domain_is_rescaled():
    """Every weighted row has the units of u: the same problem on a cloud 10x larger (exact
    solution u(x/10)) has the same loss for the same network (whose input map normalises the
    cloud's box, so it takes the same values at corresponding nodes)."""
    base = tagged_square(400, seed=5)
    big = dt.PointCloud(interior=10 * base.interior, boundary=10 * base.boundary,
                        normals=base.normals, boundary_tags=base.boundary_tags,
                        tag_names=base.tag_names)
    losses = []
    for cloud, s in ((base, 1.0), (big, 10.0)):
        pb = dt.Problem("-lap(u)", bc={"left": dt.Neumann(), "*": dt.Dirichlet()},
                        exact=f"sin(2*x/{s})*exp(y/{s})")
        disc = dt.discretize(pb, cloud, 4)
        model = dt.MLP(2, 10, 2, seed=3, input_box=disc.input_box)
        losses.append(disc.loss(model))
    # not bit-equal: the RBF-FD weights are computed from other floating-point numbers; 1e-8
    # is far above that round-off and far below any change of weighting (a factor 10^k)
    assert abs(losses[0] - losses[1]) <= 1e-8 * losses[0]


def test_weighting_is_validated(square):
    with pytest.raises(ValueError, match="unknown weighting 'h2'"):
        dt.discretize(dt.Problem("-lap(u)", bc=dt.Dirichlet(), exact="x*y"), square, 4,
                      weighting="h2")


def test_direct_solve_does_not_depend_on_the_row_weights(square):
    pb = dt.Problem("-lap(u) + u**3", bc={"left": dt.Neumann(), "*": dt.Dirichlet()},
                    exact="sin(2*x)*cos(y) + x*y")
    a = dt.solve_discrete(dt.discretize(pb, square, 4))
    b = dt.solve_discrete(dt.discretize(pb, square, 4, weighting="count"))
    # the same square system with its rows scaled: the solutions agree to the solve's accuracy
    # (Newton stops at round-off; 1e-8 is far above it and far below the discretisation error)
    assert np.abs(a.U - b.U).max() <= 1e-8 * np.abs(b.U).max()
    assert abs(a.rel_l2_nodes - b.rel_l2_nodes) <= 1e-6 * b.rel_l2_nodes


@pytest.mark.parametrize("part", ["pde", "left", "*"])
def test_error_split_attributes_a_block_error_to_its_block(square, part):
    """Nodal values ``U* + A^-1 P_b z`` (linear problem): their residual is ``P_b z`` exactly
    (up to round-off), so the whole error must be attributed to block ``b``."""
    pb = dt.Problem("-lap(u) + u", bc={"left": dt.Neumann(), "*": dt.Dirichlet()},
                    exact="sin(2*x)*cos(y) + x*y")
    disc = dt.discretize(pb, square, 4)
    sol = dt.solve_discrete(disc)
    J = disc.linearization_matrix(torch.from_numpy(sol.U))
    nr = len(disc.data["rows_idx"])
    rng = np.random.default_rng(7)
    z = np.zeros(J.shape[0])
    if part == "pde":
        z[:nr] = rng.standard_normal(nr)
    else:
        rows = [bp.rows.numpy() for bp in disc.bparts if bp.key == part][0]
        z[nr + rows] = rng.standard_normal(len(rows))
    import scipy.sparse.linalg as spla
    e = spla.spsolve(J.tocsc(), z)
    e *= 1e-3 * np.abs(sol.U).max() / np.abs(e).max()
    split = error_split(disc, sol.U + e, sol)
    assert split["limiting"] == part
    others = [v for k, v in split["blocks"].items() if k != part]
    # the other blocks see only the round-off of r(U* + e) and of U*'s own residual
    assert max(others) <= 1e-6 * split["blocks"][part]
    # linear problem: the linearised error is the actual one
    assert abs(split["linearised"] - split["nodal"]) <= 1e-6 * split["nodal"]
    assert set(split["blocks"]) == {"pde", "left", "*"}


def test_input_box_maps_to_the_unit_cube_and_keeps_the_fast_jacobian():
    box = ([0.0, -2.0], [2.0, 6.0])
    a = dt.MLP(2, 8, 2, seed=4, input_box=box)
    b = dt.MLP(2, 8, 2, seed=4)
    X = torch.tensor([[0.0, -2.0], [2.0, 6.0], [1.0, 2.0], [0.5, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        # the same weights: a(X) == b(normalised X) exactly (same operations)
        Xn = (X - torch.tensor([1.0, 2.0], dtype=torch.float64)) / torch.tensor(
            [1.0, 4.0], dtype=torch.float64)
        assert torch.equal(a(X), b(Xn))
        assert torch.equal(a.normalize(X)[:2], torch.tensor([[-1.0, -1.0], [1.0, 1.0]],
                                                           dtype=torch.float64))
    u, Ju = network_jacobian(a, X)  # hand-derived path (checked against a(X) inside)
    names = [n for n, _ in a.named_parameters()]
    ref = torch.func.jacrev(lambda *p: torch.func.functional_call(
        a, dict(zip(names, p)), (X,)).reshape(-1), argnums=tuple(range(len(names))))(
        *[p.detach() for p in a.parameters()])
    ref = torch.cat([r.reshape(len(X), -1) for r in ref], 1)
    assert torch.allclose(Ju, ref, rtol=0, atol=64 * EPS * float(ref.abs().max()))
    with pytest.raises(ValueError, match="hi > lo"):
        dt.MLP(2, 8, 2, input_box=([0, 1], [0, 2]))


def test_trained_model_uses_the_cloud_box_and_predict_round_trips(square, tmp_path):
    from dtpinn_dist.outputs.model_io import load_model, save_model
    pb = dt.Problem("-lap(u)", bc=dt.Dirichlet(), exact="x*y + 1")
    disc = dt.discretize(pb, square, 3)
    res = dt.fit(disc, steps=2, width=8, depth=2, verbose=False, inputs="box")
    lo, hi = res.model.input_box
    nodes = np.vstack([square.interior, square.boundary])
    assert lo == list(nodes.min(0)) and hi == list(nodes.max(0))
    save_model(tmp_path, res.model)
    m, _ = load_model(tmp_path)
    P = np.array([[0.3, 0.7], [0.9, 0.1]])
    assert np.array_equal(res.predict(P), disc.predict(m, P).double().numpy())


def test_auto_inputs_map_only_where_the_raw_inputs_are_not_of_order_one():
    from dtpinn_dist.model.mlp import inputs_of_order_one
    from dtpinn_dist.optimizer.trainer import _input_box
    disk = ([-0.99998, -0.9999], [1.0, 0.9998])
    lshape = ([0.0, 0.0], [2.0, 2.0])
    heat = ([-1.0, -1.0, 0.0], [1.0, 1.0, 1.0])
    assert inputs_of_order_one(disk) and inputs_of_order_one(heat)
    assert not inputs_of_order_one(lshape) and not inputs_of_order_one(([0, 0], [0.3, 1]))
    assert _input_box("auto", disk) is None and _input_box("auto", lshape) == lshape
    assert _input_box("box", disk) == disk and _input_box("raw", lshape) is None

"""Exact Dirichlet conditions: the network's form ``u = G + phi N`` (``dt.Dirichlet(exact=True)``).

On the boundary parts marked exact, ``u = g`` holds by construction instead of through a loss
row: the network ``N`` is multiplied by a function ``phi`` that vanishes there and added to a
lifting ``G`` of the data. Both are built from the cloud with the library's own discretisation,
once, before training (two sparse solves on the same RBF-FD operators):

* ``phi``: ``-lap(phi) = 1``, ``phi = 0`` on the exact parts, ``dn(phi) = 0`` on the others,
  scaled to a maximum of 1 -- a smooth, positive, distance-like function on a smooth domain;
* ``G``: ``lap(G) = 0``, ``G = g`` on the exact parts, ``dn(G) = 0`` on the others (the
  harmonic lifting of the data).

At the nodes ``phi = 0`` and ``G = g`` hold exactly on the exact parts (set after the solves),
so their residual rows are zero for every network. Off the nodes (test points, ``predict``)
``G`` and ``phi`` are the order-p RBF-FD interpolants of their nodal values; a saved run keeps
the nodal values beside the model (``lift.npz``), so ``dt.load_run(...).predict`` and
``python -m dtpinn_dist.predict`` return the same values as the trainer.

Measured (docs/loss.md, benchmarks/bench_weighting.py, 120 s of L-BFGS): on the paper's disk
with Dirichlet conditions the exact form reached 3.95e-5 (12x the direct solve's error) against
9.95e-5 (``symbol`` weights) and 2.29e-3 (``count``); on the L-shape (corners, a Neumann part)
1.27e-2 against 3.38e-4 weighted (cause not measured), so the weighted form is the default. DT-PINNs, steady problems, serial or distributed (each rank solves the
global ``phi`` and ``G`` serially: seconds at 10^5 nodes; above that, use the weighted form).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

__all__ = ["Lift", "build_lift", "LiftedNetwork", "exact_parts"]


def exact_parts(analysis) -> list:
    """Keys of the conditions imposed exactly (``Dirichlet(exact=True)``)."""
    return [k for k, (cond, _) in analysis.bcs.items() if getattr(cond, "exact", False)]


@dataclass
class Lift:
    """``G`` and ``phi`` at the nodes of a cloud (all of them: interior, boundary, ghost, in the
    cloud's order), and their interpolation to other points.

    Attributes
    ----------
    nodes : (n, d) float64
    G, phi : (n,) float64
    order : int
        The RBF-FD order of the interpolation.
    """

    nodes: np.ndarray
    G: np.ndarray
    phi: np.ndarray
    order: int
    _cache: dict = field(default_factory=dict, repr=False)

    def at(self, points) -> tuple[np.ndarray, np.ndarray]:
        """``(G, phi)`` at ``points`` (m, d): the RBF-FD interpolants of the nodal values (the
        nodal values themselves at a node, to round-off). Cached per point set."""
        from ..operators.rbffd import rbffd_weights

        P = np.ascontiguousarray(points, dtype=np.float64)
        key = (P.shape, hash(P.tobytes()))
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            idx, w = rbffd_weights(self.nodes, P, "identity", self.order)
            self._cache[key] = ((w * self.G[idx]).sum(1), (w * self.phi[idx]).sum(1))
        return self._cache[key]

    def local(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``(G, phi)`` at this rank's nodes ``X`` (a subset of :attr:`nodes`, matched by their
        exact coordinates)."""
        dist, idx = cKDTree(self.nodes).query(np.asarray(X, dtype=np.float64))
        if len(dist) and float(dist.max()) != 0.0:
            raise ValueError("the lifting's nodes are not this discretisation's nodes")
        return self.G[idx], self.phi[idx]


def build_lift(analysis, cloud, order: int, by_tag: dict, discretize) -> Lift:
    """``G`` and ``phi`` on the whole cloud (serial; the same bits on every rank).

    ``by_tag``: cloud boundary tag -> condition key (as ``discretize`` matched them);
    ``discretize``: :func:`~dtpinn_dist.problem.discretize.discretize`, which builds the two
    auxiliary problems (passed in: it is the caller).
    """
    from ..comm import SerialComm
    from .conditions import Dirichlet, Neumann
    from .problem import Problem
    from .solve import solve_discrete

    keys = set(exact_parts(analysis))
    tags = _tags(cloud)
    exact_tags = [t for t, k in by_tag.items() if k in keys]
    on = np.flatnonzero(np.isin(tags, exact_tags))  # exact boundary nodes (boundary order)
    g = _boundary_data(analysis, cloud, by_tag, on)
    # the aux problems name the cloud's parts by tag, each exact part Dirichlet, others Neumann
    tagged = dataclasses.replace(cloud, boundary_tags=tags,
                                 tag_names={f"t{t}": int(t) for t in by_tag})
    bc = {f"t{t}": (Dirichlet(g="0") if k in keys else Neumann(g="0")) for t, k in by_tag.items()}
    solved = {}
    for name, f in (("phi", "1"), ("G", "0")):
        aux = discretize(Problem("-lap(u)", f=f, bc=bc), tagged, order, comm=SerialComm(),
                         backend="torch", dtype="fp64", weighting="count")
        if name == "G":  # the exact parts' data as the aux problem's Dirichlet values
            aux.data["g"][torch.from_numpy(on)] = torch.from_numpy(g)
        solved[name] = solve_discrete(aux).U
    at = cloud.n_interior + on  # the exact boundary nodes among all nodes (cloud order)
    phi = solved["phi"] / np.abs(solved["phi"]).max()
    phi[at] = 0.0
    G = solved["G"]
    G[at] = g
    return Lift(nodes=np.ascontiguousarray(cloud.nodes, dtype=np.float64), G=G, phi=phi,
                order=int(order))


def _tags(cloud) -> np.ndarray:
    t = getattr(cloud, "boundary_tags", None)
    return np.zeros(cloud.n_boundary, np.int64) if t is None else np.asarray(t, np.int64)


def _boundary_data(analysis, cloud, by_tag, on) -> np.ndarray:
    """g of the exact parts at the boundary nodes ``on`` (positions in boundary order)."""
    from .compile import compile_expr
    from .forms import AXES

    space = list(AXES[:cloud.dim])
    nrm = ["n" + a for a in space]
    tags = _tags(cloud)[on]
    vals = np.empty(len(on))
    for t, k in by_tag.items():
        sel = tags == t
        if not sel.any():
            continue
        P, N = cloud.boundary[on[sel]], cloud.normals[on[sel]]
        env = {a: P[:, i] for i, a in enumerate(space)}
        env.update({n: N[:, i] for i, n in enumerate(nrm)})
        g = compile_expr(analysis.g[k], space + nrm, what=f"the boundary data g of part {k!r}")
        vals[sel] = np.broadcast_to(np.asarray(g(env, "numpy"), dtype=np.float64),
                                    (int(sel.sum()),))
    return vals


class LiftedNetwork(torch.nn.Module):
    """A trained network with its exact Dirichlet form, for prediction:
    ``forward(X) = G(X) + phi(X) N(X)`` (``G``, ``phi`` interpolated by :class:`Lift`)."""

    def __init__(self, network: torch.nn.Module, lift: Lift):
        super().__init__()
        self.network, self.lift = network, lift

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        G, phi = self.lift.at(X.detach().cpu().numpy()[:, :self.lift.nodes.shape[1]])
        N = self.network(X)
        G = torch.as_tensor(G, dtype=N.dtype, device=N.device).reshape(-1, 1)
        phi = torch.as_tensor(phi, dtype=N.dtype, device=N.device).reshape(-1, 1)
        return G + phi * N

    def config(self) -> dict:
        return self.network.config()

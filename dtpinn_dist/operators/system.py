"""What a rank trains on: its nodes, its blocks of L and B, and where the rows sit among the nodes.

The serial builder (:func:`dtpinn_dist.operators.torch_csr.serial_system`) and the distributed one
(:func:`dtpinn_dist.distributed.assembly.distributed_system`) both return a :class:`DiscreteSystem`,
so the losses, the trainer and the optimizers never ask which backend they run on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .linear import LinearOperator


@dataclass
class DiscreteSystem:
    """This rank's share of a discretised problem.

    Attributes
    ----------
    nodes : (n, d) float64 array
        Coordinates of the nodes whose network values this rank owns: the columns of its
        operator blocks, in the operators' local column order. Serially: interior, boundary,
        ghost (``PointCloud.nodes``).
    row_index : (n_rows_L,) int array
        Positions in ``nodes`` of the rows of ``L`` (interior + boundary nodes), in row order.
    boundary_index : (n_rows_B,) int array
        Positions in ``nodes`` of the rows of ``B`` (boundary nodes), in row order.
    interior_index : int array
        Positions in ``nodes`` of the interior nodes (vanilla-PINN PDE points).
    normals : (n_rows_B, d) float64 array
        Unit outward normals at the rows of ``B``.
    L, B : LinearOperator
        Laplacian block (rows: owned interior + boundary nodes) and boundary-operator block
        (rows: owned boundary nodes); both with columns ``nodes``.
    n_rows_L, n_rows_B, n_interior : int
        Global counts (over all ranks), for the loss normalisation of eqs. (4), (12), (16).
    comm
        :class:`~dtpinn_dist.distributed.comm.SerialComm` or ``MPIComm``.
    test_points, alpha, beta
        Optional local test points (for the relative L2 error) and the Robin coefficients the
        boundary operator was built with.
    """

    nodes: np.ndarray
    row_index: np.ndarray
    boundary_index: np.ndarray
    interior_index: np.ndarray
    normals: np.ndarray
    L: LinearOperator
    B: LinearOperator
    n_rows_L: int
    n_rows_B: int
    n_interior: int
    comm: object
    test_points: np.ndarray | None = None
    alpha: float = 1.0
    beta: float = 1.0
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.nodes.shape[1]

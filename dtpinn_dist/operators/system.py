"""What a rank trains on: its nodes, its blocks of the operators, and where the rows sit.

The serial builder (:func:`dtpinn_dist.operators.torch_csr.serial_system`) and the distributed one
(:func:`dtpinn_dist.distributed.assembly.distributed_system`) both return a :class:`DiscreteSystem`
built from the same :class:`~dtpinn_dist.operators.rbffd.OperatorSpec` s, so the residuals, the
trainer and the optimizers never ask which backend they run on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .linear import LinearOperator

__all__ = ["DiscreteSystem"]


@dataclass
class DiscreteSystem:
    """This rank's share of a discretised problem.

    Attributes
    ----------
    nodes : (n, d) float64 array
        Coordinates of the nodes whose network values this rank owns: the columns of its
        operator blocks, in the operators' local column order. Serially: interior, boundary,
        ghost (``PointCloud.nodes``).
    row_index : (n_rows,) int array
        Positions in ``nodes`` of this rank's collocation rows (interior + boundary nodes: the
        rows of operators on ``"collocation"`` rows, such as the paper's L), in row order.
    boundary_index : (n_brows,) int array
        Positions in ``nodes`` of this rank's boundary rows (rows of ``"boundary"`` operators,
        such as the paper's B), in row order.
    interior_index : int array
        Positions in ``nodes`` of the interior nodes (vanilla-PINN PDE points).
    normals : (n_brows, d) float64 array
        Unit outward normals at the boundary rows.
    boundary_tags : (n_brows,) int64 array
        Boundary part of each boundary row.
    ops : dict
        Name -> :class:`LinearOperator`, this rank's block (rows as its spec says, columns
        ``nodes``). The paper's are ``"L"`` (Laplacian) and ``"B"`` (Robin operator).
    rows_of : dict
        Name -> ``"collocation"`` or ``"boundary"``.
    n_collocation, n_boundary, n_interior : int
        Global counts (over all ranks), for the loss normalisation of eqs. (4), (12), (16).
    comm
        :class:`~dtpinn_dist.comm.SerialComm` or ``MPIComm``.
    dtype, device
        Of the operators' products (and of the network to train on them).
    test_points : (m, d) array or None
        This rank's share of the evaluation points of the relative L2 error.
    info : dict
        Backend, order, partition and halo figures.
    """

    nodes: np.ndarray
    row_index: np.ndarray
    boundary_index: np.ndarray
    interior_index: np.ndarray
    normals: np.ndarray
    boundary_tags: np.ndarray
    ops: dict
    rows_of: dict
    n_collocation: int
    n_boundary: int
    n_interior: int
    comm: object
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    test_points: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.nodes.shape[1]

    @property
    def L(self) -> LinearOperator:
        """The operator named ``"L"`` (the paper's Laplacian)."""
        return self.ops["L"]

    @property
    def B(self) -> LinearOperator:
        """The operator named ``"B"`` (the paper's boundary operator)."""
        return self.ops["B"]

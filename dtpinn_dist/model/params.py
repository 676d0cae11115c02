"""Parameters <-> one flat vector: what optimizers and gradient reductions work on."""
from __future__ import annotations

import torch
from torch.nn.utils import parameters_to_vector

__all__ = ["flatten", "copy_flat_into"]


def flatten(tensors) -> torch.Tensor:
    """The tensors (parameters, or their ``.grad``) as one detached flat vector, in order: a new
    tensor (``torch.cat``), never a view of them."""
    return parameters_to_vector(list(tensors)).detach()


def copy_flat_into(v: torch.Tensor, tensors) -> None:
    """Copy the flat vector ``v`` into ``tensors`` in place (no aliasing of ``v``)."""
    tensors = list(tensors)
    sizes = [t.numel() for t in tensors]
    if v.numel() != sum(sizes):
        raise ValueError(f"the vector has {v.numel()} entries but the tensors hold {sum(sizes)}")
    with torch.no_grad():
        for t, x in zip(tensors, torch.split(v, sizes)):
            t.copy_(x.view_as(t))

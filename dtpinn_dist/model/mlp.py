"""The PINN network: a plain fully connected tanh MLP with a seeded, dtype-explicit init."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP", "DTYPES", "parse_dtype", "ACTIVATIONS", "inputs_of_order_one"]

DTYPES = {"fp64": torch.float64, "float64": torch.float64, "fp32": torch.float32,
          "float32": torch.float32}

ACTIVATIONS = {"tanh": torch.tanh, "sin": torch.sin}


def inputs_of_order_one(box) -> bool:
    """Whether inputs spanning ``box = (lo, hi)`` already suit tanh layers: every input within
    [-1, 1] and spanning at least half of it (the paper's unit disk, its time interval [0, 1]).
    The box map would only perturb such inputs (by 1e-4 on the authors' disk); measured there
    with L-BFGS it changed the best error by 1.1-1.6x either way by trajectory alone, so the
    library leaves them raw. Elsewhere (an L-shape on [0, 2]^2) mapping gained 1.2-1.5x."""
    lo, hi = (list(b) for b in box)
    return all(-1.0 <= a and b <= 1.0 and b - a >= 1.0 for a, b in zip(lo, hi))


def parse_dtype(name) -> torch.dtype:
    """'fp64'/'fp32' (or a torch dtype) -> torch dtype, with a clear error otherwise."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: use 'fp64' or 'fp32'") from None


class MLP(nn.Module):
    """``in_dim -> [width] * depth -> out_dim`` with ``tanh`` between layers.

    Parameters
    ----------
    in_dim : int
        2 or 3 for (x, y[, z]); one more for heat (x, y, t).
    width, depth : int
        Hidden layer width and count (paper: 50 x 4).
    out_dim : int
    dtype : torch.dtype or str
        Parameter dtype (fp64 for DT-PINNs, fp32 for vanilla PINNs by default).
    seed : int
        Initialisation seed. The init draws from its own generator (not the global RNG), so the
        same seed gives the same weights regardless of what ran before. Same distribution as
        torch's default ``nn.Linear`` init (the authors' choice): U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        drawn in fp64 and then cast, so fp32 and fp64 nets of one seed start from the same point.
    activation : str
        'tanh' (default) or 'sin'.
    input_box : (lo, hi), optional
        Per-input lower and upper bounds (the cloud's bounding box, and the time interval):
        inputs are mapped affinely to [-1, 1] before the first layer, so the tanh layers see
        the same range whatever the domain's position and size. Part of the architecture
        (saved with the model: predict and resume apply the same map). None: raw inputs.
    """

    def __init__(self, in_dim: int = 2, width: int = 50, depth: int = 4, out_dim: int = 1,
                 dtype=torch.float64, seed: int = 0, activation: str = "tanh", device="cpu",
                 input_box=None):
        super().__init__()
        dtype = parse_dtype(dtype)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: use one of {sorted(ACTIVATIONS)}")
        self.in_dim, self.width, self.depth, self.out_dim = in_dim, width, depth, out_dim
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        sizes = [in_dim] + [width] * depth + [out_dim]
        gen = torch.Generator().manual_seed(int(seed))
        self.layers = nn.ModuleList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            lin = nn.Linear(a, b, dtype=dtype, device=device)
            bound = 1.0 / math.sqrt(a)
            with torch.no_grad():
                lin.weight.copy_((torch.rand((b, a), generator=gen, dtype=torch.float64) * 2 - 1)
                                 * bound)
                lin.bias.copy_((torch.rand((b,), generator=gen, dtype=torch.float64) * 2 - 1)
                               * bound)
            self.layers.append(lin)
        self.input_box = None
        if input_box is not None:
            lo, hi = (tuple(float(v) for v in b) for b in input_box)
            if len(lo) != in_dim or len(hi) != in_dim or not all(
                    math.isfinite(a) and math.isfinite(b) and b > a for a, b in zip(lo, hi)):
                raise ValueError(f"input_box must be {in_dim} finite (lo, hi) pairs with "
                                 f"hi > lo; got {input_box!r}")
            self.input_box = (list(lo), list(hi))
            # x -> (x - centre) / half-width, as constants of the model's dtype (not parameters)
            self.register_buffer("_centre", torch.tensor(
                [(a + b) / 2 for a, b in zip(lo, hi)], dtype=dtype, device=device),
                persistent=False)
            self.register_buffer("_halfwidth", torch.tensor(
                [(b - a) / 2 for a, b in zip(lo, hi)], dtype=dtype, device=device),
                persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].weight.device

    def normalize(self, X: torch.Tensor) -> torch.Tensor:
        """The first layer's input: ``X`` mapped by :attr:`input_box` (or ``X`` itself)."""
        if self.input_box is None:
            return X
        return (X - self._centre) / self._halfwidth

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``X`` of shape (n, in_dim) -> (n, out_dim)."""
        h = self.normalize(X)
        for lin in self.layers[:-1]:
            h = self._act(lin(h))
        return self.layers[-1](h)

    def config(self) -> dict:
        out = {"in_dim": self.in_dim, "width": self.width, "depth": self.depth,
               "out_dim": self.out_dim, "activation": self.activation,
               "dtype": str(self.dtype).replace("torch.", "")}
        if self.input_box is not None:
            out["input_box"] = [list(self.input_box[0]), list(self.input_box[1])]
        return out

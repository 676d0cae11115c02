"""PINN network models."""
from .mlp import DTYPES, MLP, parse_dtype

__all__ = ["MLP", "DTYPES", "parse_dtype"]

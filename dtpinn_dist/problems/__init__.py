"""PDE definitions, manufactured solutions and the DT / vanilla PINN losses."""
from .expressions import (BC_COEFFS, KINDS, PAPER_SOLUTIONS, ExpressionError, PDEData,
                          from_forcing, manufactured, parse_safe)
from .pdes import (DTHeat, DTPoisson, HeatValues, VanillaHeat, VanillaPoisson,
                   autograd_derivatives, make_problem)

__all__ = ["ExpressionError", "parse_safe", "PDEData", "manufactured", "from_forcing",
           "PAPER_SOLUTIONS", "BC_COEFFS", "KINDS", "HeatValues", "DTPoisson", "DTHeat",
           "VanillaPoisson", "VanillaHeat", "make_problem", "autograd_derivatives"]

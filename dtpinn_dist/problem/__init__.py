"""Declared problems: a PDE and boundary conditions as expressions, analysed once, discretised on a
point cloud (serial or distributed) into residuals for DT-PINNs and vanilla PINNs.

``Problem`` (what to solve) -> ``discretize(problem, cloud, order)`` (operators, data) ->
``Discretization`` (residuals, losses, metrics, the declared Jacobian structure).
"""
from .conditions import Condition, Dirichlet, Neumann, Robin
from .discrete import Discretization
from .discretize import discretize
from .expressions import ExpressionError, parse_safe
from .paper import PAPER, paper_problem
from .problem import Problem
from .solve import DirectSolution, solve_discrete

__all__ = ["Problem", "Condition", "Dirichlet", "Neumann", "Robin", "discretize",
           "Discretization", "ExpressionError", "parse_safe", "PAPER", "paper_problem",
           "solve_discrete", "DirectSolution"]

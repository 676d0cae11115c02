"""dtpinn_dist: discretely-trained PINNs (DT-PINNs) with RBF-FD operators, serial or over MPI/PETSc.

The front door::

    import dtpinn_dist as dt
    cloud = dt.make_cloud(dt.Rectangle((0, 0), (1, 1)), n=2000, seed=0)
    problem = dt.Problem("-lap(u) + u**3", bc={"left": dt.Neumann(), "*": dt.Dirichlet()},
                         exact="sin(pi*x)*y")
    disc = dt.discretize(problem, cloud, order=4)        # serial, or each rank's share under MPI
    res = dt.fit(disc, steps=300)
    res.predict([[0.5, 0.5]])
    dt.load_run("runs/my-run").predict([[0.5, 0.5]])   # a saved run (python -m dtpinn_dist.train)

Data flow, one subpackage per stage: geometry -> operators -> partition -> distributed ->
problem -> optimizer -> outputs; :mod:`.comm` is the MPI floor under all of them, and
``python -m dtpinn_dist.train`` the command line over the same API.
"""
__version__ = "0.1.0"

from .geometry import (Annulus, Ball, Box, Disk, Ellipse, PointCloud, Polygon, Rectangle, Star,
                       load_cloud, make_cloud)
from .model import MLP
from .optimizer import FitResult, TrainConfig, fit
from .outputs import load_run
from .problem import (Condition, Dirichlet, Discretization, ExpressionError, Neumann, Problem,
                      Robin, discretize, paper_problem, solve_discrete)

__all__ = ["__version__", "make_cloud", "load_cloud", "PointCloud", "Disk", "Ellipse", "Star",
           "Annulus", "Rectangle", "Polygon", "Ball", "Box", "Problem", "Condition", "Dirichlet",
           "Neumann", "Robin", "paper_problem", "discretize", "Discretization", "fit",
           "FitResult", "TrainConfig", "MLP", "ExpressionError", "solve_discrete", "load_run"]

"""dtpinn_dist: discretely-trained PINNs (DT-PINNs) with RBF-FD operators, serial or over MPI/PETSc.

Pipeline (one subpackage per stage):
geometry -> operators -> partition -> distributed -> model / problems -> optim -> outputs,
driven by :mod:`dtpinn_dist.train`.
"""
__version__ = "0.1.0"

"""PETSc initialisation with options (PETSc programs take ``-mat_type aijcusparse -log_view``)."""
from __future__ import annotations

import sys

__all__ = ["init_petsc"]


def init_petsc(argv: list[str] | None = None):
    """Import PETSc, initialising it with ``argv`` (PETSc-style options such as
    ``['-log_view', '-mat_type', 'aijcusparse']``).

    Options also come from the ``PETSC_OPTIONS`` environment variable, the way to pass them
    through a CLI whose own parser would reject them: ``PETSC_OPTIONS="-log_view" mpirun -n 2
    python -m dtpinn_dist.train ...``. ``sys.argv`` is NOT passed by default (PETSc would report
    the application's own flags as unused options). A no-op once PETSc is imported. Collective on
    the first call (PetscInitialize).
    """
    if "petsc4py.PETSc" not in sys.modules:
        import petsc4py

        petsc4py.init([sys.argv[0] if sys.argv else "dtpinn"] + list(argv or []))
    from petsc4py import PETSc

    return PETSc

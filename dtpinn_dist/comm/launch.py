"""Was this process started by an MPI launcher with more than one rank? (the one launch check)

Read from the launchers' environment (OpenMPI's mpirun, MPICH/Hydra, Slurm's srun), so a serial
run never imports mpi4py; under PMIx without a size variable, MPI itself is asked.
"""
from __future__ import annotations

import os

__all__ = ["launch_rank_size", "mpi_launched"]

_PAIRS = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
          ("PMIX_RANK", "PMIX_SIZE"))


def launch_rank_size(env=None) -> tuple[int, int]:
    """(rank, size) of this process as its launcher set it; (0, 1) for a plain process.

    Slurm's ``SLURM_PROCID`` counts only inside an ``srun`` step (a batch script alone has one);
    a PMIx launch that sets no size is resolved by initialising MPI.
    """
    env = os.environ if env is None else env
    for r, s in _PAIRS:
        if r in env and env.get(s, "").isdigit():
            return int(env[r]), int(env[s])
    if "SLURM_PROCID" in env and env.get("SLURM_STEP_NUM_TASKS", "").isdigit():
        return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"])
    if "PMIX_RANK" in env:
        try:
            from mpi4py import MPI
        except ImportError:
            return 0, 1
        return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    return 0, 1


def mpi_launched(env=None) -> bool:
    """True when an MPI launcher started more than one rank."""
    return launch_rank_size(env)[1] > 1

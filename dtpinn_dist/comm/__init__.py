"""The bottom layer: communicators with deterministic reductions, the launch check, PETSc
initialisation, and ending the whole job when one rank fails. Imports nothing else of the package.

Every object that works across ranks is built with a communicator and carries it (DOLFINx style):
``as_comm`` turns ``None`` (detected once: MPI when launched on several ranks, else serial), an
mpi4py communicator or one of ours into one of ours.
"""
from .communicator import MPIComm, SerialComm, as_comm, get_comm, tensor_hash
from .errors import abort_on_error, abort_on_exception, world_rank_size
from .launch import launch_rank_size, mpi_launched
from .petsc import init_petsc
from .signals import StopSignals

__all__ = ["SerialComm", "MPIComm", "as_comm", "get_comm", "tensor_hash", "abort_on_exception",
           "abort_on_error", "world_rank_size", "launch_rank_size", "mpi_launched", "init_petsc",
           "StopSignals"]

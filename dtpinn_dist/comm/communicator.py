"""Communicators with deterministic reductions, so that every rank sees bit-identical results.

MPI does not promise that ``Allreduce`` returns bitwise-identical values on every rank (nor the
same value run to run). L-BFGS and Levenberg-Marquardt take data-dependent branches (line search,
step acceptance), so ranks whose loss differs in the last bit can diverge and then deadlock in
mismatched collectives (the failure of DDP + ``torch.optim.LBFGS``, pytorch issue 30439).
Here every reduction is a ``Reduce`` to rank 0 followed by a ``Bcast`` of the root's bits: every
rank gets the identical result (scalably: both are trees), and it is the same for any run with
the same rank count and MPI configuration.

:class:`SerialComm` is the single-process stand-in (no mpi4py needed).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


class SerialComm:
    """One process, no MPI: every reduction is the identity."""

    rank = 0
    size = 1
    is_root = True

    def sum(self, x):
        """Sum of ``x`` (scalar, numpy array or torch tensor) over ranks."""
        return x

    def bcast(self, obj, root: int = 0):
        return obj

    def gather(self, obj, root: int = 0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)

    def same_on_all_ranks(self, t: torch.Tensor) -> bool:
        return True


class MPIComm:
    """Wraps an mpi4py communicator; every method is collective over it.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        Defaults to ``MPI.COMM_WORLD``.
    """

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.is_root = self.rank == 0

    # -- deterministic sums -------------------------------------------------------------------
    def _sum_array(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        flat = np.ascontiguousarray(a).reshape(-1)
        out = np.empty_like(flat)
        # Reduce to rank 0 (MPI's tree: O(log P) steps, fixed for a given communicator and
        # message size), then broadcast the root's bits, so every rank holds the identical sum.
        self.comm.Reduce(flat, out, op=self.MPI.SUM, root=0)
        self.comm.Bcast(out, root=0)
        return out.reshape(a.shape)

    def sum(self, x):
        """Sum over ranks of a scalar, numpy array or torch tensor, bit-identical on all ranks."""
        if isinstance(x, torch.Tensor):
            host = x.detach().to("cpu").contiguous().numpy()
            return torch.from_numpy(self._sum_array(host)).to(device=x.device, dtype=x.dtype)
        if isinstance(x, np.ndarray):
            return self._sum_array(x)
        arr = self._sum_array(np.asarray([x], dtype=np.float64 if isinstance(x, float) else None))
        return type(x)(arr[0]) if isinstance(x, (int, float)) else arr[0]

    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def gather(self, obj, root: int = 0):
        return self.comm.gather(obj, root=root)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    def same_on_all_ranks(self, t: torch.Tensor) -> bool:
        """True when ``t`` has identical bits on every rank (compares a hash; collective)."""
        digest = tensor_hash(t)
        return len(set(self.comm.allgather(digest))) == 1


def tensor_hash(t: torch.Tensor | list) -> str:
    """Hex digest of the exact bits of a tensor (or a list of tensors, e.g. parameters)."""
    h = hashlib.sha256()
    for x in (t if isinstance(t, (list, tuple)) else [t]):
        h.update(x.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def as_comm(comm=None):
    """:class:`SerialComm` / :class:`MPIComm` from one of those, an mpi4py communicator, or None.

    None is detected once, here: ``MPI.COMM_WORLD`` when an MPI launcher started more than one
    rank (:func:`~dtpinn_dist.comm.launch.mpi_launched`), else :class:`SerialComm` (mpi4py is
    then never imported).
    """
    if comm is None:
        return get_comm("auto")
    if isinstance(comm, (MPIComm, SerialComm)):
        return comm
    if hasattr(comm, "Get_size"):
        return MPIComm(comm) if comm.Get_size() > 1 else SerialComm()
    raise TypeError(f"not a communicator: {comm!r} (give an mpi4py communicator, an MPIComm, a "
                    "SerialComm or None)")


def get_comm(kind: str = "auto"):
    """The communicator for this run.

    ``"serial"`` never imports mpi4py; ``"mpi"`` requires it and uses ``COMM_WORLD``; ``"auto"``
    uses MPI when an MPI launcher started more than one rank, otherwise :class:`SerialComm`.
    """
    from .launch import mpi_launched

    if kind == "serial":
        return SerialComm()
    if kind not in ("auto", "mpi"):
        raise ValueError(f"unknown communicator kind {kind!r}: use 'auto', 'serial' or 'mpi'")
    if kind == "auto" and not mpi_launched():
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("this job runs on several MPI ranks but mpi4py is not installed: pip "
                          "install 'dtpinn-dist[mpi]' (or run scripts/setup.sh)") from None
    return MPIComm(MPI.COMM_WORLD)

"""End the whole MPI job when one rank fails: never a hang.

If one rank raises while the others wait in a collective (a reduction, a MatMult halo exchange),
those ranks wait forever. :func:`abort_on_exception` (context manager) and :func:`abort_on_error`
(decorator) catch any exception on the failing rank, print ``rank R: error: <message>`` to stderr
and call ``MPI.COMM_WORLD.Abort(1)``, which makes the MPI launcher kill every rank and exit
non-zero within seconds.

Validation that every rank performs identically (bad arguments, a malformed cloud read by all
ranks) raises the same ``ValueError`` on every rank. So that the message appears once, not once
per rank, ranks other than 0 hold a ``ValueError`` back for :data:`PEER_GRACE_S` seconds: if rank 0
failed the same way, its abort ends them first; if the error is theirs alone, they report it
after that short wait. In a single-process run there is nothing to hang: the message is printed the same way and
the process exits with status 1 (``DTPINN_TRACEBACK=1`` re-raises instead, with the traceback).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback

__all__ = ["abort_on_exception", "abort_on_error", "world_rank_size", "PEER_GRACE_S"]

#: How long a rank other than 0 waits before reporting a ``ValueError`` (see the module text).
PEER_GRACE_S = 2.0


def world_rank_size() -> tuple[int, int]:
    """(rank, size) of MPI.COMM_WORLD, or (0, 1) when mpi4py is absent or MPI not initialised.

    Never initialises MPI itself (so a serial run without mpirun stays MPI-free)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None:
        return 0, 1
    try:
        if not mpi.Is_initialized() or mpi.Is_finalized():
            return 0, 1
        return mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size()
    except Exception:  # pragma: no cover - broken MPI install
        return 0, 1


def _message(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    # Keep the exception type for anything that is not a plain user-facing validation error.
    if not isinstance(exc, (ValueError, FileNotFoundError, KeyboardInterrupt)):
        msg = f"{type(exc).__name__}: {msg}"
    return msg


def _report_and_abort(exc: BaseException, code: int) -> None:
    rank, size = world_rank_size()
    prefix = f"rank {rank}: " if size > 1 else ""
    if size > 1 and rank != 0 and isinstance(exc, ValueError):
        import time
        time.sleep(PEER_GRACE_S)  # rank 0 probably reports the same message and aborts us all
    if os.environ.get("DTPINN_TRACEBACK") == "1":
        traceback.print_exception(exc, file=sys.stderr)
    try:
        sys.stderr.write(f"{prefix}error: {_message(exc)}\n")
        sys.stderr.flush()
        sys.stdout.flush()
    except Exception:  # pragma: no cover - closed stderr: still abort
        pass
    if size > 1:
        # Abort is collective-free: it returns only if the launcher is gone.
        sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(code)
        os._exit(code)  # pragma: no cover


@contextlib.contextmanager
def abort_on_exception(code: int = 1):
    """Run the body; on an exception on any rank, report it and abort the whole job.

    Not collective by itself: it costs nothing unless an exception happens, and then only the
    failing rank(s) act. ``SystemExit(0)`` / ``SystemExit(None)`` pass through (a clean
    ``sys.exit()`` on every rank, e.g. ``--help``); a non-zero ``SystemExit`` in an MPI run aborts
    too, because the other ranks may be inside a collective.

    Serial: prints ``error: <message>`` and raises ``SystemExit(code)`` (``DTPINN_TRACEBACK=1``:
    re-raises the original exception).
    """
    try:
        yield
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        rank, size = world_rank_size()
        if size > 1:
            _report_and_abort(exc if not isinstance(exc.code, int) else
                              RuntimeError(f"exited with status {exc.code}"),
                              exc.code if isinstance(exc.code, int) else code)
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure must end the job
        _report_and_abort(exc, code)
        if os.environ.get("DTPINN_TRACEBACK") == "1":
            raise
        raise SystemExit(code) from None


def abort_on_error(fn=None, *, code: int = 1):
    """Decorator form of :func:`abort_on_exception` (e.g. on a CLI ``main``)."""
    if fn is None:
        return functools.partial(abort_on_error, code=code)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with abort_on_exception(code):
            return fn(*args, **kwargs)

    return wrapper

"""Stop signals: Ctrl-C, ``kill``, Slurm's warning before the time limit, as a request to stop.

A long run should end cleanly when it is asked to: finish the step in progress, write a
checkpoint and its metrics, and exit. :class:`StopSignals` installs handlers that only record
the first signal (so a step is never cut in half, and no MPI collective is interrupted); the
training loop polls :attr:`StopSignals.caught` between steps and, under MPI, agrees with the
other ranks on it (one ``allgather``), so every rank stops after the same step.

Which signals: SIGINT (Ctrl-C), SIGTERM (``kill``, ``scancel``, Slurm's time limit, OpenMPI's
``mpirun`` after its own SIGINT or SIGTERM: ``odls_base_sigkill_timeout`` seconds later, default
1, and SIGKILL as long after that -- docs/cluster.md), SIGUSR1 (what the job scripts forward when
Slurm warns with ``--signal=B:USR1@120``, and what ``mpirun`` and ``srun`` pass on to the ranks
at once).
A second SIGINT while the first is pending raises ``KeyboardInterrupt`` at once (abandoning the
step); a second SIGTERM or SIGUSR1 is recorded again and changes nothing.
"""
from __future__ import annotations

import signal
import threading

__all__ = ["StopSignals", "STOP_SIGNALS", "signal_name"]

#: The signals that request a clean stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def signal_name(signum: int) -> str:
    """``2`` -> ``"SIGINT"``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """Context manager: while active, the stop signals set :attr:`caught` instead of killing.

    Outside the main thread (where Python cannot install handlers) it does nothing and
    :attr:`caught` stays 0.

    Attributes
    ----------
    caught : int
        The first stop signal received (its number), 0 when none.
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.caught = 0
        self._old = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.caught == signal.SIGINT:
            # the second Ctrl-C: do not wait for the step to finish
            raise KeyboardInterrupt
        if not self.caught:
            self.caught = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

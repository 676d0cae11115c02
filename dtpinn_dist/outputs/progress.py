"""Progress of a run on rank 0: a progress bar on a terminal, plain lines elsewhere, and every
line in ``RUN/train.log``.

* On a terminal (``stderr`` is a TTY) with ``tqdm`` installed, a bar on ``stderr`` advances at
  every evaluation and shows the loss and the error; the evaluation lines then go to the log
  file only, other messages (phase changes, the stop reason) are printed above the bar.
* Otherwise (a batch job, a pipe, ``mpirun`` output, no tqdm) every line is printed to
  ``stdout`` as it comes, flushed.
* ``quiet``: nothing on the terminal; the log file still gets every line.

Lines that come before the run folder exists (the banner) are kept and written first when the
log file is attached. The log is appended line by line (not atomically: it is a log).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

__all__ = ["RunLog", "tqdm_available"]

#: The trainer's evaluation lines start with this (they feed the bar instead of the terminal).
_RECORD_PREFIX = "step "


def tqdm_available() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class RunLog:
    """A callable ``log(line)`` for the trainer and the CLI (see the module docstring).

    Parameters
    ----------
    quiet : bool
        No terminal output (the log file still gets every line).
    stream : file, optional
        Where plain lines go (default ``sys.stdout``).
    bar : bool or None
        Force the progress bar on or off; None: on when ``stderr`` is a terminal and tqdm is
        installed.
    """

    def __init__(self, quiet: bool = False, stream=None, bar: bool | None = None):
        self.quiet = quiet
        self.stream = stream
        if bar is None:
            bar = (not quiet and tqdm_available() and hasattr(sys.stderr, "isatty")
                   and sys.stderr.isatty())
        self.want_bar = bool(bar)
        self._bar = None
        self._pending: list[str] = []
        self._fh = None
        self.path: Path | None = None

    # ------------------------------------------------------------------ the file
    def attach(self, path) -> None:
        """Open ``path`` (append) and write the lines logged so far."""
        self.path = Path(path)
        self._fh = open(self.path, "a", encoding="utf-8", buffering=1)
        for line in self._pending:
            self._fh.write(line + "\n")
        self._pending.clear()

    def _to_file(self, line: str) -> None:
        if self._fh is None:
            self._pending.append(line)
        else:
            try:
                self._fh.write(line + "\n")
            except OSError:  # a full disk must not stop the training; the outputs will say so
                pass

    # ------------------------------------------------------------------ lines
    def __call__(self, line: str = "", flush: bool = True, **_) -> None:
        line = str(line)
        self._to_file(line)
        if self.quiet:
            return
        if self._bar is not None:
            if not line.startswith(_RECORD_PREFIX):
                self._bar.write(line, file=sys.stderr)
            return
        out = self.stream or sys.stdout
        out.write(line + "\n")
        if flush:
            out.flush()

    def warn(self, line: str) -> None:
        """A warning: always shown (stderr), also when quiet, and logged."""
        self._to_file("warning: " + line)
        if self._bar is not None:
            self._bar.write("warning: " + line, file=sys.stderr)
        else:
            sys.stderr.write("warning: " + line + "\n")
            sys.stderr.flush()

    # ------------------------------------------------------------------ the bar
    def start(self, total_steps: int) -> None:
        """Start the bar (if wanted) for ``total_steps`` optimizer steps."""
        if self.want_bar and self._bar is None:
            from tqdm import tqdm

            # a terminal that reports a 0 x 0 size (a fresh pseudo-terminal, some consoles):
            # tqdm would hide the bar (no rows) -- give it a fixed size then
            try:
                size = os.get_terminal_size(sys.stderr.fileno())
            except (OSError, ValueError):
                size = os.terminal_size((0, 0))
            known = size.columns > 0 and size.lines > 0
            self._bar = tqdm(total=int(total_steps), file=sys.stderr, unit="step",
                             dynamic_ncols=known, ncols=None if known else 100,
                             nrows=None if known else 24, leave=True)

    def record(self, rec: dict) -> None:
        """An evaluation record: move the bar to its step and show its loss and error."""
        if self._bar is None:
            return
        self._bar.n = min(int(rec.get("step", 0)), self._bar.total or int(rec.get("step", 0)))
        post = {"loss": f"{rec['loss']:.3e}"} if rec.get("loss") is not None else {}
        if rec.get("rel_l2") is not None:
            post["rel_l2"] = f"{rec['rel_l2']:.3e}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.refresh()

    def close_bar(self) -> None:
        """End the bar (the lines after it print plainly)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_bar()
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

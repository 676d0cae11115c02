"""The run folder: checked before any work, claimed exclusively, cleaned up after an early failure.

Life of a run folder (rank 0 only):

1. :func:`check_run_dir` before the point cloud is read: the folder (or its nearest existing
   parent) is writable, it holds no finished run (``metrics.json``; ``overwrite=True`` allows
   one) and no live run holds its lock. Cheap, creates nothing.
2. :meth:`RunDir.claim` once the inputs are valid, just before training: creates the folder
   and the lock file ``.lock`` with ``O_CREAT | O_EXCL`` -- of two runs racing for one folder,
   exactly one gets it, the other is refused with one line. A lock left by a killed run on this
   host (its process is gone) is taken over; one from another host is refused with the fix.
3. :meth:`RunDir.release` at the end (the lock goes, the outputs stay), or
   :meth:`RunDir.abandon` after a failure before training: everything this run created (files,
   the folder itself and parents it made) is removed, so no empty run folder is left behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from ..atomic import OutputError, fsync_dir, probe_writable

__all__ = ["RunDir", "check_run_dir", "OutputExistsError", "OutputError", "LOCK_NAME",
           "default_out_dir", "OUTPUT_NAMES"]

LOCK_NAME = ".lock"
#: Files and folders a run writes; ``overwrite=True`` removes these (and only these) first.
OUTPUT_NAMES = ("metrics.json", "config.toml", "checkpoint.pt", "model.pt", "model.json", "solution.npz",
                "solution.vtu", "solution.pvd", "vtk", "solution.png", "error.png",
                "history.png", "train.log")


class OutputExistsError(OutputError):
    """The output folder already holds a finished run or is in use by a live one."""


def default_out_dir(root: str | os.PathLike = "runs") -> Path:
    """``runs/<timestamp>`` (a suffix is added if that already exists)."""
    base = Path(root) / time.strftime("%Y%m%d-%H%M%S")
    p, k = base, 1
    while p.exists():
        p, k = Path(f"{base}-{k}"), k + 1
    return p


def _read_lock(lock: Path) -> dict:
    try:
        with open(lock, encoding="utf-8") as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive_here(info: dict) -> bool | None:
    """True/False when the lock's process is on this host (alive or gone); None otherwise."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return None
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    return True  # alive (a PermissionError: a live process of another user)


def _lock_text(info: dict) -> str:
    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    if info.get("started"):
        who += f", started {info['started']}"
    return who


def check_run_dir(out: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """Step 1 of the module docstring: refuse an unusable ``out`` before any work.

    Raises
    ------
    OutputExistsError
        ``out/metrics.json`` exists (and neither ``overwrite`` nor ``resume``), or a live run
        holds ``out/.lock``.
    OutputError
        ``out`` is a file, or it (its nearest existing parent) is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; choose another --out")
    if (out / "metrics.json").exists() and not (overwrite or resume):
        raise OutputExistsError(f"{out / 'metrics.json'} already exists; choose another --out "
                                "or pass --overwrite")
    lock = out / LOCK_NAME
    if lock.exists():
        info = _read_lock(lock)
        if _alive_here(info) is not False:
            raise OutputExistsError(
                f"--out {out} is in use by another run ({_lock_text(info)}); choose another "
                f"--out, or remove {lock} if that run is gone")
    probe_writable(out, "--out")
    return out


class RunDir:
    """A claimed run folder (see the module docstring).

    Parameters
    ----------
    path : str or Path
    overwrite : bool
        Allow a folder holding a finished run; its outputs (:data:`OUTPUT_NAMES`) are removed.
    resume : bool
        Allow a folder holding a run (finished or killed) and keep its files.
    """

    def __init__(self, path, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        self.overwrite, self.resume = overwrite, resume
        self.created: list[Path] = []   # files and folders this run made, in creation order
        self.claimed = False

    # ------------------------------------------------------------------ claim
    def claim(self) -> "RunDir":
        """Create the folder and its lock (exclusively); refuse a folder in use or finished."""
        check_run_dir(self.path, self.overwrite, self.resume)
        missing = []
        p = self.path
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create --out {self.path}: {exc.strerror or exc}; choose "
                              "a writable output folder") from None
        self.created.extend(reversed(missing))
        self._take_lock()
        if self.overwrite and not self.resume:
            self._remove_old_outputs()
        return self

    def _take_lock(self) -> None:
        lock = self.path / LOCK_NAME
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for attempt in (0, 1):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                old = _read_lock(lock)
                if attempt == 0 and _alive_here(old) is False:
                    # a killed run's lock on this host: move it aside (one racer wins), retry
                    stale = lock.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
                    with contextlib.suppress(OSError):
                        os.replace(lock, stale)
                        os.unlink(stale)
                    continue
                self.abandon()
                raise OutputExistsError(
                    f"--out {self.path} is in use by another run ({_lock_text(old)}); choose "
                    f"another --out, or remove {lock} if that run is gone") from None
            except OSError as exc:
                self.abandon()
                raise OutputError(f"cannot create {lock}: {exc.strerror or exc}; choose a "
                                  "writable output folder") from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(info, fh)
            fsync_dir(self.path)
            self.created.append(lock)
            self.claimed = True
            return

    def _remove_old_outputs(self) -> None:
        import shutil

        for name in OUTPUT_NAMES:
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()

    # ------------------------------------------------------------------ files
    def file(self, name: str) -> Path:
        """``path / name``, recorded as created by this run (removed by :meth:`abandon`)."""
        p = self.path / name
        if not p.exists() and p not in self.created:
            self.created.append(p)
        return p

    # ------------------------------------------------------------------ end
    def release(self) -> None:
        """The run is over: remove the lock, keep the outputs."""
        if self.claimed:
            with contextlib.suppress(OSError):
                (self.path / LOCK_NAME).unlink()
            self.claimed = False

    def abandon(self) -> None:
        """Failure before training: remove what this run created (files, then the folders it
        made, only if they are empty)."""
        import shutil

        for p in reversed(self.created):
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    if p == self.path or p in self.path.parents:
                        p.rmdir()  # only if empty: never a user's files
                    else:
                        shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
        self.created.clear()
        self.claimed = False

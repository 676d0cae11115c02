"""The run folder: checked before any work, claimed exclusively, cleaned up after an early failure.

Life of a run folder (rank 0 only):

1. :func:`check_run_dir` before the point cloud is read: the folder (or its nearest existing
   parent) is writable, it holds no run (a finished one: ``metrics.json``; a stopped or killed
   one that can be continued: ``checkpoint.pt``; the results an unfinished ``--overwrite`` run
   set aside) unless ``overwrite`` or ``resume``, and no live run holds its lock. Cheap, creates
   nothing.
2. :meth:`RunDir.claim` once the inputs are valid, just before training: creates the folder
   and the lock file ``.lock`` with ``O_CREAT | O_EXCL`` -- of two runs racing for one folder,
   exactly one gets it, the other is refused with one line. A lock left by a killed run on this
   host (its process is gone) is taken over; one from another host is refused with the fix.
   The temporary files a killed write left (``.checkpoint.pt.XXXXXXXX.tmp``) are removed.
   ``overwrite``: the old run's files are moved aside into ``.previous-run/``, not deleted.
3. :meth:`RunDir.release` at the end (the lock goes, the outputs stay; ``.previous-run/`` is
   deleted when this run wrote ``metrics.json``, put back when it left neither that nor a
   checkpoint, else kept for a resumed run to settle), or :meth:`RunDir.abandon` after
   a failure before training: everything this run created (files, the folder itself and parents
   it made) is removed and the set-aside files are put back, so no empty run folder is left
   behind and an ``--overwrite`` that failed loses nothing.

Only the files this program writes are ever moved or deleted, by name (:data:`OUTPUT_NAMES`,
``vtk/solution_KKKK.vtu`` and their temporary files; :func:`run_files`): never a folder's other
contents, never a folder recursively.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path

from ..atomic import OutputError, fsync_dir, probe_writable, temporary_target
from .model_io import LIFT_FILE

__all__ = ["RunDir", "check_run_dir", "OutputExistsError", "OutputError", "LOCK_NAME",
           "BACKUP_NAME", "default_out_dir", "OUTPUT_NAMES", "VTK_DIR", "vtk_slice_name",
           "run_files"]

LOCK_NAME = ".lock"
#: Where ``overwrite=True`` sets the old run's files aside until the new run has results.
BACKUP_NAME = ".previous-run"
#: The files a run writes in its folder (besides ``VTK_DIR/vtk_slice_name(k)``): the only names
#: ``overwrite=True`` moves aside and a failed run removes.
OUTPUT_NAMES = ("metrics.json", "config.toml", "checkpoint.pt", "model.pt", "model.json",
                LIFT_FILE, "solution.npz", "solution.vtu", "solution.pvd", "solution.png",
                "error.png", "history.png", "train.log")
#: The sub-folder of a time-dependent run's VTK slices.
VTK_DIR = "vtk"
_VTK_SLICE = re.compile(r"solution_\d{4,}\.vtu")


def vtk_slice_name(k: int) -> str:
    """``VTK_DIR``'s file of time slice ``k``: ``solution_0007.vtu``."""
    return f"solution_{k:04d}.vtu"


def _own(name: str, sub: bool) -> bool:
    return _VTK_SLICE.fullmatch(name) is not None if sub else name in OUTPUT_NAMES


def run_files(folder, temporaries: bool = False) -> list[Path]:
    """The files of the run folder ``folder`` that this program writes, found by name (see
    :data:`OUTPUT_NAMES`); with ``temporaries``, also the temporary files of those names that a
    killed write left (only safe to remove while holding the folder's lock). Never anything else:
    a user's files in the folder or in ``vtk/`` are not listed."""
    folder = Path(folder)
    found = []
    for where, sub in ((folder, False), (folder / VTK_DIR, True)):
        try:
            entries = sorted(os.scandir(where), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if not e.is_file(follow_symlinks=False) and not e.is_symlink():
                continue
            target = temporary_target(e.name) if temporaries else None
            if _own(e.name, sub) or (target is not None and _own(target, sub)):
                found.append(Path(e.path))
    return found


def _move_files(src: Path, dst: Path) -> None:
    """Move :func:`run_files` of ``src`` to ``dst`` (same names, ``vtk/`` too), replacing those
    there; ``src/vtk`` goes when it is left empty."""
    for f in run_files(src):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)
    with contextlib.suppress(OSError):
        (src / VTK_DIR).rmdir()  # only if empty: never a user's files


def _remove_files(folder: Path, temporaries: bool = False) -> None:
    """Delete :func:`run_files` of ``folder`` (and its ``vtk/`` when that is left empty)."""
    for f in run_files(folder, temporaries):
        with contextlib.suppress(OSError):
            f.unlink()
    with contextlib.suppress(OSError):
        (folder / VTK_DIR).rmdir()


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
        Neither ``overwrite`` nor ``resume``, and ``out`` holds ``metrics.json`` (a finished
        run), ``checkpoint.pt`` (a stopped or killed run: it can be resumed) or
        ``.previous-run/`` (results an unfinished ``--overwrite`` run set aside); or a live run
        holds ``out/.lock``.
    OutputError
        ``out`` is a file, a non-empty folder that is not a run (whatever the flags), or it
        (its nearest existing parent) is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; choose another --out")
    lock = out / LOCK_NAME
    if lock.exists():
        info = _read_lock(lock)
        if _alive_here(info) is not False:
            raise OutputExistsError(
                f"--out {out} is in use by another run ({_lock_text(info)}); choose another "
                f"--out, or remove {lock} if that run is gone")
    if out.is_dir() and not (lock.exists() or (out / BACKUP_NAME).exists()
                             or run_files(out)):
        other = next(iter(sorted(p.name for p in out.iterdir())), None)
        if other is not None:  # a user's folder, not a run: never mix our files into it
            raise OutputError(
                f"--out {out} holds files that are not a dtpinn_dist run (e.g. {other!r}); "
                "choose an empty or new folder")
    if not (overwrite or resume):
        if (out / "metrics.json").exists():
            raise OutputExistsError(f"{out / 'metrics.json'} already exists; choose another "
                                    "--out or pass --overwrite")
        if (out / "checkpoint.pt").exists():
            raise OutputExistsError(
                f"--out {out} holds a run that stopped before its end ({out / 'checkpoint.pt'}, "
                f"no metrics.json); resume with --resume {out}, or --overwrite to start over")
        if (out / BACKUP_NAME).exists():
            raise OutputExistsError(
                f"--out {out} holds an earlier run's results in {out / BACKUP_NAME} (an "
                "--overwrite run that replaced them did not finish); choose another --out, or "
                "pass --overwrite")
    probe_writable(out, "--out")
    return out


class RunDir:
    """A claimed run folder (see the module docstring).

    Parameters
    ----------
    path : str or Path
    overwrite : bool
        Allow a folder holding a run; its files (:func:`run_files`) are moved into
        ``.previous-run/``, deleted once this run has written ``metrics.json`` and put back
        when it ends with neither that nor a checkpoint (:meth:`_settle_backup`).
    resume : bool
        Allow a folder holding a run (finished or killed) and keep its files.
    """

    def __init__(self, path, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        self.overwrite, self.resume = overwrite, resume
        self.created: list[Path] = []   # files and folders this run made, in creation order
        self.claimed = False
        self.backup: Path | None = None  # the set-aside files this run answers for
        self._put_back = False           # ... and puts back when it ends without results

    # ------------------------------------------------------------------ claim
    def claim(self) -> "RunDir":
        """Create the folder and its lock (exclusively), remove the temporary files a killed
        write left, set an old run aside (``overwrite``); refuse a folder in use, or holding a
        run without ``overwrite`` or ``resume`` (:func:`check_run_dir`)."""
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
        # the folder is ours: what a killed write left is nobody's
        for f in run_files(self.path, temporaries=True):
            if temporary_target(f.name) is not None:
                with contextlib.suppress(OSError):
                    f.unlink()
        backup = self.path / BACKUP_NAME
        if self.overwrite and not self.resume:
            try:
                self._set_aside(backup)
            except OSError as exc:
                self.abandon()
                raise OutputError(f"cannot move the old run in {self.path} aside: "
                                  f"{exc.strerror or exc}; check the folder") from None
        elif self.resume and backup.is_dir():
            self.backup = backup  # a resumed run that writes its results ends the old ones
        return self

    def _set_aside(self, backup: Path) -> None:
        """``overwrite``: move the old run's files into ``backup`` (kept until this run has
        results). A ``backup`` already there holds the results of a run whose replacement was
        killed: it stays, and the killed run's own files go, unless that run had written its
        results (``metrics.json``) too: then they are the newer results and replace it."""
        self.backup, self._put_back = backup, True
        if backup.is_dir():
            if (self.path / "metrics.json").exists():
                _remove_files(backup)
                _move_files(self.path, backup)
            else:
                _remove_files(self.path)
        elif run_files(self.path):
            backup.mkdir()
            _move_files(self.path, backup)
        else:
            self.backup, self._put_back = None, False
            return
        fsync_dir(self.path)

    def _settle_backup(self) -> None:
        """The end of the run: the set-aside files go when this run has written its results
        (``metrics.json``); they are put back in place of this run's files when it leaves
        nothing (neither results nor a checkpoint to continue from); else (this run can be
        resumed) they stay, until a run in this folder writes its results."""
        backup, self.backup = self.backup, None
        if backup is None:
            return
        if (self.path / "metrics.json").exists():
            _remove_files(backup)
            with contextlib.suppress(OSError):
                backup.rmdir()  # only if empty: never a user's files
        elif self._put_back and not (self.path / "checkpoint.pt").exists():
            with contextlib.suppress(OSError):
                _remove_files(self.path)
                _move_files(backup, self.path)
                backup.rmdir()
        fsync_dir(self.path)

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

    # ------------------------------------------------------------------ files
    def file(self, name: str) -> Path:
        """``path / name``, recorded as created by this run (removed by :meth:`abandon`)."""
        p = self.path / name
        if not p.exists() and p not in self.created:
            self.created.append(p)
        return p

    # ------------------------------------------------------------------ end
    def release(self) -> None:
        """The run is over: remove the lock, keep the outputs; settle the files ``overwrite``
        set aside (:meth:`_settle_backup`)."""
        self._settle_backup()
        if self.claimed:
            with contextlib.suppress(OSError):
                (self.path / LOCK_NAME).unlink()
            self.claimed = False

    def abandon(self) -> None:
        """Failure before training: remove what this run created (files, then the folders it
        made, only if they are empty), and put back the files ``overwrite`` set aside."""
        lock = self.path / LOCK_NAME
        for p in reversed(self.created):
            if p == lock:
                self._settle_backup()  # before the lock goes: the folder is still ours
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    for f in run_files(p.parent):
                        if f.parent == p:  # vtk/: its slices, by name
                            f.unlink()
                    p.rmdir()  # only if empty: never a user's files
                elif p.exists() or p.is_symlink():
                    p.unlink()
        self._settle_backup()
        self.created.clear()
        self.claimed = False

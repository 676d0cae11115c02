"""Files written whole or not at all: a temporary file beside the target, fsync, rename.

A reader (or a crash, a full disk, a kill) never sees half a file under the final name: the data
goes to ``.NAME.XXXXXXXX.tmp`` in the target's folder, is flushed to the disk (``fsync``), and
only then renamed over ``NAME`` (``os.replace``, atomic on POSIX within one file system); the
folder is fsynced too, so the rename survives a power cut. On any failure (``ENOSPC``, ``EFBIG``,
an exception in the writer) the temporary file is removed and the error is re-raised as an
:class:`OutputError` naming the file, so no ``*.tmp`` is ever left behind by a failed write. The
cause is the operating system's (``No space left on device``, ``File too large``) even when the
writer replaced it by its own text (torch's zip writer says ``unexpected pos``). Only a process
killed while writing (SIGKILL, a power cut) leaves its temporary file: :func:`temporary_target`
recognises one, so the next run in that folder removes it.

The bottom layer (no package imports): the operators CLI, the run folder and the trainer's
outputs all write through it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path

__all__ = ["OutputError", "atomic_write", "atomic_path", "probe_writable", "fsync_dir",
           "temporary_target", "check_out_file"]

#: ``.NAME.XXXXXXXX.tmp``: the temporary file of ``NAME`` (``tempfile.mkstemp``'s 8 characters).
_TMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


class OutputError(ValueError):
    """An output cannot be written (unwritable folder, full disk, ...): one line naming the
    file, the cause and the fix."""


def _cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _fix(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space (or choose an output folder on another disk)"
    if code == errno.EFBIG:
        return ("the file-size limit (ulimit -f) or the file system's largest file is reached: "
                "raise the limit (or choose an output folder on another disk)")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a writable output folder"
    return "check the output path"


def temporary_target(name: str) -> str | None:
    """The file name whose temporary file ``name`` is (``".metrics.json.ab12cd34.tmp"`` ->
    ``"metrics.json"``), None when ``name`` is not one of :func:`atomic_path`'s."""
    m = _TMP.fullmatch(name)
    return m.group("name") if m else None


class _RecordingFile:
    """A file object that remembers the first ``OSError`` of a write or flush (``ENOSPC``,
    ``EFBIG``): some writers replace it by their own message (torch's zip writer: ``unexpected
    pos``), which says nothing about the disk. Everything else is the file's."""

    def __init__(self, fh):
        self._fh = fh
        self.error: OSError | None = None

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def write(self, data):
        return self._call(self._fh.write, data)

    def flush(self):
        return self._call(self._fh.flush)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk; best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on folders
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "output"):
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    For writers that take a file name (meshio); :func:`atomic_write` for file objects. On any
    exception the temporary file is removed and an :class:`OutputError` is raised (a
    ``KeyboardInterrupt`` is re-raised as is, after the clean-up).
    """
    path = Path(path)
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {_cause(exc)}; {_fix(exc)}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result is as open as any file
    except OSError:
        pass
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, (KeyboardInterrupt, SystemExit, OutputError)):
            raise
        raise OutputError(f"cannot write {what} {path}: {_cause(exc)}; {_fix(exc)}") from None
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", what: str = "output"):
    """Yield an open file (``mode`` ``"wb"`` or ``"w"``) whose content replaces ``path`` only
    when the block completes; see the module docstring.

    >>> with atomic_write("out/metrics.json", "w") as fh:
    ...     json.dump(doc, fh)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path, what) as tmp:
        fh = _RecordingFile(open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})))
        try:
            with fh._fh:
                yield fh  # closed (flushed) here; atomic_path fsyncs the file before the rename
        except Exception as exc:
            if fh.error is not None and not isinstance(exc, OSError):
                raise fh.error from None  # the disk's reason, not the writer's rewording
            raise


def check_out_file(out: str | os.PathLike, suffixes: tuple, overwrite: bool,
                   flag: str = "--out") -> Path:
    """Check, before any work, that the output file ``out`` can be written: not a folder, one of
    ``suffixes`` (``(".npz",)``), not an existing file unless ``overwrite``, in an existing and
    writable folder. One-line :class:`OutputError` naming ``flag`` otherwise."""
    out = Path(out)
    names = " or ".join(suffixes)
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a folder; give a file name, e.g. "
                          f"{out / ('out' + suffixes[0])}")
    if out.suffix.lower() not in suffixes:
        raise OutputError(f"{flag} {out}: give a {names} file name")
    if out.exists() and not overwrite:
        raise OutputError(f"{flag} {out} already exists; choose another name or pass "
                          "--overwrite")
    if not out.parent.is_dir():
        raise OutputError(f"{flag} {out}: the folder {out.parent} does not exist; create it "
                          "first")
    probe_writable(out.parent, f"{flag} folder")
    return out


def probe_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Check that files can be created in ``folder`` (or, when it does not exist yet, that it
    can be created), without leaving anything behind. Returns the folder as a Path.

    A real probe (create and delete a temporary file in the nearest existing folder), not
    ``os.access``: that one says yes to root on a read-only file system.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{what} {folder}: {probe} is a file, not a folder; choose another "
                          "path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dtpinn-probe.", suffix=".tmp", dir=probe)
    except OSError as exc:
        where = "" if probe == folder else f" (its nearest existing folder {probe})"
        raise OutputError(f"{what} {folder}{where} is not writable: {_cause(exc)}; "
                          f"{_fix(exc)}") from None
    os.close(fd)
    os.unlink(tmp)
    return folder

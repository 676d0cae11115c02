"""Memory available to this process, and the check that refuses a job too large for it before it
allocates anything.

A bottom-level module: it imports nothing from the package, so any layer may use it. Typical use::

    from dtpinn_dist.resources import check_memory
    check_memory(n_nodes * 700, f"a cloud of {n_nodes} nodes", fix="use fewer nodes")

The limit is the smallest of: ``MemAvailable`` in ``/proc/meminfo`` (else free physical pages from
``os.sysconf``), the room left under this process's cgroup memory limit (v2 ``memory.max`` minus
``memory.current``, or v1 ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes``), and the
``DTPINN_MEMORY_LIMIT`` environment variable (bytes, or with a suffix: ``"8G"``, ``"500M"``).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["ResourceError", "available_memory", "check_memory", "check_memory_parts",
           "format_bytes", "parse_bytes", "one_line", "regular_file", "npz_declared"]

_SUFFIX = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


class ResourceError(ValueError):
    """A job needs more memory than this machine (or the configured limit) offers."""


def parse_bytes(text: str) -> int:
    """``"8G"`` -> 8 * 1024**3; plain integers are bytes. Raises ValueError naming the format."""
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1:] if s[-1:] in _SUFFIX else ""
    try:
        value = float(s[:len(s) - len(unit)])
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a memory size; write bytes or a number with "
                         "K, M, G or T (e.g. 8G)") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"memory size {text!r} must be a positive finite number")
    return int(value * _SUFFIX[unit])


def format_bytes(n: float) -> str:
    """Human-readable size, 1024-based (``format_bytes(3 * 1024**3) == '3.0 GiB'``)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - loop returns


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    limits = []
    v2_max = _read_int("/sys/fs/cgroup/memory.max")
    if v2_max is not None:
        limits.append(v2_max - (_read_int("/sys/fs/cgroup/memory.current") or 0))
    v1_max = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if v1_max is not None and v1_max < 1 << 60:  # v1 reports "no limit" as a huge number
        limits.append(v1_max - (_read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0))
    return min(limits) if limits else None


def available_memory() -> int | None:
    """Bytes this process may still allocate (see the module docstring), or None when the
    system does not say."""
    candidates = [_meminfo_available(), _cgroup_room()]
    env = os.environ.get("DTPINN_MEMORY_LIMIT")
    if env:
        candidates.append(parse_bytes(env))
    known = [max(int(c), 0) for c in candidates if c is not None]
    return min(known) if known else None


def check_memory(nbytes: float, what: str, fix: str | None = None,
                 limit: int | None = None) -> float:
    """Refuse, before allocating, a job that needs more memory than is available.

    Parameters
    ----------
    nbytes : float
        Estimated peak memory of the job in bytes (``inf`` for an overflowing estimate).
    what : str
        What needs it, for the message (``"make_cloud(n=1000000000)"``).
    fix : str, optional
        How to need less, appended to the message.
    limit : int, optional
        Bytes available; default :func:`available_memory`. When neither is known nothing is
        checked.

    Returns
    -------
    float
        ``nbytes``, so the call can be chained.

    Raises
    ------
    ResourceError
        ``nbytes`` is above the limit (or not a finite number); the message gives the estimate,
        the limit and ``fix``.
    """
    nbytes = float(nbytes)
    avail = available_memory() if limit is None else int(limit)
    tail = f"; {fix}" if fix else ""
    if not nbytes < float("inf"):  # inf or NaN: the estimate overflowed
        have = "" if avail is None else f" (only {format_bytes(avail)} is available)"
        raise ResourceError(f"{what} would need more memory than any machine has{have}{tail}")
    if avail is not None and nbytes > avail:
        raise ResourceError(f"{what} would need about {format_bytes(nbytes)} of memory "
                            f"(estimate), but only {format_bytes(avail)} is available{tail}")
    return nbytes


def check_memory_parts(parts: dict, what: str, fix: str | None = None,
                       limit: int | None = None) -> float:
    """:func:`check_memory` of the sum of named parts (``{"L-BFGS history (--history-size)":
    bytes, ...}``); the message lists the parts, largest first, so it says which setting to
    change. Returns the total."""
    total = float(sum(float(v) for v in parts.values()))  # inf when a part overflowed
    big = sorted(((float(v), k) for k, v in parts.items() if float(v) > 0), reverse=True)
    shown = ", ".join(f"{k} {format_bytes(v) if v < float('inf') else 'overflows'}"
                      for v, k in big)
    return check_memory(total, f"{what} ({shown})" if shown else what, fix, limit)


def npz_declared(zf) -> dict:
    """What each array of an open ``.npz`` (a :class:`zipfile.ZipFile`) declares, read from the
    zip directory and each member's ``.npy`` header only (no array data is decompressed):
    ``{name: (shape, dtype, nbytes)}`` with ``nbytes`` the larger of the member's uncompressed
    size and what its header's shape and dtype need (numpy allocates that before reading, however
    small the file is). Raises ``ValueError`` for a member that is not a readable ``.npy``."""
    import numpy as np

    out = {}
    for info in zf.infolist():
        name = info.filename.removesuffix(".npy")
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, _, dtype = reader(fh)
        count = 1.0
        for k in shape:
            count *= float(k)
        out[name] = (shape, dtype, max(float(info.file_size), count * dtype.itemsize))
    return out


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters; its type's name when
    it has none): what a one-line error quotes of the cause."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def regular_file(path, what: str, fix: str, error: type = ValueError) -> Path:
    """``path`` as a Path after checking that it names an existing regular file, without opening
    it (opening a FIFO blocks forever).

    ``error`` (a ``ValueError`` subclass) is raised with one line naming ``what`` the file is
    (``"point-cloud file"``), the problem (missing, not accessible, a directory, a FIFO) and ``fix``
    (what to give instead, e.g. ``"give a regular .mat or .npz file"``).
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist; check the path") from None
    except OSError as exc:
        raise error(f"cannot access {what} {p} ({exc.strerror or exc}); check the path and its "
                    "permissions") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
                "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "not a regular file")
        raise error(f"{what} {p} is {kind}; {fix}")
    return p

"""Write the small TOML subset a run's configuration needs (the standard library only reads TOML).

Values: str, int, float (``inf``/``nan`` included), bool, lists of those (nested lists too) and
tables (dicts; nested dicts become ``[a.b]`` sub-tables). ``None`` values are left out (TOML has
no null: an absent key means "the default"). Strings are TOML basic strings (JSON's escapes are
a subset of TOML's); keys that are not bare (``[A-Za-z0-9_-]+``) are quoted. The output reads
back with :mod:`tomllib` to the same data (tested).
"""
from __future__ import annotations

import json
import math
import re

__all__ = ["dumps"]

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k) -> str:
    k = str(k)
    return k if _BARE.match(k) else json.dumps(k, ensure_ascii=False)


def _value(v, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        items = [_value(x, where) for x in v if x is not None]
        return "[" + ", ".join(items) + "]"
    if isinstance(v, dict):  # an inline table (inside a list)
        items = [f"{_key(k)} = {_value(x, where)}" for k, x in v.items() if x is not None]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {type(v).__name__} value {v!r} of {where} as TOML")


def _table(d: dict, path: list[str], out: list[str], comments: dict) -> None:
    scalars = [(k, v) for k, v in d.items() if v is not None and not isinstance(v, dict)]
    tables = [(k, v) for k, v in d.items() if isinstance(v, dict)]
    name = ".".join(_key(p) for p in path)
    if path and (scalars or not tables):
        if out:
            out.append("")
        if name in comments:
            out.extend(f"# {line}" for line in comments[name].splitlines())
        out.append(f"[{name}]")
    for k, v in scalars:
        line = f"{_key(k)} = {_value(v, name + '.' + str(k))}"
        c = comments.get(f"{name}.{k}" if name else str(k))
        out.append(line + (f"  # {c}" if c else ""))
    for k, v in tables:
        _table(v, path + [str(k)], out, comments)


def dumps(doc: dict, header: str = "", comments: dict | None = None) -> str:
    """TOML text of ``doc``; ``header`` lines become leading comments; ``comments`` maps a table
    name (``"training"``, ``'bc."*"'``) to a comment above it, or ``"table.key"`` to one after
    that key."""
    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    _table(doc, [], out, comments or {})
    return "\n".join(out) + "\n"

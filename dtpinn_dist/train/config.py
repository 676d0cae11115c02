"""Configuration files for ``python -m dtpinn_dist.train --config FILE.toml`` (docs/config.md).

A TOML file (read with :mod:`tomllib`) holds every choice the flags offer, and what flags cannot
say well: PDE parameters, a condition per boundary part, domain parameters (polygon vertices and
part names). Precedence: built-in defaults < the file < flags given on the command line.

Tables and keys (each key maps to the flag of the same meaning):

* ``[problem]``: ``preset`` (--problem), ``pde``, ``exact``, ``f``, ``u0``, ``time = [t0, t1]``,
  ``nt``; ``[problem.params]``: named constants (``k = 25.0``).
* ``[bc.PART]`` (``[bc."*"]`` for every part not listed): ``type`` = ``"dirichlet"``,
  ``"neumann"``, ``"robin"`` (with ``alpha``, ``beta``, default 1) or ``"general"`` (with
  ``expr``, e.g. ``"dn(u) + u**2"``); ``g`` (default: from the exact solution). A part name
  made of digits is an integer tag. ``--bc`` and ``--g`` act on ``"*"``.
* ``[cloud]``: ``nodes`` (file), ``index`` or ``n`` (which set of a .mat file: position, or
  N = Ni + Nb), ``n_points``, ``test_points``, ``test_nodes`` and ``test_index`` (a file whose
  interior + boundary nodes are the test set), ``domain`` = a name, or a table
  ``[cloud.domain]`` with ``type`` and the domain's parameters (``type = "polygon"`` with
  ``vertices`` and optional ``names``; ``"annulus"`` with ``r_inner``, ``r_outer``, ``center``;
  ...). Relative file paths are relative to the config file's folder.
* ``[discretization]``: ``method``, ``dtype``, ``order``, ``backend``, ``partitioner``,
  ``weighting``, ``device``.
* ``[network]``: ``width``, ``depth``, ``activation`` (``"tanh"``, ``"sin"``), ``inputs``
  (``"box"``, ``"raw"``).
* ``[training]``: ``optimizer``, ``schedule``, ``steps``, ``lr``, ``line_search``,
  ``history_size``, ``max_iter``, ``tolerance_grad``, ``tolerance_change``, ``tol``,
  ``time_budget``, ``eval_every``, ``seed``; ``[training.lm]``: ``step``, ``memory_gb``,
  ``cg_maxiter``.
* ``[run]``: ``out``, ``overwrite``, ``quiet``, ``threads``, ``check_lockstep``,
  ``checkpoint_every``.

Unknown tables and keys, and values of the wrong type or outside a flag's choices, are errors
naming the key and its table (:class:`ConfigFileError`). Nothing in the file runs as code:
expressions go through the project's whitelist parser like the flags' do.
"""
from __future__ import annotations

import difflib
import inspect
import math
import os
import tomllib
from pathlib import Path

from ..resources import regular_file

__all__ = ["ConfigFileError", "SCHEMA", "INT_RANGES", "check_settings", "read_config",
           "apply_config", "given_dests", "build_domain", "resolved_config", "bc_conditions",
           "CONDITION_KEYS", "MAX_CONFIG_BYTES", "EXTRA_DESTS"]

#: A configuration file larger than this is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20

#: table -> key -> argparse dest (a dict: a sub-table). ``bc`` and ``cloud.domain`` are special.
SCHEMA = {
    "problem": {"preset": "problem", "pde": "pde", "exact": "exact", "f": "f", "u0": "u0",
                "time": "time", "nt": "nt", "params": "params"},
    "bc": None,
    "cloud": {"nodes": "nodes", "index": "index", "n": "nodes_n", "n_points": "n_points",
              "domain": "domain", "test_points": "test_points", "test_nodes": "test_nodes",
              "test_index": "test_index"},
    "discretization": {"method": "method", "dtype": "dtype", "order": "order",
                       "backend": "backend", "partitioner": "partitioner",
                       "weighting": "weighting", "device": "device"},
    "network": {"width": "width", "depth": "depth", "activation": "activation",
                "inputs": "inputs"},
    "training": {"optimizer": "optimizer", "schedule": "schedule", "steps": "steps",
                 "lr": "lr", "line_search": "line_search", "history_size": "history_size",
                 "max_iter": "max_iter", "tolerance_grad": "tolerance_grad",
                 "tolerance_change": "tolerance_change", "tol": "tol",
                 "time_budget": "time_budget", "eval_every": "eval_every", "seed": "seed",
                 "lm": {"step": "lm_step", "memory_gb": "lm_memory_gb",
                        "cg_maxiter": "lm_cg_maxiter"}},
    "run": {"out": "out", "overwrite": "overwrite", "quiet": "quiet", "threads": "threads",
            "check_lockstep": "check_lockstep", "checkpoint_every": "checkpoint_every"},
}

#: Settings with no flag (file only) and their defaults; set on the parsed arguments.
EXTRA_DESTS = {"params": None, "nodes_n": None, "test_nodes": None, "test_index": None,
               "activation": "tanh", "domain_params": None, "bc_table": None,
               "config_path": None}

#: Condition type -> allowed keys besides ``type``.
CONDITION_KEYS = {"dirichlet": ("g", "exact"), "neumann": ("g",), "robin": ("alpha", "beta", "g"),
                  "general": ("expr", "g")}

#: Settings whose TOML type is not the flag's: dest -> (kind, description).
_EXTRA_TYPES = {"params": "table", "nodes_n": int, "test_nodes": str, "test_index": int,
                "activation": ("tanh", "sin")}


#: dest -> (smallest, largest) value of every integer setting, flag or file, checked before
#: anything is parsed or allocated (sizes also meet the memory estimate later: these bounds only
#: keep the numbers sane)
INT_RANGES = {
    "nt": (1, 100_000), "index": (-10 ** 6, 10 ** 6), "test_index": (-10 ** 6, 10 ** 6),
    "nodes_n": (1, 10 ** 12), "n_points": (20, 10 ** 12), "test_points": (1, 10 ** 9),
    "order": (1, 20), "steps": (0, 10 ** 9), "history_size": (1, 10 ** 12),
    "max_iter": (1, 10 ** 6), "eval_every": (0, 10 ** 9), "width": (1, 10 ** 7),
    "depth": (1, 1000), "seed": (0, 2 ** 62), "threads": (1, 4096),
    "checkpoint_every": (0, 10 ** 9), "lm_cg_maxiter": (1, 10 ** 7)}

#: Settings that name a text (an expression, a file, a folder): empty text is refused.
NONEMPTY = ("pde", "exact", "f", "g", "u0", "nodes", "test_nodes", "out", "resume", "schedule",
            "config")


class ConfigFileError(ValueError):
    """A configuration file is unusable: one line naming the file, the key and its table."""


def _closest(word: str, options) -> str:
    m = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _regular(path: Path) -> Path:
    regular_file(path, "config file", "give a .toml file", ConfigFileError)
    st = os.stat(path)
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"config file {path} has {st.st_size} bytes, more than "
                              f"{MAX_CONFIG_BYTES}; a configuration is a few hundred bytes")
    return path


def read_config(path) -> dict:
    """Parse a TOML file (no interpretation yet); one-line errors for unreadable files and TOML
    syntax errors (with line and column)."""
    p = _regular(Path(path))
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{p}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per level of [[[...]]] or {a = {b = ...}}
        raise ConfigFileError(f"{p}: arrays or inline tables are nested too deeply to read; a "
                              "configuration nests at most a few levels") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"cannot read config file {p} ({exc})") from None


# ------------------------------------------------------------------------------ checking values
def _action_of(parser, dest):
    for a in parser._actions:  # argparse keeps its actions here (public since Python 2.7)
        if a.dest == dest:
            return a
    return None


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        t, str(t))


def _check_value(parser, dest: str, value, where: str):
    """``value`` converted to what the flag ``dest`` takes, or a ConfigFileError."""
    if dest in _EXTRA_TYPES:
        want = _EXTRA_TYPES[dest]
        if want == "table":
            if not isinstance(value, dict):
                raise ConfigFileError(f"{where} must be a table of named constants, e.g. "
                                      "[problem.params] k = 25.0")
            for k, v in value.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ConfigFileError(f"{where}.{k} = {v!r}: a parameter must be a number")
            return dict(value)
        if isinstance(want, tuple):
            if value not in want:
                raise ConfigFileError(f"{where} = {value!r}: use one of {', '.join(want)}")
            return value
        return _typed(value, want, where)
    action = _action_of(parser, dest)
    if action is None:  # pragma: no cover - SCHEMA and the parser disagree
        raise ConfigFileError(f"{where}: no such setting")
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where} = {value!r}: expected true or false")
        return value
    if action.nargs == 2:
        if not isinstance(value, list) or len(value) != 2:
            raise ConfigFileError(f"{where} = {value!r}: expected a list of two numbers, e.g. "
                                  "[0.0, 1.0]")
        return [_typed(v, action.type or str, where) for v in value]
    value = _typed(value, action.type or str, where)
    if action.choices is not None and value not in action.choices:
        hint = _closest(str(value), action.choices)
        raise ConfigFileError(f"{where} = {value!r}: use one of "
                              f"{', '.join(map(str, action.choices))}{hint}")
    return value


def _typed(value, t, where):
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t in (int, float, str) and (not isinstance(value, t) or isinstance(value, bool)):
        raise ConfigFileError(f"{where} = {value!r}: expected {_type_name(t)}")
    return value


def _condition(part: str, table, where: str) -> dict:
    if not isinstance(table, dict):
        raise ConfigFileError(f"{where} must be a table with type = 'dirichlet' | 'neumann' | "
                              "'robin' | 'general' (and g, alpha, beta, expr)")
    kind = table.get("type")
    if kind not in CONDITION_KEYS:
        raise ConfigFileError(f"{where}: type = {kind!r}; use one of "
                              f"{', '.join(CONDITION_KEYS)}{_closest(str(kind), CONDITION_KEYS)}")
    allowed = CONDITION_KEYS[kind]
    for k, v in table.items():
        if k == "type":
            continue
        if k not in allowed:
            raise ConfigFileError(f"unknown key {k!r} in [{where}] (a {kind} condition takes "
                                  f"{', '.join(allowed)}){_closest(k, allowed)}")
        if k == "exact":
            if not isinstance(v, bool):
                raise ConfigFileError(f"[{where}] exact = {v!r}: expected true or false")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ConfigFileError(f"[{where}] {k} = {v!r}: expected a number or an expression "
                                  "string")
    if kind == "general" and not isinstance(table.get("expr"), str):
        raise ConfigFileError(f"[{where}]: a general condition needs expr, e.g. "
                              "expr = \"dn(u) + u**2\"")
    return dict(table)


def _part_key(name: str):
    return int(name) if name.isdigit() else name


# ------------------------------------------------------------------------------ file -> args
def _flatten(doc: dict, parser, base: Path) -> dict:
    """dest -> value of everything the file sets (checked)."""
    out = {}
    for table, body in doc.items():
        if not isinstance(body, dict):
            home = [t for t, sc in SCHEMA.items() if sc and table in sc]
            raise ConfigFileError(
                f"key {table!r} is outside any table; put it under its table, e.g. "
                f"[{home[0]}] {table} = ..." if home else
                f"unknown key {table!r} outside any table; settings go in the tables "
                f"{', '.join(SCHEMA)}")
        if table not in SCHEMA:
            raise ConfigFileError(f"unknown table [{table}]; the tables are "
                                  f"{', '.join(SCHEMA)}{_closest(table, SCHEMA)}")
        if table == "bc":
            out["bc_table"] = {str(p): _condition(p, c, f'bc.{p}' if p.isidentifier()
                                                  else f'bc."{p}"') for p, c in body.items()}
            continue
        _walk(body, SCHEMA[table], [table], out, parser, base)
    return out


def _walk(body, schema, path, out, parser, base):
    where = ".".join(path)
    for key, value in body.items():
        if key not in schema:
            raise ConfigFileError(f"unknown key {key!r} in [{where}]; its keys are "
                                  f"{', '.join(schema)}{_closest(key, schema)}")
        dest = schema[key]
        if isinstance(dest, dict):
            if not isinstance(value, dict):
                raise ConfigFileError(f"{where}.{key} must be a table ([{where}.{key}])")
            _walk(value, dest, path + [key], out, parser, base)
            continue
        if dest == "domain" and isinstance(value, dict):
            params = dict(value)
            kind = params.pop("type", None)
            if not isinstance(kind, str):
                raise ConfigFileError(f"[{where}.domain] needs type = \"disk\" | \"polygon\" | "
                                      "\"annulus\" | ... ")
            out["domain"] = kind
            out["domain_params"] = _domain_params(kind, params, f"{where}.domain")
            continue
        value = _check_value(parser, dest, value, f"{where}.{key}")
        if dest in ("nodes", "test_nodes"):  # relative to the config file's folder
            value = str(base / Path(value).expanduser())
        out[dest] = value


def apply_config(parser, path) -> dict:
    """Read ``path`` and set its values as the parser's defaults (flags then override them).
    Returns dest -> value of what the file set."""
    p = Path(path)
    doc = read_config(p)
    try:
        values = _flatten(doc, parser, p.resolve().parent)
    except ConfigFileError as exc:
        raise ConfigFileError(f"{p}: {exc}") from None
    values["config_path"] = str(p)
    parser.set_defaults(**values)
    return values


def given_dests(parser, argv) -> set:
    """The dests of the ``--flags`` present in ``argv`` (to let them override the file)."""
    by_option = {o: a.dest for a in parser._actions for o in a.option_strings}
    out = set()
    for tok in argv or []:
        if tok.startswith("--"):
            dest = by_option.get(tok.split("=", 1)[0])
            if dest:
                out.add(dest)
    return out


def _setting_name(dest: str, file_values: dict) -> str:
    """``--flag`` of ``dest``, with its TOML key when the file set it (``--threads ([run]
    threads in FILE)``); a file-only setting by its key (``[cloud] n``)."""
    key = next((f"[{t}] {k}" if k2 is None else f"[{t}.{k}] {k2}"
                for t, schema in SCHEMA.items() for k, d in (schema or {}).items()
                for k2, d2 in (d.items() if isinstance(d, dict) else [(None, d)])
                if d2 == dest), dest)
    if dest in EXTRA_DESTS:
        return key
    flag = "--" + dest.replace("_", "-")
    return f"{flag} ({key} in {file_values.get('config_path')})" if dest in file_values else flag


def check_settings(args, file_values: dict | None = None) -> None:
    """Type and range of every integer setting (:data:`INT_RANGES`) and no empty text
    (:data:`NONEMPTY`), before anything is parsed or allocated: one ``ValueError`` line naming
    the flag (and the file's key) and the range."""
    file_values = file_values or {}
    for dest, (lo, hi) in INT_RANGES.items():
        v = getattr(args, dest, None)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            shown = str(v) if len(str(v)) <= 24 else f"{str(v)[:20]}... ({len(str(v))} digits)"
            raise ValueError(f"{_setting_name(dest, file_values)} {shown} is out of range: give "
                             f"an integer from {lo} to {hi}")
    for dest in NONEMPTY:
        v = getattr(args, dest, None)
        if isinstance(v, str) and not v.strip():
            raise ValueError(f"{_setting_name(dest, file_values)} is empty; give a value or "
                             "leave the setting out for its default")


def reconcile(args, given: set, file_values: dict) -> None:
    """Flags given on the command line win over the file, also where one flag changes the
    meaning of other file settings (the cloud's source, the domain's parameters, ``--bc``)."""
    for k, v in EXTRA_DESTS.items():
        if not hasattr(args, k):
            setattr(args, k, v)
    if "nodes" in given:
        args.n_points = None if "n_points" not in given else args.n_points
    if "n_points" in given and "nodes" not in given:  # the file's cloud is replaced
        args.nodes = None
        args.index = args.index if "index" in given else None
        args.nodes_n = None
    if "index" in given:
        args.nodes_n = None
    if "domain" in given and file_values.get("domain") != args.domain:
        args.domain_params = None
    if "nodes" in given and "domain" not in given and "domain" in file_values:
        args.domain, args.domain_params = "disk", None  # the file's generated cloud is replaced
    if "test_points" in given:
        args.test_nodes, args.test_index = None, None
    if args.bc_table is not None and ({"bc", "g"} & given):
        table = dict(args.bc_table)
        old = table.get("*", {})
        if "bc" in given or not old:
            new = {"type": args.bc}
            if "g" in given:
                new["g"] = args.g
            table["*"] = new
        else:
            table["*"] = {**old, "g": args.g}
        args.bc_table = table
    _check_cloud_sources(args, given, file_values)


def _check_cloud_sources(args, given: set, file_values: dict) -> None:
    """Settings that name two different clouds (or test sets) are refused, naming both: after
    :func:`reconcile` only the ones given at the same level (both flags, or both in the file)
    are left."""
    def name(dest):
        return _setting_name(dest, file_values)

    domain_set = "domain" in given or ("domain" in file_values and "nodes" not in given)
    pairs = []
    if args.nodes is not None:
        if args.n_points is not None:
            pairs.append(("nodes", "n_points", "clouds", "one reads a cloud file, the other "
                          "generates one"))
        if domain_set:
            pairs.append(("nodes", "domain", "clouds", "the file's cloud has its own domain; the "
                          "domain is for a generated cloud"))
    else:
        for dest in ("index", "nodes_n"):
            if getattr(args, dest, None) is not None:
                raise ValueError(f"{name(dest)} picks a node set of a .mat file given with "
                                 "--nodes, but the cloud here is generated; drop "
                                 f"{name(dest)} or give --nodes FILE.mat")
    if getattr(args, "test_nodes", None) is not None and args.test_points is not None:
        pairs.append(("test_nodes", "test_points", "test sets", "one reads the test set from a "
                      "file, the other generates one"))
    if getattr(args, "test_index", None) is not None and getattr(args, "test_nodes", None) is None:
        raise ValueError(f"{name('test_index')} picks a node set of the test_nodes file, but no "
                         "test_nodes file is given; drop it or give test_nodes")
    for a, b, what, why in pairs:
        raise ValueError(f"{name(a)} and {name(b)} name two different {what} ({why}); drop one")


# ------------------------------------------------------------------------------ building
def _domain_class(kind: str):
    from ..geometry import DOMAINS, Polygon

    classes = {**DOMAINS, "polygon": Polygon}
    if kind.lower() not in classes:
        raise ConfigFileError(f"unknown domain {kind!r}; choose one of {', '.join(sorted(classes))}"
                              f"{_closest(kind, classes)}")
    return classes[kind.lower()]


def _domain_params(kind: str, params: dict, where: str) -> dict:
    cls = _domain_class(kind)
    sig = inspect.signature(cls.__init__)
    allowed = [n for n in sig.parameters if n != "self"]
    for k in params:
        if k not in allowed:
            raise ConfigFileError(f"unknown key {k!r} in [{where}] for type {kind!r}; its keys "
                                  f"are type, {', '.join(allowed)}{_closest(k, allowed)}")
    return params


def build_domain(name: str, params: dict | None):
    """The domain object of ``--domain NAME`` and its ``[cloud.domain]`` parameters."""
    cls = _domain_class(name)
    params = _domain_params(name, dict(params or {}), "cloud.domain")
    if name.lower() == "polygon" and "vertices" not in params:
        raise ConfigFileError("domain 'polygon' needs its vertices: give them in the config file, "
                              "[cloud.domain] type = \"polygon\", vertices = [[0, 0], [1, 0], "
                              "[0, 1]]")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigFileError(f"[cloud.domain] {name}: {exc}") from None


def bc_conditions(args) -> dict | object:
    """The ``bc=`` of :class:`~dtpinn_dist.problem.Problem` from the file's ``[bc]`` tables or the
    flags ``--bc`` / ``--g``."""
    from ..problem import Condition, Dirichlet, Neumann, Robin

    def make(c):
        kind, g = c["type"], c.get("g")
        if kind in ("dirichlet", "dirichlet-exact"):
            return Dirichlet(g, exact=kind == "dirichlet-exact" or bool(c.get("exact", False)))
        if kind == "neumann":
            return Neumann(g)
        if kind == "robin":
            return Robin(c.get("alpha", 1.0), c.get("beta", 1.0), g)
        return Condition(c["expr"], g)

    table = getattr(args, "bc_table", None)
    if not table:
        return make({"type": args.bc, "g": args.g})
    return {_part_key(p): make(c) for p, c in table.items()}


# ------------------------------------------------------------------------------ args -> file
def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def resolved_config(args, cloud_desc: dict, problem=None, lrs=None) -> tuple[dict, dict]:
    """The configuration that reproduces this run: ``(doc, comments)`` for
    :func:`~dtpinn_dist.train.toml_writer.dumps`.

    Everything the flags and the file set is written out (defaults included); the point cloud is
    pinned to what this run used (the authors' file by path and N, or the generated domain, N
    and test-set size), so the file means the same on another machine or without
    ``DTPINN_REFERENCE_DIR``. ``out`` and ``overwrite`` are left out: a re-run writes a new
    folder.
    """
    a = vars(args)
    doc = {}
    for table, schema in SCHEMA.items():
        if schema is None:
            continue
        doc[table] = _collect(schema, a)
    doc["run"].pop("out", None)
    doc["run"].pop("overwrite", None)
    # the point cloud as used
    src = cloud_desc.get("kind")
    if src == "authors":  # the authors' file, its set by N (as the default picks it)
        cloud = {"nodes": cloud_desc["path"], "n": int(cloud_desc["N"])}
    elif src == "file":
        cloud = {"nodes": cloud_desc["path"]}
        if cloud_desc.get("index") is not None:
            cloud["index"] = int(cloud_desc["index"])
        if cloud_desc.get("n_select") is not None:
            cloud["n"] = int(cloud_desc["n_select"])
    else:
        cloud = {"n_points": int(cloud_desc["n_requested"]), "domain": args.domain}
        if getattr(args, "domain_params", None):
            cloud["domain"] = {"type": args.domain, **args.domain_params}
    test = cloud_desc.get("test") or {}
    if test.get("kind") == "file":
        cloud["test_nodes"] = test["path"]
        if test.get("index") is not None:
            cloud["test_index"] = int(test["index"])
    elif test.get("kind") == "generated":
        cloud["test_points"] = int(test["n_requested"])
    doc["cloud"] = cloud
    # boundary conditions: always the full table, right after the problem
    bc = dict(args.bc_table) if getattr(args, "bc_table", None) else \
        {"*": {k: v for k, v in (("type", args.bc), ("g", args.g)) if v is not None}}
    if bc.get("*", {}).get("type") == "dirichlet-exact":  # the flag's spelling of exact = true
        bc["*"] = {**bc["*"], "type": "dirichlet", "exact": True}
    doc = {"problem": doc["problem"], "bc": bc, **{k: v for k, v in doc.items()
                                                   if k != "problem"}}
    comments = {}
    if problem is not None:
        d = problem.describe()
        comments["problem"] = (f"declared: {d['pde']} = f"
                               + (f", exact {d['exact']}" if d.get("exact") else "")
                               + (f", time {d['time']}, nt {d['nt']}" if d.get("time") else ""))
    if lrs is not None and args.lr is None:
        comments["training"] = ("learning rate by phase as used (lr unset: the default for "
                                f"each optimizer): {lrs}")
    return _prune(doc), comments


def _collect(schema: dict, a: dict) -> dict:
    out = {}
    for key, dest in schema.items():
        if isinstance(dest, dict):
            out[key] = _collect(dest, a)
        elif dest in ("domain",):
            continue  # written with the cloud
        else:
            v = a.get(dest)
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def _prune(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _prune(v)
            if not v:
                continue
        if v is None:
            continue
        out[k] = v
    return out

"""Safe parsing of user expressions and the manufactured-solution / forcing data of a PDE.

User text is never given to ``eval``/``sympify``: it is first checked against a whitelist by
walking its Python AST (numbers, + - * / ** ^, whitelisted names and function calls only; no
attributes, subscripts, strings, keywords or lambdas), and only then handed to sympy's
``parse_expr`` with explicit, whitelisted ``local_dict``/``global_dict`` and empty builtins.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

import numpy as np
import sympy
from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

__all__ = ["ExpressionError", "parse_safe", "PDEData", "manufactured", "from_forcing",
           "PAPER_SOLUTIONS", "BC_COEFFS", "KINDS"]

KINDS = ("poisson", "nonlinear-poisson", "heat")

#: Paper's manufactured solutions, eqs. (19) and (20).
PAPER_SOLUTIONS = {"poisson": "1 + sin(pi*x)*cos(pi*y)",
                   "nonlinear-poisson": "1 + sin(pi*x)*cos(pi*y)",
                   "heat": "1 + sin(pi*x)*cos(pi*y)*sin(pi*t)"}

#: Boundary operator alpha d/dn + beta for the named conditions.
BC_COEFFS = {"robin": (1.0, 1.0), "dirichlet": (0.0, 1.0), "neumann": (1.0, 0.0)}

_FUNCS = {name: getattr(sympy, name) for name in (
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "atan2", "sinh", "cosh",
    "tanh", "asinh", "acosh", "atanh", "exp", "log", "sqrt", "Abs", "sign", "Min", "Max",
    "erf", "floor", "ceiling")}
_FUNCS["abs"] = sympy.Abs
_CONSTS = {"pi": sympy.pi, "E": sympy.E}
_SYMBOLS = {s: sympy.Symbol(s, real=True) for s in ("x", "y", "z", "t", "nx", "ny", "nz")}
_MAX_LEN = 2000
_MAX_CONST_EXPONENT = 64


class ExpressionError(ValueError):
    """A user expression was rejected (unparsable, unknown symbol, or not allowed)."""


def _check_ast(text: str, allowed_names: set[str]) -> None:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse expression {text!r}: {exc.msg}; use explicit '*' "
                              "for products, e.g. 2*x*sin(pi*y)") from None

    def has_name(node):
        return any(isinstance(n, ast.Name) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.Load, ast.operator, ast.unaryop)):
            if isinstance(node, ast.operator) and not isinstance(
                    node, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.BitXor)):
                raise ExpressionError(f"operator {type(node).__name__} is not allowed in "
                                      f"{text!r}; use + - * / ** only")
            if isinstance(node, ast.unaryop) and not isinstance(node, (ast.UAdd, ast.USub)):
                raise ExpressionError(f"operator {type(node).__name__} is not allowed in {text!r}")
            continue
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, (ast.Pow, ast.BitXor)) and not has_name(node.right):
                # a pure-number exponent must be a small literal (no 9**9**9 blow-ups)
                r = node.right
                if isinstance(r, ast.UnaryOp):
                    r = r.operand
                ok = isinstance(r, ast.Constant) and abs(r.value) <= _MAX_CONST_EXPONENT
                if not has_name(node.left) and not isinstance(node.left, ast.Constant):
                    ok = False  # (9**64)**64**...: nested constant powers
                if not ok:
                    raise ExpressionError(f"numeric exponents must be literals of size <= "
                                          f"{_MAX_CONST_EXPONENT} in {text!r}")
            continue
        if isinstance(node, ast.UnaryOp):
            continue
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ExpressionError(f"only numbers are allowed as literals, got "
                                      f"{node.value!r} in {text!r}")
            continue
        if isinstance(node, ast.Name):
            if node.id not in allowed_names and node.id not in _FUNCS and node.id not in _CONSTS:
                raise ExpressionError(
                    f"unknown symbol {node.id!r} in {text!r}: allowed variables are "
                    f"{sorted(allowed_names)}, constants pi, E, functions {sorted(_FUNCS)}")
            continue
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
                what = node.func.id if isinstance(node.func, ast.Name) else "this call"
                raise ExpressionError(f"function {what!r} is not allowed in {text!r}: use one of "
                                      f"{sorted(_FUNCS)}")
            if node.keywords:
                raise ExpressionError(f"keyword arguments are not allowed in {text!r}")
            continue
        raise ExpressionError(f"{type(node).__name__} is not allowed in an expression "
                              f"({text!r}): use numbers, variables, + - * / ** and functions")


def parse_safe(text: str, variables=("x", "y", "t")) -> sympy.Expr:
    """Parse ``text`` into a sympy expression in the given variables, or raise ExpressionError.

    Parameters
    ----------
    text : str
        E.g. ``"1 + sin(pi*x)*cos(pi*y)"``; ``^`` means power.
    variables : iterable of str
        Names allowed as free symbols (subset of x, y, z, t, nx, ny, nz).
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("empty expression")
    if len(text) > _MAX_LEN:
        raise ExpressionError(f"expression longer than {_MAX_LEN} characters")
    allowed = set(variables)
    bad = allowed - set(_SYMBOLS)
    if bad:
        raise ExpressionError(f"unsupported variable names {sorted(bad)}")
    text = text.strip()
    _check_ast(text, allowed)
    local = {**_FUNCS, **_CONSTS, **{k: _SYMBOLS[k] for k in allowed}}
    glob = {"__builtins__": {}, "Integer": sympy.Integer, "Float": sympy.Float,
            "Rational": sympy.Rational, "Symbol": sympy.Symbol}
    try:
        expr = parse_expr(text, local_dict=local, global_dict=glob,
                          transformations=standard_transformations + (convert_xor,))
    except Exception as exc:  # sympy raises many types; the user needs one clear line
        raise ExpressionError(f"cannot parse expression {text!r}: {exc}") from None
    expr = sympy.sympify(expr) if not isinstance(expr, sympy.Basic) else expr
    if not isinstance(expr, sympy.Expr):
        raise ExpressionError(f"{text!r} is not a scalar expression")
    unknown = {s.name for s in expr.free_symbols} - allowed
    if unknown:
        raise ExpressionError(f"unknown symbols {sorted(unknown)} in {text!r}")
    return expr


def _lambdify(expr, args):
    fn = sympy.lambdify(args, expr, modules="numpy")

    def call(*vals):
        out = np.asarray(fn(*vals), dtype=np.float64)
        return np.broadcast_to(out, np.broadcast(*vals).shape).copy()
    return call


@dataclass
class PDEData:
    """Numeric data of a PDE: forcing ``f``, boundary data ``g``, initial data ``u0``, exact ``u``.

    All callables take coordinate arrays ``X`` of shape (n, d) (and ``t``: scalar or (n,) array
    for heat) and return float64 arrays of shape (n,). ``g`` also takes the unit normals (n, d).

    Attributes
    ----------
    kind : str
        'poisson' (lap u = f), 'nonlinear-poisson' (lap u = exp(u) + f) or 'heat'
        (u_t = lap u + f).
    alpha, beta : float
        Boundary operator alpha du/dn + beta u = g.
    exact : callable or None
        None when only f and g were given (no error metric then).
    exprs : dict
        The sympy expressions as strings (for metrics.json).
    """

    kind: str
    dim: int
    f: object
    g: object
    u0: object = None
    exact: object = None
    alpha: float = 1.0
    beta: float = 1.0
    exprs: dict = field(default_factory=dict)

    @property
    def time_dependent(self) -> bool:
        return self.kind == "heat"

    def _xs(self, X):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"points must have shape (n, {self.dim}), got {X.shape}")
        return [X[:, k] for k in range(self.dim)]

    def _t(self, X, t):
        return np.broadcast_to(np.asarray(0.0 if t is None else t, dtype=np.float64),
                               (np.asarray(X).shape[0],))

    def f_at(self, X, t=None):
        return self._f(*self._xs(X), self._t(X, t))

    def g_at(self, X, normals, t=None):
        N = np.asarray(normals, dtype=np.float64)
        return self._g(*self._xs(X), self._t(X, t), *[N[:, k] for k in range(self.dim)])

    def u0_at(self, X):
        return self._u0(*self._xs(X), self._t(X, 0.0))

    def exact_at(self, X, t=None):
        if self._exact is None:
            return None
        return self._exact(*self._xs(X), self._t(X, t))

    @property
    def has_exact(self) -> bool:
        return self._exact is not None

    def __post_init__(self):
        self._f, self._g, self._u0, self._exact = self.f, self.g, self.u0, self.exact


def _space_syms(dim):
    if dim not in (2, 3):
        raise ValueError(f"dimension {dim} not supported (use 2 or 3)")
    return [_SYMBOLS[s] for s in ("x", "y", "z")[:dim]], [_SYMBOLS[s] for s in ("nx", "ny", "nz")[:dim]]


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"unknown problem {kind!r}: use one of {', '.join(KINDS)}")


def manufactured(kind: str, u: str | None = None, dim: int = 2, alpha: float = 1.0,
                 beta: float = 1.0) -> PDEData:
    """PDE data from an exact solution ``u`` (string; the paper's eq. (19)/(20) by default).

    sympy derives ``f`` (lap u, lap u - exp(u) or u_t - lap u), ``g = alpha n.grad u + beta u``
    and, for heat, ``u0 = u(x, 0)``.
    """
    _check_kind(kind)
    xs, ns = _space_syms(dim)
    t = _SYMBOLS["t"]
    names = [s.name for s in xs] + (["t"] if kind == "heat" else [])
    ue = parse_safe(u if u is not None else PAPER_SOLUTIONS[kind], names)
    lap = sum(sympy.diff(ue, s, 2) for s in xs)
    if kind == "poisson":
        f = lap
    elif kind == "nonlinear-poisson":
        f = lap - sympy.exp(ue)
    else:
        f = sympy.diff(ue, t) - lap
    g = alpha * sum(sympy.diff(ue, s) * n for s, n in zip(xs, ns)) + beta * ue
    args = xs + [t]
    return PDEData(kind=kind, dim=dim, f=_lambdify(f, args), g=_lambdify(g, args + ns),
                   u0=_lambdify(ue.subs(t, 0), args), exact=_lambdify(ue, args),
                   alpha=float(alpha), beta=float(beta),
                   exprs={"u": str(ue), "f": str(f), "g": str(g)})


def from_forcing(kind: str, f: str, g: str, u0: str | None = None, dim: int = 2,
                 alpha: float = 1.0, beta: float = 1.0, exact: str | None = None) -> PDEData:
    """PDE data from ``f`` and ``g`` given directly (``g`` may use the normal nx, ny[, nz]).

    Heat needs ``u0``. Without ``exact`` there is no error metric.
    """
    _check_kind(kind)
    xs, ns = _space_syms(dim)
    t = _SYMBOLS["t"]
    space = [s.name for s in xs]
    tt = ["t"] if kind == "heat" else []
    fe = parse_safe(f, space + tt)
    ge = parse_safe(g, space + tt + [n.name for n in ns])
    ue = parse_safe(exact, space + tt) if exact is not None else None
    if kind == "heat" and u0 is None:
        if ue is None:
            raise ValueError("the heat problem needs an initial condition: give --u0 EXPR "
                             "(or --exact, whose value at t = 0 is used)")
        u0 = str(ue.subs(t, 0))
    u0e = parse_safe(u0, space) if u0 is not None else sympy.Integer(0)
    args = xs + [t]
    exprs = {"f": str(fe), "g": str(ge)}
    if u0 is not None:
        exprs["u0"] = str(u0e)
    if ue is not None:
        exprs["u"] = str(ue)
    return PDEData(kind=kind, dim=dim, f=_lambdify(fe, args), g=_lambdify(ge, args + ns),
                   u0=_lambdify(u0e, args), exact=None if ue is None else _lambdify(ue, args),
                   alpha=float(alpha), beta=float(beta), exprs=exprs)

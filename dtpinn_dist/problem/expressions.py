"""User expressions to sympy, without running any code.

A declaration (``"-div((1+x**2)*grad(u)) + u**3"``, an exact solution, boundary data) is untrusted
text. It is parsed by Python's ``ast`` module and the tree is converted node by node into sympy
objects: numbers, ``+ - * / ** ^``, whitelisted names and whitelisted function calls. Nothing is
handed to ``eval``, ``sympify`` or ``parse_expr``; attributes, subscripts, strings, keywords,
lambdas and comprehensions are refused. The work is bounded before sympy sees the tree: text
length, nesting depth, node count, literal size and constant exponents.

The differential operators of a PDE (``lap``, ``grad``, ``div``, ``dx`` ...) are functions of the
field ``u`` offered only where a declaration may use them (see :mod:`.declaration`); data
expressions (exact solution, f, g, u0) see coordinates, normals and parameters only.
"""
from __future__ import annotations

import ast
import math

import sympy

__all__ = ["ExpressionError", "parse", "parse_safe", "FUNCTIONS", "CONSTANTS", "SYMBOLS",
           "MAX_LENGTH", "MAX_DEPTH", "MAX_NODES"]



class atan2(sympy.Function):  # noqa: N801 - the name a declaration writes (and compile looks up)
    """``atan2(a, b)``, the angle of the point ``(b, a)``, whose derivative keeps its branch cut.

    The angle jumps by 2 pi across ``a = 0`` where ``b < 0``. sympy's own ``atan2`` differentiates
    to the smooth ``b / (a^2 + b^2)`` and forgets the jump; here ``d/da`` also carries the jump
    ``2 pi DiracDelta(a) Heaviside(-b)``, so a forcing or boundary data derived from an exact
    solution with a cut is refused like one with ``sign(x)`` ("cannot be evaluated ... smooth
    enough?"). Values are sympy's ``atan2``.
    """

    nargs = 2

    @classmethod
    def eval(cls, a, b):
        if a.is_number and b.is_number:
            return sympy.atan2(a, b)
        return None

    def fdiff(self, argindex=1):
        a, b = self.args
        r2 = a ** 2 + b ** 2
        if argindex == 1:
            return b / r2 + 2 * sympy.pi * sympy.DiracDelta(a) * sympy.Heaviside(-b)
        return -a / r2


#: Whitelisted elementary functions (name in a declaration -> sympy function).
FUNCTIONS = {name: getattr(sympy, name) for name in (
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh",
    "tanh", "asinh", "acosh", "atanh", "exp", "log", "sqrt", "Abs", "sign", "Min", "Max",
    "erf", "floor", "ceiling")}
FUNCTIONS["abs"] = sympy.Abs
FUNCTIONS["atan2"] = atan2
CONSTANTS = {"pi": sympy.pi, "E": sympy.E}
#: Coordinates, time and the unit outward normal; real symbols shared by every expression.
SYMBOLS = {s: sympy.Symbol(s, real=True) for s in ("x", "y", "z", "t", "nx", "ny", "nz")}

MAX_LENGTH = 2000       # characters
MAX_DEPTH = 24          # nesting depth of the syntax tree (sin(sin(...)) 100 deep is refused)
MAX_NODES = 600         # syntax-tree nodes
MAX_DIGITS = 30         # digits of a numeric literal
MAX_CONST_EXPONENT = 64  # |p| of a purely numeric power a**p


class ExpressionError(ValueError):
    """A user expression was rejected: unparsable, unknown name, not allowed, or too large."""


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
           ast.Pow: lambda a, b: a ** b}


def _depth(node, d=0) -> int:
    kids = list(ast.iter_child_nodes(node))
    return d if not kids else max(_depth(k, d + 1) for k in kids)


def _has_name(node) -> bool:
    return any(isinstance(n, ast.Name) for n in ast.walk(node))


def _number(node, text):
    v = node.value
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ExpressionError(f"only numbers are allowed as literals, got {v!r} in {text!r}")
    if isinstance(v, int):
        if abs(v) >= 10 ** MAX_DIGITS:
            raise ExpressionError(f"numeric literal with more than {MAX_DIGITS} digits in "
                                  f"{text[:60]!r}...; write it as a float, e.g. 1.5e40")
        return sympy.Integer(v)
    if not math.isfinite(v):
        raise ExpressionError(f"literal {v!r} is not finite in {text!r}")
    return sympy.Float(v)


def _convert(node, names: dict, funcs: dict, text: str):
    """Python AST -> sympy, bottom up; every node kind not listed is refused."""
    conv = lambda n: _convert(n, names, funcs, text)  # noqa: E731
    if isinstance(node, ast.Expression):
        return conv(node.body)
    if isinstance(node, ast.Constant):
        return _number(node, text)
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        if node.id in funcs:
            raise ExpressionError(f"{node.id!r} is a function: call it, e.g. {node.id}(x), in "
                                  f"{text!r}")
        raise ExpressionError(f"unknown name {node.id!r} in {text!r}: allowed are "
                              f"{', '.join(sorted(names))} and the functions "
                              f"{', '.join(sorted(funcs))}")
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return -conv(node.operand)
        if isinstance(node.op, ast.UAdd):
            return conv(node.operand)
        raise ExpressionError(f"operator {type(node.op).__name__} is not allowed in {text!r}; "
                              "use + - * / ** only")
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed in "
                                  f"{text!r}; use + - * / ** only")
        if isinstance(node.op, ast.Pow) and not _has_name(node.right):
            # a purely numeric exponent must be a small literal: no 9**9**9 blow-ups
            r = node.right.operand if isinstance(node.right, ast.UnaryOp) else node.right
            ok = isinstance(r, ast.Constant) and isinstance(r.value, (int, float)) \
                and abs(r.value) <= MAX_CONST_EXPONENT
            if not _has_name(node.left) and not isinstance(node.left, ast.Constant):
                ok = False  # (9**64)**64: nested constant powers
            if not ok:
                raise ExpressionError(f"numeric exponents must be literals of size <= "
                                      f"{MAX_CONST_EXPONENT} in {text!r}")
        return op(conv(node.left), conv(node.right))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise ExpressionError(f"this call is not allowed in {text!r}: only the whitelisted "
                                  "functions may be called, by name")
        fn = funcs.get(node.func.id)
        if fn is None:
            raise ExpressionError(f"function {node.func.id!r} is not allowed in {text!r}: use "
                                  f"one of {', '.join(sorted(funcs))}")
        if node.keywords:
            raise ExpressionError(f"keyword arguments are not allowed in {text!r}")
        args = [conv(a) for a in node.args]
        try:
            return fn(*args)
        except ExpressionError:
            raise
        except (TypeError, ValueError) as exc:
            raise ExpressionError(f"{node.func.id}(...) in {text!r}: {exc}") from None
    raise ExpressionError(f"{type(node).__name__} is not allowed in an expression ({text!r}): "
                          "use numbers, names, + - * / ** and function calls")


def parse(text, names: dict, funcs: dict | None = None, what: str = "expression"):
    """Parse ``text`` into a sympy object using only ``names`` and ``funcs``.

    Parameters
    ----------
    text : str or number
        The user's expression (``^`` means power). A Python number is accepted as is.
    names : dict
        Name -> sympy object (symbols, constants, the field ``u``).
    funcs : dict, optional
        Name -> callable applied to the converted arguments (default :data:`FUNCTIONS`).
    what : str
        What the expression is, for error messages ("exact solution", "PDE", ...).

    Raises
    ------
    ExpressionError
        With one line naming what is wrong and how to write it instead.
    """
    funcs = FUNCTIONS if funcs is None else funcs
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text):
            raise ExpressionError(f"the {what} {text!r} is not finite")
        return sympy.Integer(text) if isinstance(text, int) else sympy.Float(text)
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"the {what} is empty; give an expression such as "
                              "'1 + sin(pi*x)*cos(pi*y)'")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the {what} is longer than {MAX_LENGTH} characters")
    # '^' means power, with the precedence of '**' (as a token: Python's ^ binds looser than +)
    text = text.strip().replace("^", "**")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse the {what} {text!r}: {exc.msg}; use explicit '*' "
                              "for products, e.g. 2*x*sin(pi*y)") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise ExpressionError(f"the {what} has {n_nodes} syntax nodes, more than {MAX_NODES}; "
                              "simplify it")
    if _depth(tree) > MAX_DEPTH:
        raise ExpressionError(f"the {what} is nested more than {MAX_DEPTH} levels deep; "
                              "simplify it")
    try:
        out = _convert(tree, names, funcs, text)
    except RecursionError:  # pragma: no cover - bounded by MAX_DEPTH
        raise ExpressionError(f"the {what} is nested too deeply") from None
    if isinstance(out, sympy.Basic) and out.has(sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
        raise ExpressionError(f"the {what} {text!r} is not finite (division by zero?)")
    return out


def parse_safe(text, variables=("x", "y", "t"), params: dict | None = None,
               what: str = "expression") -> sympy.Expr:
    """A scalar data expression in the given variables (and named parameters) as sympy.

    Parameters
    ----------
    text : str or number
        E.g. ``"1 + sin(pi*x)*cos(pi*y)"``.
    variables : iterable of str
        Allowed free symbols, a subset of x, y, z, t, nx, ny, nz.
    params : dict, optional
        Named constants (name -> number) the expression may use.
    """
    bad = set(variables) - set(SYMBOLS)
    if bad:
        raise ExpressionError(f"unsupported variable names {sorted(bad)}")
    names = {**CONSTANTS, **{v: SYMBOLS[v] for v in variables}}
    for k, v in (params or {}).items():
        names[k] = sympy.Float(v) if isinstance(v, float) else sympy.sympify(v)
    expr = parse(text, names, what=what)
    if not isinstance(expr, sympy.Expr) or isinstance(expr, sympy.MatrixBase):
        raise ExpressionError(f"the {what} {text!r} is not a scalar expression")
    return expr

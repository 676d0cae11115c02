"""Sympy expressions to numeric callables for numpy (data) and torch (residuals), without ``exec``.

``sympy.lambdify`` generates Python source and runs it; here an expression tree is turned once into
nested closures over a small table of array functions, one table for numpy and one for torch. The
same compiled form evaluates the forcing on numpy arrays (fp64, once) and the pointwise part of a
residual on torch tensors (in the training graph). Only the whitelisted functions of
:mod:`.expressions` exist in the tables: anything else (a ``DiracDelta`` from differentiating
``sign``, an unevaluated ``Derivative``) is refused with a message.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import sympy

__all__ = ["compile_expr", "Compiled", "NUMPY", "TORCH"]


def _erf_numpy(a):
    from scipy.special import erf
    return erf(a)


def _fold(fn):
    return lambda *a: functools.reduce(fn, a)


NUMPY = {
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos,
    "atan": np.arctan, "atan2": np.arctan2, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh, "exp": np.exp, "log": np.log,
    "sqrt": np.sqrt, "Abs": np.abs, "sign": np.sign, "floor": np.floor, "ceiling": np.ceil, "erf": _erf_numpy,
    "Min": _fold(np.minimum), "Max": _fold(np.maximum),
    "cot": lambda a: 1.0 / np.tan(a), "sec": lambda a: 1.0 / np.cos(a),
    "csc": lambda a: 1.0 / np.sin(a),
}


def _torch_table():
    import torch

    def as_t(*a):
        ref = next((v for v in a if isinstance(v, torch.Tensor)), None)
        return [v if isinstance(v, torch.Tensor) else torch.as_tensor(
            v, dtype=None if ref is None else ref.dtype,
            device=None if ref is None else ref.device) for v in a]

    return {
        "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "asin": torch.asin,
        "acos": torch.acos, "atan": torch.atan, "atan2": lambda a, b: torch.atan2(*as_t(a, b)),
        "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh, "asinh": torch.asinh,
        "acosh": torch.acosh, "atanh": torch.atanh, "exp": torch.exp, "log": torch.log,
        "sqrt": torch.sqrt, "Abs": torch.abs, "sign": torch.sign, "floor": torch.floor, "ceiling": torch.ceil,
        "erf": torch.special.erf,
        "Min": lambda *a: functools.reduce(torch.minimum, as_t(*a)),
        "Max": lambda *a: functools.reduce(torch.maximum, as_t(*a)),
        "cot": lambda a: 1.0 / torch.tan(a), "sec": lambda a: 1.0 / torch.cos(a),
        "csc": lambda a: 1.0 / torch.sin(a),
    }


class _Lazy(dict):
    """The torch table, built on first use (importing this module does not import torch)."""

    def __missing__(self, key):
        if not self.get("_ready"):
            self.update(_torch_table())
            self["_ready"] = True
            return self[key]
        raise KeyError(key)


TORCH = _Lazy()


def _node(e, names: tuple):
    """Closure ``f(env, lib)`` evaluating the sympy tree ``e``."""
    if e.is_Number or e in (sympy.pi, sympy.E):
        v = float(e)
        if not math.isfinite(v):
            raise ValueError(f"the expression contains the non-finite constant {e}")
        return lambda env, lib: v
    if isinstance(e, sympy.Symbol):
        name = e.name
        if name not in names:
            raise ValueError(f"symbol {name!r} has no value here (known: {', '.join(names)})")
        return lambda env, lib: env[name]
    if isinstance(e, sympy.Add):
        parts = [_node(a, names) for a in e.args]
        return lambda env, lib: functools.reduce(lambda s, f: s + f(env, lib), parts[1:],
                                                 parts[0](env, lib))
    if isinstance(e, sympy.Mul):
        parts = [_node(a, names) for a in e.args]
        return lambda env, lib: functools.reduce(lambda s, f: s * f(env, lib), parts[1:],
                                                 parts[0](env, lib))
    if isinstance(e, sympy.Pow):
        base, ex = _node(e.base, names), e.exp
        if ex == sympy.Rational(1, 2):
            return lambda env, lib: lib["sqrt"](base(env, lib))
        if ex == -1:
            return lambda env, lib: 1.0 / base(env, lib)
        if ex.is_Integer:
            k = int(ex)
            return lambda env, lib: base(env, lib) ** k
        expo = _node(ex, names)
        return lambda env, lib: base(env, lib) ** expo(env, lib)
    if isinstance(e, sympy.Function):
        name = type(e).__name__
        if name not in NUMPY:
            raise ValueError(f"the function {name} cannot be evaluated (it appears after "
                             "differentiation: is the expression smooth enough?)")
        args = [_node(a, names) for a in e.args]
        return lambda env, lib: lib[name](*[a(env, lib) for a in args])
    raise ValueError(f"cannot evaluate {type(e).__name__} ({e}); a smooth expression of the "
                     "allowed functions is needed")


class Compiled:
    """A sympy expression compiled for repeated numeric evaluation.

    Parameters
    ----------
    expr : sympy.Expr
    names : iterable of str
        The symbols that may be looked up in ``env`` at call time.

    Calling ``c(env, lib="numpy")`` evaluates with ``env`` mapping symbol names to arrays
    (numpy) or tensors (torch, ``lib="torch"``); a constant expression returns a Python float.
    """

    def __init__(self, expr, names, what: str | None = None):
        if isinstance(expr, (int, float)):
            expr = sympy.Integer(expr) if isinstance(expr, int) else sympy.Float(expr)
        if not isinstance(expr, sympy.Basic):  # strings go through expressions.parse, never here
            raise TypeError(f"compile_expr takes a parsed sympy expression, not {type(expr).__name__}")
        self.expr = expr
        self.names = tuple(sorted(names))
        self.free = tuple(sorted(s.name for s in self.expr.free_symbols))
        self.is_constant = not self.free
        try:
            self._f = _node(self.expr, self.names)
        except ValueError as exc:
            if what is None:
                raise
            raise ValueError(f"{what}: {exc}") from None

    def __call__(self, env: dict, lib: str = "numpy"):
        if lib == "numpy":
            # non-finite values are the caller's to report, with the point (discretize checks
            # f, g and the exact solution at every node): no RuntimeWarning on the way
            with np.errstate(all="ignore"):
                return self._f(env, NUMPY)
        return self._f(env, TORCH)

    def __repr__(self):
        return f"Compiled({self.expr})"


def compile_expr(expr, names, what: str | None = None) -> Compiled:
    """:class:`Compiled` of ``expr``; ``ValueError`` naming the part that cannot be evaluated
    (prefixed by ``what`` the expression is)."""
    return Compiled(expr, names, what)


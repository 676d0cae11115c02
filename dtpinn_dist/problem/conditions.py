"""Boundary conditions of one boundary part: what a user writes next to the PDE.

``Dirichlet(g)``: ``u = g``; ``Neumann(g)``: ``dn(u) = g``; ``Robin(alpha, beta, g)``:
``alpha dn(u) + beta u = g`` (paper eq. (2); the paper's experiments use alpha = beta = 1);
``Condition("dn(u) + u**2", g)``: any expression in ``u``, ``dn(u)`` and first derivatives.
``alpha``, ``beta`` and ``g`` are numbers or expressions of the coordinates (and ``t``; ``g`` may
use the normal ``nx, ny, nz``). ``g=None`` takes ``g`` from the problem's exact solution.
A condition is plain data; :mod:`.forms` analyses it for the cloud's dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Condition", "Dirichlet", "Neumann", "Robin", "as_condition"]


def _text(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise TypeError(f"{what} must be a number or an expression string, got {v!r}")
    return repr(float(v)) if not isinstance(v, str) else v


@dataclass(frozen=True)
class Condition:
    """``G(x, t, n, u, dn(u), ...) = g`` on one boundary part.

    Parameters
    ----------
    expr : str
        The operator side, e.g. ``"dn(u) + u**2"``.
    g : str, number or None
        The data side; None: from the exact solution.
    kind : str
        A label for outputs ("dirichlet", "neumann", "robin", "general").
    exact : bool
        Dirichlet only: impose ``u = g`` exactly by the network's form (:mod:`.lift`) instead of
        a residual row.
    """

    expr: str
    g: object = None
    kind: str = "general"
    exact: bool = False

    def __post_init__(self):
        _text(self.expr, "a condition's expression")
        if self.g is not None:
            _text(self.g, "g")
        if not isinstance(self.exact, bool):
            raise TypeError(f"exact must be True or False, got {self.exact!r}")
        if self.exact and self.kind != "dirichlet":
            raise ValueError("only a Dirichlet condition can be imposed exactly "
                             "(dt.Dirichlet(g, exact=True))")

    def describe(self) -> dict:
        out = {"kind": self.kind, "expr": self.expr, "g": None if self.g is None else str(self.g)}
        if self.exact:
            out["exact"] = True
        return out


def Dirichlet(g=None, exact: bool = False) -> Condition:
    """``u = g``; with ``exact=True`` imposed by the network's form ``u = G + phi N`` (``G = g``
    and ``phi = 0`` on the part; DT-PINNs, steady problems: :mod:`.lift`) instead of by the
    loss."""
    return Condition("u", g, "dirichlet", exact)


def Neumann(g=None) -> Condition:
    """``dn(u) = g`` (outward normal derivative)."""
    return Condition("dn(u)", g, "neumann")


def Robin(alpha=1.0, beta=1.0, g=None) -> Condition:
    """``alpha dn(u) + beta u = g`` (paper eq. (2); alpha, beta numbers or expressions of x)."""
    a, b = _text(alpha, "alpha"), _text(beta, "beta")
    return Condition(f"({a})*dn(u) + ({b})*u", g, "robin")


def as_condition(c) -> Condition:
    """A :class:`Condition`, or one made from a string (a general condition)."""
    if isinstance(c, Condition):
        return c
    if isinstance(c, str):
        return Condition(c)
    raise TypeError(f"a boundary condition must be Dirichlet(...), Neumann(...), Robin(...), "
                    f"Condition(...) or an expression string, got {c!r}")

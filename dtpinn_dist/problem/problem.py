"""The declared problem: a PDE, a condition on every boundary part, the data, the time interval.

>>> p = Problem("-div((1+x**2)*grad(u)) + 0.5*dx(u) + u**3",
...             bc={"left": Neumann(), "*": Dirichlet()},
...             exact="sin(pi*x)*cos(pi*y)")

The PDE is the operator side ``F(u)`` of ``F(u) = f`` (paper eqs. (1), (3), (5) are ``lap(u) -
exp(u)``, ``lap(u)``, ``dt(u) - lap(u)``). With an exact solution, sympy derives ``f = F(exact)``,
each part's ``g = G(exact)`` and the initial value ``u0 = exact(t0)``; each may instead be given.
Nothing here depends on a point cloud: the analysis for a dimension (:meth:`Problem.analyse`) is
what :func:`~dtpinn_dist.problem.discretize.discretize` turns into operators and data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import sympy

from .conditions import as_condition
from .expressions import SYMBOLS, ExpressionError, parse_safe
from .forms import AXES, MAX_ORDER, Form, param_value, parse_form

__all__ = ["Problem", "Analysis", "DEFAULT_PART"]

#: Key of a ``bc`` dict that applies to every part not named otherwise.
DEFAULT_PART = "*"


@dataclass
class Analysis:
    """A problem analysed for one spatial dimension (sympy expressions, no numbers yet).

    Attributes
    ----------
    pde : Form
    bcs : dict
        Part key (as the user gave it: a name, an int, or ``"*"``) -> (Condition, Form).
    f : sympy.Expr
        Forcing in the coordinates (and ``t``).
    g : dict
        Part key -> boundary data in the coordinates, ``t`` and the normals.
    u0 : sympy.Expr or None
        Initial value (time-dependent problems).
    exact : sympy.Expr or None
    """

    dim: int
    pde: Form
    bcs: dict
    f: sympy.Expr
    g: dict
    u0: sympy.Expr | None
    exact: sympy.Expr | None
    params: dict = field(default_factory=dict)


def _with_exact(form: Form, exact: sympy.Expr, dim: int) -> sympy.Expr:
    """``form`` evaluated on the exact solution: every field symbol by its derivative of it."""
    xs = [SYMBOLS[a] for a in AXES[:dim]]
    rep = {}
    for s in form.expr.free_symbols:
        n = s.name
        if n == "u":
            rep[s] = exact
        elif n == "u_t":
            rep[s] = sympy.diff(exact, SYMBOLS["t"])
        elif n.startswith("u_"):
            args = [xs[AXES.index(c)] for c in n[2:]]
            rep[s] = sympy.diff(exact, *args)
    return form.expr.xreplace(rep)


class Problem:
    """A PDE ``F(u) = f`` with conditions on the boundary parts (see the module docstring).

    Parameters
    ----------
    pde : str
        The operator ``F`` in ``u``: ``lap(u)``, ``grad``, ``div``, ``dot``, ``dx`` ``dy`` ``dz``,
        ``dxx`` ``dxy`` ..., ``dt(u)``, whitelisted functions of u and its derivatives, and
        coefficients in the coordinates (and ``t``).
    bc : Condition, str or dict
        One condition for every boundary part, or ``{part: condition}`` with part names (or
        integer tags) of the cloud; the key ``"*"`` covers the parts not listed.
    exact : str, optional
        Exact solution: ``f``, ``g`` and ``u0`` not given are derived from it, and the relative
        L2 error (paper eq. (18)) is reported against it.
    f : str, optional
        Forcing (default ``F(exact)``).
    initial : str, optional
        ``u0(x)`` of a time-dependent problem (default ``exact`` at ``t0``).
    time : (t0, t1), optional
        Time interval: makes the problem time-dependent (``dt(u)``).
    nt : int
        Time steps: the network is trained on ``nt + 1`` slices ``t0 + k (t1 - t0)/nt``
        (paper section 3, eq. (13)-(16)).
    params : dict, optional
        Named constants usable in every expression, e.g. ``{"k": 25.0}``.
    name : str, optional
        A label for outputs.
    """

    def __init__(self, pde: str, bc=None, *, exact=None, f=None, initial=None, time=None,
                 nt: int = 24, params: dict | None = None, name: str | None = None):
        if bc is None:
            raise ExpressionError("give the boundary conditions: bc=Dirichlet(), Robin(1, 1), "
                                  "... or a dict {part: condition} (key '*' for all others)")
        self.pde = pde
        if isinstance(bc, dict):
            if not bc:
                raise ExpressionError("bc is an empty dict: give a condition for every part")
            self.bc = {k: as_condition(v) for k, v in bc.items()}
        else:
            self.bc = {DEFAULT_PART: as_condition(bc)}
        self.exact, self.f, self.initial = exact, f, initial
        self.params = dict(params or {})
        for k, v in self.params.items():
            param_value(k, v)
        if time is not None:
            try:
                t0, t1 = (float(v) for v in time)
            except (TypeError, ValueError):
                raise ExpressionError(f"time must be a pair (t0, t1), got {time!r}") from None
            if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
                raise ExpressionError(f"time interval ({t0}, {t1}) must be finite with t1 > t0")
            time = (t0, t1)
        self.time = time
        if isinstance(nt, bool) or not isinstance(nt, int) or nt < 1:
            raise ExpressionError(f"nt (time steps) must be an integer >= 1, got {nt!r}")
        self.nt = int(nt)
        self.name = name
        self._cache = {}
        # Syntax and names are checked now (in 3D, the superset); what depends on the dimension
        # (dz in 2D) when the problem meets a cloud.
        #: highest spatial derivative order of the PDE (4 for lap(lap(u)))
        self.order = self.analyse(3, check_only=True).pde.theta

    def check_well_posed(self) -> None:
        """Refuse, in one line, a problem that can be declared and discretised (its operators
        exist: ``lap(lap(u))`` gives the RBF-FD ``bilap``) but not posed for solving or training:
        a fourth-order PDE needs two conditions on each boundary part, and a part takes one
        condition here. Called by the trainer, the direct solve and the command line."""
        if self.order > MAX_ORDER:
            raise ExpressionError(
                f"the PDE {self.pde!r} is of order {self.order} (lap(lap(u))): a fourth-order "
                "problem needs two conditions on each boundary part (e.g. u and dn(u)), and a "
                "boundary part takes one condition here; declare a second-order PDE")

    @property
    def time_dependent(self) -> bool:
        return self.time is not None

    @property
    def times(self):
        """The ``nt + 1`` time slices (time-dependent problems), else ``[0.0]``."""
        import numpy as np

        if self.time is None:
            return np.zeros(1)
        return np.linspace(self.time[0], self.time[1], self.nt + 1)

    def analyse(self, dim: int, check_only: bool = False) -> Analysis:
        """The :class:`Analysis` for spatial dimension ``dim`` (cached)."""
        if dim in self._cache:
            return self._cache[dim]
        time = self.time_dependent
        pde = parse_form(self.pde, dim, time=time, params=self.params, what="PDE")
        if time and not pde.time_order:
            raise ExpressionError(f"time={self.time} is given but the PDE {self.pde!r} has no "
                                  "dt(u); drop time= for a steady problem")
        space = list(AXES[:dim])
        tt = ["t"] if time else []
        normals = ["n" + a for a in AXES[:dim]]
        exact = None
        if self.exact is not None:
            exact = parse_safe(self.exact, space + tt, self.params, what="exact solution")
        if self.f is not None:
            f = parse_safe(self.f, space + tt, self.params, what="forcing f")
        elif exact is not None:
            f = _with_exact(pde, exact, dim)
        else:
            raise ExpressionError("give the forcing f= or an exact solution exact= (from which "
                                  "f is derived)")
        bcs, g = {}, {}
        for key, cond in self.bc.items():
            form = parse_form(cond.expr, dim, time=time, boundary=True, params=self.params,
                              what=f"boundary condition {cond.expr!r} (part {key!r})")
            if form.time_order:
                raise ExpressionError(f"boundary condition {cond.expr!r} uses dt(u); conditions "
                                      "may use u, dn(u) and spatial first derivatives")
            bcs[key] = (cond, form)
            if cond.g is not None:
                g[key] = parse_safe(cond.g, space + tt + normals, self.params,
                                    what=f"boundary data g of part {key!r}")
            elif exact is not None:
                g[key] = _with_exact(form, exact, dim)
            else:
                raise ExpressionError(f"boundary part {key!r} has no data g and the problem "
                                      "has no exact solution: give g in its condition, e.g. "
                                      "Dirichlet(g='0')")
        u0 = None
        if time:
            if self.initial is not None:
                u0 = parse_safe(self.initial, space, self.params, what="initial value")
            elif exact is not None:
                u0 = exact.xreplace({SYMBOLS["t"]: sympy.Float(self.time[0])})
            else:
                raise ExpressionError("a time-dependent problem needs an initial value: give "
                                      "initial= (u0 of x) or exact=")
        elif self.initial is not None:
            raise ExpressionError("an initial value (initial=) is for time-dependent problems: "
                                  "give time=(t0, t1), or drop it")
        out = Analysis(dim=dim, pde=pde, bcs=bcs, f=f, g=g, u0=u0, exact=exact,
                       params=self.params)
        if not check_only:
            self._cache[dim] = out
        return out

    def describe(self) -> dict:
        """The declaration as plain data (for metrics.json and config files)."""
        return {"pde": self.pde, "bc": {str(k): c.describe() for k, c in self.bc.items()},
                "exact": self.exact, "f": self.f, "initial": self.initial,
                "time": None if self.time is None else list(self.time),
                "nt": self.nt if self.time is not None else None, "params": self.params,
                "name": self.name}

    def __repr__(self):
        return f"Problem({self.pde!r}, bc={self.bc!r}, exact={self.exact!r})"

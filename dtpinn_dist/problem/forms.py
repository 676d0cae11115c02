"""A declared pointwise expression in the field and its derivatives, analysed once.

A PDE ``F(x, t, u, D1 u, D2 u, ...) = f`` or a boundary condition ``G(x, t, n, u, dn u, ...) = g``
is parsed (:mod:`.expressions`) with the field ``u`` as a sympy function of the coordinates, so
sympy applies the product and chain rules: ``div((1+x**2)*grad(u))`` becomes
``(1+x**2)*(u_xx + u_yy) + 2*x*u_x``. Every partial derivative is then replaced by a plain symbol
(``u``, ``u_x``, ``u_xy``, ``u_t``) and the expression is split into

* a **linear part** ``sum_k c_k(x) D_k u``: derivative terms whose coefficients depend on the
  coordinates (and normals) only. It becomes ONE sparse RBF-FD matrix (paper eq. (8)-(11) with
  per-centre coefficients), applied by one SpMV; ``c (u_xx + u_yy)`` is recognised as ``c lap u``
  and ``c (u_xxxx + 2 u_xxyy + u_yyyy)`` as ``c lap lap u``, the paper's operators;
* a **pointwise part** ``R(x, t, u, u_t, {D_j u})``: everything else, evaluated node by node on
  the network values and on the derivative values of the operators ``D_j`` it needs.

From the same analysis come the symbols the pointwise part reads and its partial derivatives
``dR/du``, ``dR/d(D_j u)`` (the declared Jacobian structure of Gauss-Newton / Levenberg-Marquardt:
``J = (A + sum_j diag(dR/d(D_j u)) D_j + diag(dR/du) P) Ju``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from .expressions import CONSTANTS, FUNCTIONS, SYMBOLS, ExpressionError, parse

__all__ = ["Form", "parse_form", "AXES", "deriv_name", "term_key", "coordinate_names",
           "param_value"]

AXES = ("x", "y", "z")
#: Highest spatial derivative order a declaration may use outside ``lap(lap(u))``.
MAX_ORDER = 2


def deriv_name(alpha) -> str:
    """``(2, 0) -> "u_xx"``, ``(1, 1) -> "u_xy"``, ``(0, 0) -> "u"``."""
    s = "".join(AXES[k] * a for k, a in enumerate(alpha))
    return "u_" + s if s else "u"


def term_key(alpha):
    """The RBF-FD operator term of a spatial multi-index: ``"id"``, ``("d", k)`` or
    ``("dd", (a, b))`` (see :class:`dtpinn_dist.operators.rbffd.Operator`)."""
    axes = [k for k, a in enumerate(alpha) for _ in range(a)]
    if not axes:
        return "id"
    if len(axes) == 1:
        return ("d", axes[0])
    if len(axes) == 2:
        return ("dd", (axes[0], axes[1]))
    raise ValueError(f"no single RBF-FD term for derivative {deriv_name(alpha)}")


def coordinate_names(dim: int, time: bool, boundary: bool = False) -> list[str]:
    names = list(AXES[:dim]) + (["t"] if time else [])
    if boundary:
        names += ["n" + a for a in AXES[:dim]]
    return names


def param_value(name, v):
    """A named constant of a declaration as sympy (numbers only: nothing is parsed or run)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ExpressionError(f"parameter {name!r} must be a number, got {type(v).__name__}")
    return sympy.Integer(v) if isinstance(v, int) else sympy.Float(v)


@dataclass
class Form:
    """The analysis of one declared expression (see the module docstring).

    Attributes
    ----------
    text : str
        What the user wrote.
    expr : sympy.Expr
        The expression in plain symbols (coordinates, normals, ``u``, ``u_t``, ``u_x`` ...).
    linear : list of (key, coefficient)
        Terms of the linear part; ``key`` is an RBF-FD term (``"lap"``, ``"bilap"``, ``"id"``,
        ``("d", k)``, ``("dd", (a, b))``), ``coefficient`` a sympy expression in the
        coordinates (and normals).
    rest : sympy.Expr
        The pointwise part (0 when the expression is linear).
    rest_fields : tuple of str
        Field symbols the pointwise part reads (``u``, ``u_t``, ``u_x`` ...).
    derivs : dict
        Symbol name -> spatial multi-index, for every derivative symbol in ``rest``.
    theta : int
        Highest derivative order (the RBF-FD operator order of the linear part).
    time_order : int
        0 or 1: whether ``u_t`` appears.
    """

    text: str
    expr: sympy.Expr
    linear: list
    rest: sympy.Expr
    rest_fields: tuple
    derivs: dict = field(default_factory=dict)
    theta: int = 0
    time_order: int = 0

    @property
    def is_linear(self) -> bool:
        return self.rest == 0

    def rest_partials(self) -> dict:
        """``{field symbol: dR/d(field)}`` for every field the pointwise part reads."""
        syms = {s.name: s for s in self.rest.free_symbols}
        return {n: sympy.diff(self.rest, syms[n]) for n in self.rest_fields}


def _namespace(dim: int, time: bool, boundary: bool, params: dict, what: str):
    """Names and operator functions a declaration may use, and the field ``u``."""
    xs = [SYMBOLS[a] for a in AXES[:dim]]
    t = SYMBOLS["t"]
    u = sympy.Function("u", real=True)(*(xs + ([t] if time else [])))
    names = {**CONSTANTS, **{a.name: a for a in xs}, "u": u}
    if time:
        names["t"] = t
    if boundary:
        names.update({f"n{a}": SYMBOLS[f"n{a}"] for a in AXES[:dim]})
    for k, v in params.items():
        if k in names or k in FUNCTIONS:
            raise ExpressionError(f"parameter name {k!r} is taken by a built-in name; rename it")
        names[k] = param_value(k, v)

    def scalar(e, op):
        if isinstance(e, sympy.MatrixBase):
            raise ExpressionError(f"{op}(...) needs a scalar, got a vector in the {what}; use "
                                  "div(...) or dot(...) to make one")
        return e

    def vector(e, op):
        if not isinstance(e, sympy.MatrixBase) or e.shape != (dim, 1):
            raise ExpressionError(f"{op}(...) needs a vector of {dim} components such as "
                                  f"grad(u) or c*grad(u) in the {what}")
        return e

    def d(axis):
        name = "d" + AXES[axis]
        if axis >= dim:
            def refuse(*_):
                raise ExpressionError(f"{name}(...) in a {dim}D problem ({what}): the cloud "
                                      f"has coordinates {', '.join(AXES[:dim])} only")
            return refuse
        return lambda e: sympy.diff(scalar(e, name), xs[axis])

    funcs = dict(FUNCTIONS)
    for k in range(3):
        funcs["d" + AXES[k]] = d(k)
        for j in range(k, 3):
            name = "d" + AXES[k] + AXES[j]
            if max(k, j) >= dim:
                funcs[name] = d(max(k, j))  # refuses with the dz message
            else:
                funcs[name] = (lambda a, b, nm: lambda e: sympy.diff(scalar(e, nm), xs[a], xs[b]))(
                    k, j, name)
    funcs["lap"] = lambda e: sum(sympy.diff(scalar(e, "lap"), s, 2) for s in xs)
    funcs["grad"] = lambda e: sympy.Matrix([sympy.diff(scalar(e, "grad"), s) for s in xs])
    funcs["div"] = lambda v: sum(sympy.diff(vector(v, "div")[k], xs[k]) for k in range(dim))
    funcs["dot"] = lambda a, b: sum(vector(a, "dot")[k] * vector(b, "dot")[k]
                                    for k in range(dim))

    def dt(e):
        if not time:
            raise ExpressionError(f"dt(...) in a steady problem ({what}): give the time "
                                  "interval, e.g. time=(0, 1), for a time-dependent PDE")
        return sympy.diff(scalar(e, "dt"), t)
    funcs["dt"] = dt
    if boundary:
        funcs["dn"] = lambda e: sum(SYMBOLS[f"n{a}"] * sympy.diff(scalar(e, "dn"), s)
                                    for a, s in zip(AXES, xs))
    else:
        def dn(*_):
            raise ExpressionError(f"dn(...) (the normal derivative) is for boundary conditions, "
                                  f"not the {what}")
        funcs["dn"] = dn
    return names, funcs, u, xs, t


def _canonical(expr, u, xs, t, what: str):
    """Replace ``u`` and its derivatives by plain symbols; return the expression and a map
    symbol name -> (spatial multi-index, time order)."""
    rep, fields = {}, {}
    for d in expr.atoms(sympy.Derivative):
        if d.expr != u:  # pragma: no cover - only u is a function here
            raise ExpressionError(f"cannot differentiate {d.expr} in the {what}")
        counts = dict((v, int(c)) for v, c in d.variable_count)
        alpha = tuple(counts.get(s, 0) for s in xs)
        tord = counts.get(t, 0)
        if tord and sum(alpha):
            raise ExpressionError(f"mixed space-time derivatives are not supported ({what}): "
                                  "use dt(u) and spatial derivatives separately")
        if tord > 1:
            raise ExpressionError(f"only first-order time derivatives are supported ({what}): "
                                  "dt(dt(u)) is not")
        name = "u_t" if tord else deriv_name(alpha)
        sym = sympy.Symbol(name, real=True)
        rep[d] = sym
        fields[name] = (alpha, tord)
    expr = expr.xreplace(rep)
    if expr.has(u):
        expr = expr.xreplace({u: sympy.Symbol("u", real=True)})
        fields["u"] = ((0,) * len(xs), 0)
    if expr.atoms(sympy.Derivative) or expr.atoms(sympy.Subs):
        raise ExpressionError(f"the {what} has derivatives that cannot be resolved")
    return expr, fields


def _split(expr, fields: dict, linear_candidates, what: str):
    """Linear terms ``{name: coefficient}`` (field-free, time-free coefficients) and the rest."""
    field_syms = {n for n in fields}
    time_sym = SYMBOLS["t"]
    syms = {s.name: s for s in expr.free_symbols}
    linear = {}
    for name in linear_candidates:
        if name not in syms:
            continue
        c = sympy.diff(expr, syms[name])
        free = {s.name for s in c.free_symbols}
        if free & field_syms or time_sym in c.free_symbols:
            continue
        linear[name] = c
    rest = expr.xreplace({syms[n]: sympy.S.Zero for n in linear})
    return linear, rest


def _sort_key(alpha):
    """Deterministic term order: first derivatives by axis, second, higher, the identity last
    (the order of the paper's Robin operator ``alpha n.grad + beta``)."""
    order = sum(alpha)
    return (order == 0, order, tuple(-a for a in alpha))


def _recognise(linear: dict, fields: dict, dim: int):
    """Terms of the RBF-FD operator: ``lap``/``bilap`` patterns, else one term per derivative."""
    terms, left = [], dict(linear)
    diag2 = [deriv_name(tuple(2 * (k == j) for k in range(dim))) for j in range(dim)]
    if all(n in left for n in diag2) and all(left[n] == left[diag2[0]] for n in diag2):
        terms.append(("lap", left[diag2[0]]))
        for n in diag2:
            del left[n]
    four = [deriv_name(tuple(4 * (k == j) for k in range(dim))) for j in range(dim)]
    mixed = [deriv_name(tuple(2 * (k in (i, j)) for k in range(dim)))
             for i in range(dim) for j in range(i + 1, dim)]
    if all(n in left for n in four + mixed):
        c = left[four[0]]
        if all(left[n] == c for n in four) and all(left[n] == 2 * c for n in mixed):
            terms.append(("bilap", c))
            for n in four + mixed:
                del left[n]
    for name, c in sorted(left.items(), key=lambda kv: _sort_key(fields[kv[0]][0])):
        alpha, _ = fields[name]
        if sum(alpha) > MAX_ORDER:
            raise ExpressionError(
                f"the derivative {name} (order {sum(alpha)}) is not supported: RBF-FD stencils "
                f"here cover derivatives up to order {MAX_ORDER}, and lap(lap(u)) as a whole")
        terms.append((term_key(alpha), c))
    return terms


def _theta(key) -> int:
    """Derivative order of an RBF-FD term key."""
    if isinstance(key, str):
        return {"lap": 2, "bilap": 4, "id": 0}[key]
    return 1 if key[0] == "d" else 2


def parse_form(text, dim: int, time: bool = False, boundary: bool = False,
               params: dict | None = None, what: str = "PDE") -> Form:
    """Parse and analyse one declaration (see the module docstring).

    Parameters
    ----------
    text : str
        E.g. ``"-div((1+x**2)*grad(u)) + 0.5*dx(u) + u**3"`` or, for a boundary condition,
        ``"dn(u) + u**2"``.
    dim : int
        Spatial dimension (2 or 3).
    time : bool
        Time-dependent problem: ``t`` and ``dt(...)`` are available.
    boundary : bool
        A boundary condition: normals ``nx, ny[, nz]`` and ``dn(...)`` are available; ``u``
        enters the linear part (the RBF-FD identity row, as in the paper's Robin operator B),
        and derivatives are limited to first order.
    params : dict, optional
        Named constants.
    """
    if dim not in (2, 3):
        raise ExpressionError(f"dimension {dim} is not supported (use 2 or 3)")
    params = dict(params or {})
    names, funcs, u, xs, t = _namespace(dim, time, boundary, params, what)
    raw = parse(text, names, funcs, what=what)
    if isinstance(raw, sympy.MatrixBase):
        raise ExpressionError(f"the {what} {text!r} is a vector; it must be a scalar expression "
                              "(use div(...) or dot(...))")
    if not isinstance(raw, sympy.Expr):
        raise ExpressionError(f"the {what} {text!r} is not an expression")
    expr, fields = _canonical(raw, u, xs, t, what)
    fields = dict(sorted(fields.items()))  # symbol order must not depend on hashing
    if not fields:
        raise ExpressionError(f"the {what} {text!r} does not involve u; write the operator "
                              "applied to u (e.g. 'lap(u)'), and the data as f= / g=")
    top = max(sum(a) for a, _ in fields.values())
    if boundary and top > 1:
        raise ExpressionError(f"boundary condition {text!r} has a derivative of order {top}; "
                              "conditions may use u, dn(u) and first derivatives only")
    cands = [n for n, (a, tord) in fields.items() if tord == 0 and (sum(a) > 0 or boundary)]
    linear, rest = _split(expr, fields, cands, what)
    terms = _recognise(linear, fields, dim)
    rest_fields = tuple(sorted(s.name for s in rest.free_symbols if s.name in fields))
    derivs = {n: fields[n][0] for n in rest_fields if n not in ("u", "u_t")}
    for n, alpha in derivs.items():
        if sum(alpha) > MAX_ORDER:
            raise ExpressionError(
                f"the derivative {n} (order {sum(alpha)}) appears nonlinearly or with a "
                f"time-dependent coefficient in the {what}; only lap(lap(u)) with a coefficient "
                f"of x is supported beyond order {MAX_ORDER}")
    theta = max([_theta(k) for k, _ in terms] + [sum(a) for a in derivs.values()] + [0])
    return Form(text=str(text), expr=expr, linear=terms, rest=rest, rest_fields=rest_fields,
                derivs=derivs, theta=int(theta),
                time_order=int(any(tord for _, tord in fields.values())))

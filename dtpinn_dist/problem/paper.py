"""The paper's three problems as declarations (section 4: eqs. (1)-(3), (5)-(7), (19), (20)).

Data, not code paths: the library has no list of PDE kinds; these are the experiments' settings
(unit disk, Robin alpha = beta = 1, manufactured solutions) and the authors' L-BFGS learning rates.
"""
from __future__ import annotations

from .conditions import Robin
from .problem import Problem

__all__ = ["PAPER", "paper_problem"]

_U = "1 + sin(pi*x)*cos(pi*y)"  # eq. (19)

#: name -> declaration and the authors' learning rates (L-BFGS without line search).
PAPER = {
    "poisson": {"pde": "lap(u)", "exact": _U, "lr": {"dt": 0.04, "vanilla": 0.2}},
    "nonlinear-poisson": {"pde": "lap(u) - exp(u)", "exact": _U,
                          "lr": {"dt": 0.01, "vanilla": 0.2}},
    "heat": {"pde": "dt(u) - lap(u)", "exact": "1 + sin(pi*x)*cos(pi*y)*sin(pi*t)",  # eq. (20)
             "time": (0.0, 1.0), "nt": 24, "lr": {"dt": 0.4, "vanilla": 0.2}},
}


def paper_problem(name: str, **overrides) -> Problem:
    """The paper's problem ``name`` ('poisson', 'nonlinear-poisson', 'heat'); keyword arguments
    of :class:`Problem` override its settings (e.g. ``exact=``, ``bc=``, ``nt=``)."""
    if name not in PAPER:
        raise ValueError(f"unknown paper problem {name!r}: use one of {', '.join(PAPER)}")
    spec = {k: v for k, v in PAPER[name].items() if k != "lr"}
    spec.setdefault("bc", Robin(1.0, 1.0))
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return Problem(spec.pop("pde"), name=name, **spec)

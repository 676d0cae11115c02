"""Optimizers by name: the table the training loop builds each schedule phase from.

An entry is ``builder(trainer) -> optimizer``. First-order optimizers follow ``torch.optim``
(``step(closure)``); optimizers that evaluate the residual themselves (Levenberg-Marquardt) set
``self_evaluating = True`` and expose ``evals``, ``last_loss`` and ``stop_reason`` (non-empty when
they can do no more). Adding a method is one entry here.
"""
from __future__ import annotations

__all__ = ["OPTIMIZERS", "NO_LEARNING_RATE", "register", "build", "parse_schedule"]

OPTIMIZERS: dict = {}
#: Optimizers that take no learning rate (damped Gauss-Newton chooses its own step); filled by
#: ``register(..., learning_rate=False)``.
NO_LEARNING_RATE: set = set()


def register(name: str, learning_rate: bool = True):
    """Decorator: ``@register("name") def builder(trainer): ...``; ``learning_rate=False`` for
    an optimizer that chooses its own step length."""
    def deco(fn):
        OPTIMIZERS[name] = fn
        if not learning_rate:
            NO_LEARNING_RATE.add(name)
        return fn
    return deco


@register("lbfgs")
def _lbfgs(t):
    from .first_order import make_lbfgs

    c = t.config
    return make_lbfgs(t.params, t.lrs[t.phase], line_search=c.line_search,
                      history_size=c.history_size, max_iter=c.max_iter,
                      tolerance_grad=c.tolerance_grad, tolerance_change=c.tolerance_change)


@register("adam")
def _adam(t):
    from .first_order import make_adam

    return make_adam(t.params, t.lrs[t.phase])


@register("lm", learning_rate=False)
@register("gn", learning_rate=False)
def _lm(t):
    """Levenberg-Marquardt / damped Gauss-Newton (one class; "gn" is an alias)."""
    from .lm import LevenbergMarquardt

    if t.disc.method != "dt":
        raise ValueError("Levenberg-Marquardt (lm, gn) needs a DT-PINN (method 'dt'): its Jacobian is the "
                         "sparse operators times the network's; use lbfgs or adam for vanilla")
    return LevenbergMarquardt(t.model, t.disc, **t.config.lm)


def build(name: str, trainer):
    """The optimizer ``name`` for the trainer's current phase."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name](trainer)


def parse_schedule(text: str) -> list[tuple[str, int]]:
    """``"lbfgs:500,lm:100"`` -> ``[("lbfgs", 500), ("lm", 100)]`` (optimizer phases in order)."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, n = part.partition(":")
        name = name.strip().lower()
        if not sep or not n.strip().isdigit() or name not in OPTIMIZERS:
            raise ValueError(f"bad schedule entry {part!r}: use NAME:STEPS with NAME one of "
                             f"{', '.join(sorted(OPTIMIZERS))}, e.g. 'lbfgs:500,lm:100'")
        out.append((name, int(n)))
    if not out:
        raise ValueError("empty optimizer schedule: e.g. 'lbfgs:500,lm:100'")
    return out

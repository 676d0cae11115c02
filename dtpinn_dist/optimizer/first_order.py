"""Torch's L-BFGS and Adam, built from a name (the registry's first-order entries).

Paper defaults (authors' scripts): torch L-BFGS with its default settings (history 100,
max_iter 20 per ``step``), no line search, learning rate by problem and method
(:data:`dtpinn_dist.problem.paper.PAPER`). This library's default is a strong-Wolfe line search
(step length 1), because the paper's setting blows up on the authors' clouds with our operators
(README), and stopping tolerances that never end a run that is still improving
(``tolerance_grad = tolerance_change = 0``: only a zero gradient or a zero step stops L-BFGS).
"""
from __future__ import annotations

import torch

__all__ = ["default_lr", "make_lbfgs", "make_adam", "FALLBACK_LR"]

#: L-BFGS rate without a line search for problems with no published rate (the paper's DT rate).
FALLBACK_LR = 0.04


def default_lr(optimizer: str, method: str, problem_name: str | None = None,
               line_search: bool = True) -> float:
    """1.0 for L-BFGS with a line search; the authors' rate without one (their problems, else
    :data:`FALLBACK_LR`); 1e-3 for Adam."""
    if optimizer == "adam":
        return 1e-3
    if line_search:
        return 1.0
    from ..problem.paper import PAPER

    return PAPER.get(problem_name or "", {}).get("lr", {}).get(method, FALLBACK_LR)


def make_lbfgs(params, lr: float, *, line_search: bool = True, history_size: int = 100,
               max_iter: int = 20, tolerance_grad: float = 0.0,
               tolerance_change: float = 0.0) -> torch.optim.LBFGS:
    """torch L-BFGS; ``line_search`` selects ``strong_wolfe`` (the paper used none)."""
    return torch.optim.LBFGS(list(params), lr=lr, history_size=history_size, max_iter=max_iter,
                             tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                             line_search_fn="strong_wolfe" if line_search else None)


def make_adam(params, lr: float) -> torch.optim.Adam:
    """torch Adam."""
    return torch.optim.Adam(list(params), lr=lr)

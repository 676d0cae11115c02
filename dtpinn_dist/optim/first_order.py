"""Construction of the first-order / quasi-Newton optimizers (torch L-BFGS, Adam).

Paper defaults (authors' scripts): torch L-BFGS with its default settings (history 100,
max_iter 20 per ``step``), no line search, learning rate by problem and method.
"""
from __future__ import annotations

import torch

__all__ = ["PAPER_LR", "default_lr", "make_optimizer", "OPTIMIZERS"]

OPTIMIZERS = ("lbfgs", "adam")

#: Learning rates of the authors' scripts (reference/README.md).
PAPER_LR = {("dt", "poisson"): 0.04, ("dt", "nonlinear-poisson"): 0.01, ("dt", "heat"): 0.4,
            ("vanilla", "poisson"): 0.2, ("vanilla", "nonlinear-poisson"): 0.2,
            ("vanilla", "heat"): 0.2}


def default_lr(optimizer: str, method: str, kind: str, line_search: bool = False) -> float:
    """The paper's L-BFGS learning rate (1.0 with a strong-Wolfe line search); 1e-3 for Adam."""
    if optimizer == "adam":
        return 1e-3
    if line_search:
        return 1.0
    return PAPER_LR.get((method, kind), 0.04)


def make_optimizer(params, name: str = "lbfgs", lr: float | None = None, *,
                   line_search: bool = False, history_size: int = 100, max_iter: int = 20,
                   method: str = "dt", kind: str = "poisson") -> torch.optim.Optimizer:
    """A torch optimizer over ``params``.

    Parameters
    ----------
    name : {'lbfgs', 'adam'}
    lr : float, optional
        Defaults to :func:`default_lr`.
    line_search : bool
        L-BFGS with ``line_search_fn='strong_wolfe'`` (the paper uses none).
    history_size, max_iter : int
        L-BFGS memory and inner iterations per ``step`` (torch defaults 100 and 20).
    """
    params = list(params)
    if lr is None:
        lr = default_lr(name, method, kind, line_search)
    if name == "lbfgs":
        return torch.optim.LBFGS(params, lr=lr, history_size=history_size, max_iter=max_iter,
                                 line_search_fn="strong_wolfe" if line_search else None)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")

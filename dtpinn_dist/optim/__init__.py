"""Optimizers: torch L-BFGS / Adam construction (:mod:`.first_order`) and Levenberg-Marquardt
(:mod:`.lm`, imported on demand)."""
from .first_order import OPTIMIZERS, PAPER_LR, default_lr, make_optimizer

__all__ = ["OPTIMIZERS", "PAPER_LR", "default_lr", "make_optimizer"]

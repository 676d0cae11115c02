"""Optimisation: the training loop (:mod:`.trainer`), ``fit`` (:mod:`.fit`), the optimizer
registry (:mod:`.registry`: torch L-BFGS / Adam, Levenberg-Marquardt) and the least-squares
algebra of Gauss-Newton steps (:mod:`.least_squares`, :mod:`.lm`, :mod:`.gauss_newton_cg`)."""
from .checkpoint import CheckpointError, CheckpointMismatch
from .fit import FitResult, fit
from .registry import OPTIMIZERS, parse_schedule
from .trainer import TrainConfig, Trainer, TrainResult

__all__ = ["fit", "FitResult", "TrainConfig", "Trainer", "TrainResult", "OPTIMIZERS",
           "parse_schedule", "CheckpointError", "CheckpointMismatch"]

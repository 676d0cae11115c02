"""``fit``: train a network on a discretised problem -- the library's one verb.

>>> res = fit(disc, steps=300)                       # L-BFGS (strong Wolfe), the paper's 4 x 50 MLP
>>> res = fit(disc, schedule="lbfgs:50,lm:100")      # then Levenberg-Marquardt
>>> res = fit(disc, steps=300, checkpoint="run", checkpoint_every=50)   # run/checkpoint.pt
>>> res = fit(disc, steps=600, checkpoint="run", resume="run")          # continue it
>>> u = res.predict(points)

Settings are :class:`~dtpinn_dist.optimizer.trainer.TrainConfig` fields, normalised once here;
the optimizers sit in a name -> builder registry (:mod:`.registry`) behind it. Collective: under
MPI every rank calls ``fit`` with its own share of the same discretisation and all ranks take
identical steps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .trainer import TrainConfig, Trainer, TrainResult

__all__ = ["fit", "FitResult"]


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model, its discretisation and the run's record.

    Attributes
    ----------
    model : torch.nn.Module
    disc : Discretization
    result : TrainResult
        History (one record per evaluation), counters, times, best and final errors.
    trainer : Trainer
        For continuing (``trainer.train()``) or checkpointing (``trainer.state_dict()``).
    """

    model: object
    disc: object
    result: TrainResult
    trainer: Trainer

    @property
    def history(self) -> list:
        return self.result.history

    @property
    def rel_l2(self):
        """Final relative L2 error (paper eq. (18)); None without an exact solution."""
        return self.result.final_rel_l2

    @property
    def loss(self):
        return self.result.final_loss

    def error_split(self, solution=None) -> dict:
        """Which residual block (the PDE, each boundary part) limits the network's error,
        against the direct solve of the same system (:func:`~dtpinn_dist.problem.diagnostics.
        error_split`; steady DT problems; one sparse factorisation). Collective."""
        from ..problem.diagnostics import error_split

        return error_split(self.disc, self.model, solution)

    def predict(self, points, t=None) -> np.ndarray:
        """The trained network at ``points`` (n, d) (at time ``t`` when time-dependent), as a
        float64 numpy array. Local: no communication."""
        return self.disc.predict(self.model, points, t).double().cpu().numpy()


def fit(disc, config: TrainConfig | None = None, *, model=None, log=print, checkpoint=None,
        resume=None, catch_signals: bool = False, checkpoint_meta: dict | None = None,
        **settings) -> FitResult:
    """Train a PINN on ``disc`` (from :func:`~dtpinn_dist.problem.discretize.discretize`).

    Parameters
    ----------
    disc : Discretization
    config : TrainConfig, optional
        All settings at once; keyword ``settings`` override its fields (``steps``, ``optimizer``,
        ``schedule``, ``lr``, ``line_search``, ``time_budget``, ``tol``, ``eval_every``,
        ``seed``, ``width``, ``depth``, ``lm={...}``, ``verbose`` ...).
    model : torch.nn.Module, optional
        Default: the paper's MLP (``width`` x ``depth`` tanh) in the discretisation's dtype.
    log : callable
        Progress lines (rank 0 only); ``verbose=False`` silences them.
    checkpoint : path-like, optional
        Write checkpoints to this file (a directory: ``DIR/checkpoint.pt``): every
        ``checkpoint_every`` steps (a setting; 0 = only at the end) and whenever the run stops
        (:mod:`.checkpoint`).
    resume : path-like, optional
        Continue from this checkpoint (file or run folder). Refused, on every rank with one
        message, when it is from a different problem, cloud, order, method, dtype, rank count
        or network. With step budgets and the same thread count the continued run ends with
        the bits of an uninterrupted one.
    catch_signals : bool
        Ctrl-C (SIGINT), SIGTERM and SIGUSR1 stop the run after the step in progress, with a
        checkpoint, instead of killing it; ``result.result.interrupted`` names the signal.
    checkpoint_meta : dict, optional
        Plain data stored with each checkpoint (returned by ``Trainer.resume``).

    Returns
    -------
    FitResult
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"fit() got unknown settings {unknown}; known: {', '.join(sorted(fields))}")
    cfg = dataclasses.replace(config or TrainConfig(), **settings)
    trainer = Trainer(disc, cfg, model=model, log=log, checkpoint=checkpoint,
                      checkpoint_meta=checkpoint_meta, catch_signals=catch_signals)
    if resume is not None:
        trainer.resume(resume)
    result = trainer.train()
    return FitResult(model=trainer.model, disc=disc, result=result, trainer=trainer)

"""The checkpoint of a run folder: where it lives, and what to tell the user when a run stops
before its end.

The file format, the fingerprint check and the atomic write are the library's
(:mod:`dtpinn_dist.optimizer.checkpoint`); this module is the run-folder side used by
``python -m dtpinn_dist.train --resume DIR`` and the Slurm job that resubmits itself
(``jobs/train_cpu_resubmit.slurm``):

* ``RUN/checkpoint.pt``, written by rank 0 every ``--checkpoint-every`` steps, when the run
  stops (budget, Ctrl-C, SIGTERM, Slurm's SIGUSR1 warning) and at the end;
* ``RUN/config.toml``, the resolved settings the run wrote when it started: ``--resume DIR``
  reads it, so ``--resume DIR`` alone continues the run with the same settings;
* exit status ``128 + signal`` (130 for Ctrl-C) when a signal stopped the run, as shells do;
* a checkpoint that cannot be written (full disk, file-size limit) ends the run with one line
  naming the cause and the checkpoint that is kept (:func:`write_failed_message`).
"""
from __future__ import annotations

import signal
from pathlib import Path

from ..optimizer.checkpoint import CHECKPOINT_FILE

__all__ = ["CHECKPOINT_FILE", "checkpoint_path", "stop_message", "exit_status",
           "write_failed_message"]


def checkpoint_path(run_dir) -> Path:
    """``run_dir/checkpoint.pt``."""
    return Path(run_dir) / CHECKPOINT_FILE


def stop_message(result, run_dir) -> str | None:
    """One line for a run a signal stopped (None otherwise): where it stopped and how to
    continue, e.g. ``interrupted at step 40; resume with --resume runs/x``."""
    if not result.interrupted:
        return None
    what = "interrupted" if result.interrupted == "SIGINT" else f"stopped by {result.interrupted}"
    if result.checkpoint_step is None:
        return f"{what} at step {result.steps}; no checkpoint was written (start again)"
    held = "" if result.checkpoint_step == result.steps else \
        f" (the step in progress was abandoned; the checkpoint holds step {result.checkpoint_step})"
    return f"{what} at step {result.steps}{held}; resume with --resume {run_dir}"


def write_failed_message(error, kept_step, run_dir) -> str:
    """One line for a checkpoint write that failed (``error``: the write's one line, e.g. ``cannot
    write checkpoint RUN/checkpoint.pt: No space left on device; free disk space ...``): the
    previous checkpoint (of step ``kept_step``, None when there is none) is intact."""
    if kept_step is None:
        return f"{error}; no earlier checkpoint to continue from (start again)"
    return (f"{error}; the checkpoint of step {kept_step} is kept: resume with --resume "
            f"{run_dir}")


def exit_status(result) -> int:
    """0, or ``128 + signal number`` when a signal stopped the run (130 for Ctrl-C); 0 for no
    training result (``--method solve``)."""
    if result is None or not result.interrupted:
        return 0
    return 128 + int(getattr(signal, result.interrupted, 0) or 0)

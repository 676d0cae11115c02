"""Training: the trainer (:mod:`.trainer`) and the command line (``python -m dtpinn_dist.train``)."""
from .trainer import TrainConfig, Trainer, TrainResult, train

__all__ = ["TrainConfig", "Trainer", "TrainResult", "train"]

"""Training: configuration, the multi-task loss, data-parallel ranks and the
driver behind ``pygfm-train`` (see :func:`train`)."""

from .config import ConfigError, defaults, load_config, resolve
from .loss import multitask_loss
from .parallel import Parallel
from .trainer import Trainer, TrainingError, train

__all__ = ["ConfigError", "defaults", "load_config", "resolve", "multitask_loss", "Parallel",
           "Trainer", "TrainingError", "train"]

"""Hyperparameter search behind ``pygfm-hpo``: DeepHyper's centralized Bayesian
optimization over pygfm-train settings, each trial a bounded ``pygfm-train``
run (see :class:`Campaign` and :func:`load_hpo_config`)."""

from .config import load_hpo_config, trial_config
from .search import Campaign, HPOError, objective_value

__all__ = ["Campaign", "HPOError", "load_hpo_config", "objective_value", "trial_config"]

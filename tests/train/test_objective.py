"""One validation objective (pygfm.train.objective): the trainer keeps as best.pt the
validation that is best by it, per-dataset terms included, and pygfm-hpo ranks a trial
by the same number; a pygfm-hpo trial config carries the campaign's objective."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from _train_helpers import demo_environment, tiny_config, write_yaml  # noqa: F401 (a fixture)
from pygfm.train import resolve, train
from pygfm.train.config import ConfigError
from pygfm.train.objective import objective_value, objective_weights
from pygfm.train.trainer import Trainer

# two validations: the second is better by the plain energy + forces rule (mean over
# heads), worse once molecules-dft's energy counts 5 times more
FIRST = {"metals-emt": {"energy_mae": 0.010, "forces_mae": 0.20},
         "molecules-dft": {"energy_mae": 0.010, "forces_mae": 0.20}}
SECOND = {"metals-emt": {"energy_mae": 0.001, "forces_mae": 0.15},
          "molecules-dft": {"energy_mae": 0.030, "forces_mae": 0.20}}
WEIGHTS = {"energy": 1.0, "forces": 1.0, "datasets": {"molecules-dft": {"energy": 5.0,
                                                                          "forces": 0.0}}}


# the shared demo cache; torch's thread count restored after each test
pytestmark = pytest.mark.usefixtures("demo_environment")


def test_the_rules_disagree_on_these_validations():
    plain = dict(WEIGHTS, datasets={})
    assert objective_value(plain, SECOND) < objective_value(plain, FIRST)
    assert objective_value(WEIGHTS, FIRST) < objective_value(WEIGHTS, SECOND)
    assert objective_value(WEIGHTS, FIRST) == pytest.approx(0.01 + 0.2 + 5 * 0.01)


def test_nothing_measured_is_nan_and_nan_maes_are_left_out():
    nan = {"a": {"energy_mae": math.nan, "forces_mae": math.nan}}
    assert math.isnan(objective_value(WEIGHTS | {"datasets": {}}, nan))
    partly = {"a": {"energy_mae": 0.5, "forces_mae": math.nan},
              "b": {"energy_mae": math.nan, "forces_mae": 0.25}}
    assert objective_value({"energy": 2.0, "forces": 1.0, "datasets": {}}, partly) == 1.25


def test_best_pt_is_chosen_by_the_objective_with_per_dataset_terms(tmp_path, monkeypatch):
    """Validations return FIRST then SECOND: best.pt must stay at the first (the
    objective's choice), where the old energy/forces-only rule took the second."""
    config = resolve(tiny_config(training={
        "max_steps": 2, "eval_every": 1, "plots": False, "objective_energy": 1.0,
        "objective_forces": 1.0, "objective_datasets": WEIGHTS["datasets"]}))
    assert objective_weights(config) == WEIGHTS
    answers = iter([FIRST, SECOND])
    original = Trainer.evaluate

    def scripted(self, model=None, baseline=False, collect=False):
        if model is None and not baseline and not collect:  # the validations of fit()
            return {name: dict(values) for name, values in next(answers).items()}
        return original(self, model, baseline, collect)

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["best_step"] == 1
    assert summary["best_objective"] == pytest.approx(objective_value(WEIGHTS, FIRST))
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["extra"]["state"]
    assert state["best_step"] == 1

    # pygfm-hpo ranks the trial by the same function of the same validation errors
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pygfm.hpo.search import objective_value as hpo_objective
    heads = {"heads": {name: dict(values) for name, values in FIRST.items()}}
    assert hpo_objective(WEIGHTS, heads) == objective_value(WEIGHTS, FIRST)


def test_objective_datasets_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.objective_datasets\.x\.energy: expected "
                                          "a number >= 0"):
        resolve(tiny_config(training={"objective_datasets": {"x": {"energy": -1}}}))
    with pytest.raises(ConfigError, match=r"training\.objective_datasets\.x\.stress: unknown"):
        resolve(tiny_config(training={"objective_datasets": {"x": {"stress": 1}}}))
    config = resolve(tiny_config(training={"max_steps": 1, "plots": False,
                                           "objective_datasets": {"nope": {"energy": 1}}}))
    with pytest.raises(ConfigError, match="objective_datasets.nope: no such head"):
        train(config, tmp_path / "run", progress=False)


def test_a_trial_config_carries_the_campaign_objective(tmp_path):
    from pygfm.hpo import load_hpo_config, trial_config

    base = write_yaml(tmp_path / "base.yaml", tiny_config())
    campaign = write_yaml(tmp_path / "hpo.yaml", {
        "base": base.name, "space": {"model.n_features": [8, 16]}, "trials": 2,
        "budget": {"max_steps": 4}, "objective": WEIGHTS})
    config = load_hpo_config(campaign)
    trial = trial_config(config, {"model.n_features": 8})
    assert objective_weights(trial) == config["objective"] == WEIGHTS

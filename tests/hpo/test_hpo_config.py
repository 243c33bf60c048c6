"""pygfm-hpo's campaign config (every bad key named), the trial configs it makes,
the objective against a direct computation, the trial error messages, the CSV."""

from __future__ import annotations

import csv
import io
import math
import signal
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from _train_helpers import tiny_config, write_yaml  # noqa: E402

from pygfm.hpo import Campaign, load_hpo_config, objective_value, trial_config  # noqa: E402
from pygfm.hpo.config import HPO_DEMO_CONFIG  # noqa: E402
from pygfm.hpo.search import _error_from_log, trials_csv  # noqa: E402
from pygfm.train.config import ConfigError, load_config  # noqa: E402

SPACE = {"model.n_features": [8, 16], "optimizer.lr": {"low": 1e-3, "high": 1e-2, "log": True},
         "model.n_interactions": {"low": 1, "high": 2}, "precision": ["fp32", "fp64"],
         "datasets[1].weight": {"low": 0.5, "high": 2.0}}


def campaign_file(tmp_path: Path, **content) -> Path:
    base = write_yaml(tmp_path / "base.yaml", tiny_config())
    config = {"base": base.name, "space": SPACE, "trials": 3, "budget": {"max_steps": 4}}
    config.update(content)
    return write_yaml(tmp_path / "hpo.yaml", config)


def test_demo_config_loads():
    config = load_hpo_config(HPO_DEMO_CONFIG)
    assert config["heads"] == ["metals-emt", "molecules-xtb", "molecules-dft"]
    assert config["space"]["optimizer.lr"] == {"kind": "float", "low": 3e-4, "high": 1e-2,
                                               "log": True}
    assert config["space"]["model.n_interactions"]["kind"] == "int"
    assert config["space"]["model.n_rbf"] == {"kind": "choice", "choices": [8, 16, 24]}


def test_space_kinds_follow_the_training_schema(tmp_path):
    config = load_hpo_config(campaign_file(tmp_path))
    space = config["space"]
    assert space["model.n_features"]["kind"] == "choice"
    assert space["model.n_interactions"] == {"kind": "int", "low": 1, "high": 2, "log": False}
    assert space["optimizer.lr"]["kind"] == "float" and space["optimizer.lr"]["log"]
    assert space["datasets[1].weight"]["kind"] == "float"
    assert config["base"] == str((tmp_path / "base.yaml").resolve())


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "colour: unknown key"),
    ({"space": {}}, "space: give at least one"),
    ({"space": {"model.n_feature": [8]}}, "space.model.n_feature: no such training setting"),
    ({"space": {"model": [8]}}, "space.model: is a section"),
    ({"space": {"precision": {"low": 1, "high": 2}}}, "space.precision: a str setting takes"),
    ({"space": {"precision": ["fp16"]}}, "space.precision[0]: must be one of"),
    ({"space": {"model.cutoff": {"low": 0.0, "high": 5.0}}}, "space.model.cutoff.low: must be >"),
    ({"space": {"optimizer.lr": {"low": 1e-2, "high": 1e-3}}}, "low must be below high"),
    ({"space": {"loss.forces": {"low": 0.0, "high": 1.0, "log": True}}}, "a log range needs"),
    ({"space": {"optimizer.lr": {"low": 1e-3, "hi": 1e-2}}}, "a range has keys low, high"),
    ({"space": {"model.n_features": [8, 8]}}, "a choice is listed twice"),
    ({"space": {"datasets[5].weight": [1.0]}}, "lists 2 dataset(s)"),
    ({"space": {"datasets[0].colour": [1.0]}}, "not a dataset setting"),
    ({"space": {"model.n_features": "big"}}, "expected a list of choices or a range"),
    ({"trials": 0}, "trials: expected a positive integer"),
    ({"budget": {"max_steps": None}}, "budget: give max_steps or max_time"),
    ({"budget": {"max_step": 3}}, "budget.max_step: unknown key"),
    ({"objective": {"energy": 0, "forces": 0}}, "every weight is zero"),
    ({"objective": {"datasets": {"nope": {"energy": 1}}}}, "objective.datasets.nope: no such head"),
    ({"objective": {"energy": -1}}, "objective.energy: must be >= 0"),
    ({"search": {"method": "grid"}}, "search.method"),
    ({"search": {"surrogate": "XYZ"}}, "search.surrogate"),
    ({"evaluator": {"kind": "ray"}}, "evaluator.kind"),
    ({"evaluator": {"workers": 0}}, "evaluator.workers: must be >= 1"),
    ({"evaluator": {"launcher": 3}}, "evaluator.launcher"),
    ({"base": "missing.yaml"}, "base: "),
    ({"set": ["model.n_features=-3"]}, "model.n_features: must be >= 1"),
    ({"set": "model.n_features"}, "set: expected a list of key=value"),
])
def test_bad_config_names_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError) as error:
        load_hpo_config(campaign_file(tmp_path, **change))
    assert message in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_hpo_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_hpo_config(bad)


def test_trial_config_applies_params_budget_and_promotion(tmp_path):
    config = load_hpo_config(campaign_file(
        tmp_path, set=["training.eval_every=100", "model.n_rbf=6"],
        objective={"energy": 2.0, "forces": 0.5}))
    params = {"model.n_features": 16, "optimizer.lr": 0.004, "model.n_interactions": 2,
              "precision": "fp64", "datasets[1].weight": 1.5}
    trial = trial_config(config, params)
    assert trial["model"]["n_features"] == 16 and trial["model"]["n_interactions"] == 2
    assert trial["optimizer"]["lr"] == 0.004 and trial["precision"] == "fp64"
    assert trial["datasets"][1]["weight"] == 1.5 and trial["datasets"][0]["weight"] == 1.0
    assert trial["model"]["n_rbf"] == 6                      # the campaign's `set`
    assert trial["training"]["max_steps"] == 4               # the budget
    assert trial["training"]["eval_every"] == 4              # clamped to the budget
    assert trial["training"]["objective_energy"] == 2.0
    assert trial["training"]["objective_forces"] == 0.5
    full = trial_config(config, params, budget=False, extra=["training.max_steps=50"])
    assert full["training"]["max_steps"] == 50 and full["training"]["eval_every"] == 100
    # the written config is a ready pygfm-train config
    path = write_yaml(tmp_path / "trial.yaml", trial)
    assert load_config(path) == trial


def test_invalid_combination_is_a_failed_trial_not_a_crash(tmp_path):
    config = load_hpo_config(campaign_file(tmp_path))
    campaign = Campaign(config, tmp_path / "run", progress=False)
    path, error = campaign._prepare(1, {"model.cutoff": -1.0})
    assert error is not None and "model.cutoff" in error and "invalid configuration" in error
    path, error = campaign._prepare(2, {"model.n_features": 8})
    assert error is None and load_config(path)["model"]["n_features"] == 8


def _summary(heads: dict) -> dict:
    return {"heads": {name: {"energy_mae": e, "forces_mae": f} for name, (e, f) in heads.items()}}


finite = st.floats(0.0, 10.0, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(finite, st.one_of(finite, st.just(math.nan))), min_size=1, max_size=4),
       finite, finite, finite, finite)
def test_objective_against_direct_sum(maes, w_energy, w_forces, w_e0, w_f0):
    heads = {f"h{k}": m for k, m in enumerate(maes)}
    objective = {"energy": w_energy, "forces": w_forces,
                 "datasets": {"h0": {"energy": w_e0, "forces": w_f0}}}
    energies = [e for e, _ in maes]
    forces = [f for _, f in maes if not math.isnan(f)]
    # a term with a zero weight or nothing measured is left out; no term left: NaN
    terms = [w_energy * sum(energies) / len(energies)] if w_energy else []
    if forces and w_forces:
        terms.append(w_forces * sum(forces) / len(forces))
    if w_e0:
        terms.append(w_e0 * maes[0][0])
    if w_f0 and not math.isnan(maes[0][1]):
        terms.append(w_f0 * maes[0][1])
    expected = sum(terms) if terms else math.nan
    value = objective_value(objective, _summary(heads))
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_error_messages(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("Traceback ...\npygfm-train: error: the loss became nan at step 3\n")
    assert _error_from_log(log, 1, False, None) == "the loss became nan at step 3"
    log.write_text("$ python -m pygfm.cli.train\n")
    assert "SIGKILL (out of memory?)" in _error_from_log(log, -signal.SIGKILL, False, None)
    assert "SIGSEGV" in _error_from_log(log, -signal.SIGSEGV, False, None)
    assert "trial_timeout (60 s)" in _error_from_log(log, -15, True, 60.0)
    log.write_text("something odd\n")
    assert _error_from_log(log, 3, False, None) == \
        "pygfm-train exited with status 3: something odd"


def test_trials_csv_columns_and_values(tmp_path):
    config = load_hpo_config(campaign_file(tmp_path))
    records = [
        {"trial": 1, "status": "ok", "objective": 0.25, "seconds": 3.5, "steps": 4,
         "params": {"model.n_features": 8, "optimizer.lr": 0.002, "model.n_interactions": 1,
                    "precision": "fp32", "datasets[1].weight": 1.0},
         "metrics": {"metals-emt": {"energy_mae": 0.1, "forces_mae": 0.2},
                     "molecules-dft": {"energy_mae": 0.3, "forces_mae": math.nan}},
         "error": None, "run_dir": "trials/00001"},
        {"trial": 2, "status": "failed", "objective": None, "seconds": 1.0, "steps": None,
         "params": {"model.n_features": 16, "optimizer.lr": 0.005, "model.n_interactions": 2,
                    "precision": "fp64", "datasets[1].weight": 2.0},
         "metrics": {}, "error": "the loss became nan, at step 1", "run_dir": "trials/00002"},
    ]
    rows = list(csv.DictReader(io.StringIO(trials_csv(records, config))))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert float(rows[0]["objective"]) == 0.25 and rows[1]["objective"] == ""
    assert rows[0]["p:optimizer.lr"] == "0.002" and rows[1]["p:precision"] == "fp64"
    assert float(rows[0]["forces_mae/metals-emt"]) == 0.2
    assert rows[0]["forces_mae/molecules-dft"] == ""
    assert rows[1]["error"] == "the loss became nan, at step 1"


def test_resume_refuses_a_changed_search(tmp_path):
    config = load_hpo_config(campaign_file(tmp_path))
    Campaign(config, tmp_path / "run", progress=False)._log({"event": "noop"})
    with pytest.raises(FileExistsError, match="--resume"):
        Campaign(config, tmp_path / "run", progress=False)
    changed = load_hpo_config(campaign_file(tmp_path, budget={"max_steps": 9}))
    with pytest.raises(Exception, match="`budget` differs"):
        Campaign(changed, tmp_path / "run", resume=True, progress=False)
    more = load_hpo_config(campaign_file(tmp_path, trials=9))  # more trials: fine
    assert Campaign(more, tmp_path / "run", resume=True, progress=False).config["trials"] == 9
    stored = yaml.safe_load((tmp_path / "run" / "campaign.yaml").read_text())
    assert stored["trials"] == 9


def test_a_new_search_refuses_a_folder_of_other_files(tmp_path):
    """Issue #15: pygfm-hpo writes over nothing it did not make."""
    config = load_hpo_config(campaign_file(tmp_path))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "campaign.yaml").write_text("my own notes\n")
    with pytest.raises(FileExistsError, match=r"mine: holds files that pygfm-hpo did not "
                                              r"write \(campaign.yaml\)"):
        Campaign(config, folder, progress=False)
    assert (folder / "campaign.yaml").read_text() == "my own notes\n"
    (tmp_path / "file").write_text("keep")
    with pytest.raises(FileExistsError, match="is a file, not a directory"):
        Campaign(config, tmp_path / "file", progress=False)
    assert (tmp_path / "file").read_text() == "keep"
    # a search killed before its first trial is its own: it may start again
    Campaign(config, tmp_path / "run", progress=False)
    Campaign(config, tmp_path / "run", progress=False)


def test_resume_removes_only_the_temporaries_a_kill_left(tmp_path):
    config = load_hpo_config(campaign_file(tmp_path))
    run_dir = tmp_path / "run"
    campaign = Campaign(config, run_dir, progress=False)
    campaign._log({"event": "noop"})
    campaign._prepare(1, {"model.n_features": 8})
    stale = [run_dir / ".trials.csv.tmp-deadbeef.csv", run_dir / ".campaign.yaml.tmp-1a2b",
             run_dir / "trials" / "00001" / ".config.yaml.tmp-0123abcd4567.yaml"]
    kept = [run_dir / "notes.txt", run_dir / ".trials.csv.tmp-mine",
            run_dir / "trials" / "00001" / "log.txt"]
    for path in stale + kept:
        path.write_text("x")
    Campaign(config, run_dir, resume=True, progress=False)
    assert [path for path in stale if path.exists()] == []
    assert all(path.read_text() == "x" for path in kept)
    assert (run_dir / "trials" / "00001" / "config.yaml").is_file()

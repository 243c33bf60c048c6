"""pygfm.train.trainer in-process (one rank): fine-tuning from a checkpoint (frozen or
trained trunk, new heads), errors that name the setting, and short runs through the
other code paths (fp64, bf16, direct force heads with a stress loss, plateau schedule,
max_time)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import pygfm
from _train_helpers import TRAIN_LOSS_CONFIG, demo_environment  # noqa: F401 (a fixture)
from pygfm.models import MultiHeadModel, save_checkpoint
from pygfm.nn import PaiNN
from pygfm.train import ConfigError, Trainer, TrainingError, resolve, train

B3LYP = {"path": "demo:molecules-b3lyp", "max_samples": 30, "validation_fraction": 0.1}


# the shared demo cache; torch's thread count restored after each test
pytestmark = pytest.mark.usefixtures("demo_environment")


def config_of(datasets=(B3LYP,), **sections) -> dict:
    given = {"seed": 0, "device": "cpu", "threads": 1, "datasets": [dict(d) for d in datasets],
             "sampling": {"batch_atoms": 120, "prefetch": 0},
             "model": {"n_features": 8, "n_interactions": 1, "n_rbf": 6},
             "schedule": {"warmup_steps": 1},
             "training": {"max_steps": 4, "eval_every": 2, "plots": False}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(given.get(key), dict):
            given[key] = {**given[key], **value}
        else:
            given[key] = value
    return resolve(given)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A multi-head checkpoint (random weights) with two heads the fine-tune lacks."""
    torch.manual_seed(5)
    model = MultiHeadModel(PaiNN(n_features=8, n_interactions=2, cutoff=4.5, n_rbf=6),
                           ["old-a", "old-b"], normalization={
                               "old-a": {"reference_energies": {"H": -13.0, "C": -1000.0},
                                         "energy_scale": 0.5}})
    path = tmp_path_factory.mktemp("pretrained") / "init.pt"
    save_checkpoint(model, path, elements=["H", "C", "N", "O"], config={})
    return path


def state_of(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def metrics_rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------- fine-tuning
def test_finetune_frozen_trunk_trains_only_the_new_head(pretrained, tmp_path):
    config = config_of(finetune={"init_from": str(pretrained), "trunk": "frozen"},
                       training={"ema_decay": None})
    trainer = Trainer(config, tmp_path / "run", progress=False)
    model = trainer.model
    assert model.head_names == ["old-a", "old-b", "molecules-b3lyp"]
    assert trainer.new_heads == ["molecules-b3lyp"]
    # the architecture is the checkpoint's (the config said 1 interaction, cutoff 5)
    assert model.representation.config["n_interactions"] == 2
    assert trainer.config["model"]["n_interactions"] == 2
    assert trainer.config["model"]["cutoff"] == 4.5
    initial = torch.load(pretrained, weights_only=True)["state_dict"]
    before = state_of(model)
    for key, value in initial.items():  # the checkpoint's weights and per-head buffers
        mine = before[key]
        if mine.shape != value.shape and mine.shape[0] == 3 and value.shape[0] == 2:
            mine = mine[:2]  # per-head rows: the old heads come first
        assert torch.equal(mine, value), key
    # the new head got the fine-tune set's own normalization
    assert (before["reference"][2] != 0).any() and before["scale"][2] != 1.0
    assert not any(p.requires_grad for p in model.representation.parameters())

    summary = trainer.fit()
    after = state_of(trainer.model)
    for key in before:  # all but the new head: trunk, old heads, buffers
        if not key.startswith("heads.2."):
            assert torch.equal(after[key], before[key]), f"{key} changed"
    new_head = [k for k in before if k.startswith("heads.2.")]
    assert new_head and any(not torch.equal(after[k], before[k]) for k in new_head)
    assert summary["heads"]["molecules-b3lyp"]["new_head"] is True
    # the checkpoints carry the unchanged trunk, and load
    for name in ("best.pt", "last.pt"):
        saved = torch.load(tmp_path / "run" / name, weights_only=True)["state_dict"]
        for key, value in initial.items():
            if key.startswith("representation."):
                assert torch.equal(saved[key], value), (name, key)
    loaded = pygfm.load(tmp_path / "run" / "best.pt")
    assert loaded.head_names == ["old-a", "old-b", "molecules-b3lyp"]


def test_finetune_trained_trunk_uses_its_own_learning_rate(pretrained, tmp_path):
    config = config_of(finetune={"init_from": str(pretrained), "trunk": "train",
                                 "trunk_lr_ratio": 0.25},
                       optimizer={"lr": 0.004}, training={"max_steps": 2})
    trainer = Trainer(config, tmp_path / "run", progress=False)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["trunk"]["base_lr"] == pytest.approx(0.001)
    assert groups["heads"]["base_lr"] == pytest.approx(0.004)
    trunk = [k for k in trainer.model.state_dict() if k.startswith("representation.")]
    before = state_of(trainer.model)
    trainer.fit()
    after = state_of(trainer.model)
    assert any(not torch.equal(after[k], before[k]) for k in trunk)


def test_init_from_that_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    config = config_of(finetune={"init_from": str(junk)})
    with pytest.raises(ConfigError) as info:
        Trainer(config, tmp_path / "run", progress=False)
    assert "finetune.init_from" in str(info.value)


def test_two_datasets_with_the_same_own_name(tmp_path):
    """Two dataset directories whose datasets have the same name (no `name` given):
    an error naming the second dataset."""
    from pygfm.data.demo import demo_dataset

    directory = str(demo_dataset("molecules-b3lyp").path)
    config = config_of(datasets=[{"path": directory, "max_samples": 10},
                                 {"path": directory, "max_samples": 10}])
    with pytest.raises(ConfigError) as info:
        Trainer(config, tmp_path / "run", progress=False)
    assert "datasets[1]" in str(info.value) and "molecules-b3lyp" in str(info.value)


def test_resume_without_a_run(tmp_path):
    with pytest.raises(TrainingError, match="last.pt"):
        Trainer(config_of(), tmp_path / "empty", resume=True, progress=False)


# ----------------------------------------------------------------- other code paths
@pytest.mark.parametrize("precision", ["fp64", "bf16"])
def test_precisions(precision, tmp_path):
    config = config_of(precision=precision)
    summary = train(config, tmp_path / "run", progress=False)
    rows = metrics_rows(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert summary["precision"] == precision
    assert math.isfinite(summary["heads"]["molecules-b3lyp"]["energy_mae"])
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert saved["dtype"] == ("float64" if precision == "fp64" else "float32")
    model = pygfm.load(tmp_path / "run" / "best.pt")
    out = model.predict([pygfm.data.Sample(numbers=[1, 8, 1], positions=[
        [0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [1.2, 0.93, 0.0]]).to_ase()])
    assert math.isfinite(float(out["energy"][0]))


def test_direct_forces_stress_and_huber(tmp_path):
    metals = {"path": "demo:metals-emt", "max_samples": 12, "validation_fraction": 0.003}
    config = config_of(datasets=[metals, B3LYP], model={"direct_forces": True},
                       loss={"kind": "huber", "stress": 1.0, "direct_forces": 0.5},
                       sampling={"batch_atoms": 150})
    summary = train(config, tmp_path / "run", progress=False)
    assert set(summary["heads"]) == {"metals-emt", "molecules-b3lyp"}
    model = pygfm.load(tmp_path / "run" / "best.pt")
    assert model.force_heads is not None and model.head_config["direct_forces"] is True
    assert all(math.isfinite(float(r["train_loss"])) for r in metrics_rows(tmp_path / "run"))


def test_plateau_schedule_and_max_time(tmp_path):
    config = config_of(schedule={"kind": "plateau", "plateau_patience": 0,
                                 "plateau_factor": 0.5, "warmup_steps": 0},
                       training={"max_steps": 100, "eval_every": 1, "max_time": 1e-6})
    summary = train(config, tmp_path / "run", progress=False)
    # max_time of a microsecond: one step, then the run ends (validated and saved)
    assert summary["steps"] == 1 and "max_time" in summary["stopped"]
    rows = metrics_rows(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [1]
    assert (tmp_path / "run" / "best.pt").is_file()
    json.loads((tmp_path / "run" / "summary.json").read_text())


def test_train_loss_alone_is_the_mean_step_loss(tmp_path):
    """The control of test_cli_train.py::test_train_loss_is_the_loss_of_the_global_batch:
    alone, train_loss equals train_energy_mae for that config."""
    train(resolve(TRAIN_LOSS_CONFIG), tmp_path / "run", progress=False)
    rows = metrics_rows(tmp_path / "run")
    assert len(rows) == 2
    for row in rows:
        assert float(row["train_loss"]) == pytest.approx(
            float(row["train_energy_mae/molecules-b3lyp"]), rel=1e-4), row


# ----------------------------------------------------------------- bad structures
def test_a_dataset_with_overlapping_atoms_stops_naming_the_sample(tmp_path, monkeypatch):
    """A dataset written before pygfm-data convert checked distances: the first
    step fails naming the dataset and the sample, not with a NaN loss."""
    import ase

    import pygfm.data.overlap as overlap
    from pygfm.data import write_dataset
    from pygfm.train.trainer import TrainingError, train

    structures = []
    for k in range(6):
        atoms = ase.Atoms("H2O", positions=[[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]])
        if k == 4:
            atoms.positions[1] = atoms.positions[0]
        atoms.info["energy"] = -14.0 - 0.01 * k
        structures.append(atoms)
    with monkeypatch.context() as patch:  # as an older pygfm wrote it
        patch.setattr(overlap, "sample_overlap", lambda *args: None)
        write_dataset(tmp_path / "old", structures, name="old", fidelity="test")
    with pytest.raises(ValueError) as refused:
        write_dataset(tmp_path / "new", structures, name="new", fidelity="test")
    assert "sample 4: atoms 0 and 1 are 0.0000 Å apart" in str(refused.value)
    config = config_of([{"path": str(tmp_path / "old"), "validation_fraction": 0.0}],
                       training={"max_steps": 2, "eval_every": 2, "plots": False})
    with pytest.raises(TrainingError, match=r"dataset 'old', sample 4 \(H2O\): atoms 0 and 1 "
                                            r"are 0.0000 Å apart"):
        train(config, tmp_path / "run", progress=False)

"""pygfm.train.config: the YAML schema, defaults, validation errors that name the
dotted key, ``--set`` overrides, load_config / dump_config, the shipped configs."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import yaml

from pygfm.data.adios import MANIFEST
from pygfm.train import config as cfg
from pygfm.train.config import (DEMO_CONFIG, DEMO_FINETUNE_CONFIG, SCHEMA, ConfigError,
                                apply_overrides, defaults, dump_config, load_config, resolve)

DATASETS = [{"path": "demo:molecules-dft"}, {"path": "demo:metals-emt"}]


def given(**sections) -> dict:
    out = {"datasets": copy.deepcopy(DATASETS)}
    out.update(copy.deepcopy(sections))
    return out


def error_of(content, base=None) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(content, base=base)
    return str(info.value)


def names_key(message: str, key: str) -> bool:
    """The message starts with (or contains) ``key`` as a whole dotted key."""
    return re.search(rf"(^|[\s'\"`]){re.escape(key)}(:|\s|$|'|\"|`)", message) is not None


# ----------------------------------------------------------------- defaults
def test_defaults_cover_the_schema_and_resolve_to_themselves():
    d = defaults()
    assert d["datasets"] == []
    for section, spec in SCHEMA.items():
        assert section in d
        if isinstance(spec, dict):
            assert set(d[section]) == set(spec), section
            for key, field in spec.items():
                assert d[section][key] == field.default, f"{section}.{key}"
    resolved = resolve(given())
    expected = defaults()
    expected["datasets"] = resolved["datasets"]
    assert resolved == expected
    # the datasets got every DATASET key with its default, and a head name
    first = resolved["datasets"][0]
    assert set(first) == set(cfg.DATASET)
    assert first["name"] == "molecules-dft" and first["weight"] == 1.0
    assert first["validation_fraction"] == cfg.DATASET["validation_fraction"].default
    # resolving a resolved config changes nothing (what resume and checkpoints rely on)
    assert resolve(copy.deepcopy(resolved)) == resolved


def test_dump_config_round_trips():
    resolved = resolve(given(optimizer={"lr": 0.002}, training={"max_time": 12.5}))
    text = dump_config(resolved)
    assert yaml.safe_load(text) == resolved
    assert resolve(yaml.safe_load(text)) == resolved
    # defaults() dumps too (what --print-defaults prints)
    assert yaml.safe_load(dump_config(defaults())) == defaults()


def test_shipped_configs_load():
    demo = load_config(DEMO_CONFIG)
    assert [d["name"] for d in demo["datasets"]] == ["metals-emt", "molecules-xtb",
                                                     "molecules-dft"]
    assert demo["datasets"][2]["weight"] == 2.0
    finetune = load_config(DEMO_FINETUNE_CONFIG)
    assert [d["name"] for d in finetune["datasets"]] == ["molecules-b3lyp"]
    assert finetune["finetune"]["init_from"] is None
    assert finetune["finetune"]["compare_scratch"] is True
    # load_config() with no path is the demo
    assert load_config() == demo


def test_values_are_converted_to_their_kind():
    resolved = resolve(given(model={"n_features": 16.0}, optimizer={"lr": 1},
                             training={"max_time": 3}))
    assert resolved["model"]["n_features"] == 16 and type(resolved["model"]["n_features"]) is int
    assert resolved["optimizer"]["lr"] == 1.0 and type(resolved["optimizer"]["lr"]) is float
    assert type(resolved["training"]["max_time"]) is float
    # optional values take null
    resolved = resolve(given(optimizer={"grad_clip": None}, training={"ema_decay": None}))
    assert resolved["optimizer"]["grad_clip"] is None
    assert resolved["training"]["ema_decay"] is None
    # a dataset given as a bare string is its path
    resolved = resolve({"datasets": ["demo:molecules-dft"]})
    assert resolved["datasets"][0]["path"] == "demo:molecules-dft"


def test_scientific_notation_in_a_yaml_file_is_a_number(tmp_path):
    # `lr: 3e-4` is how everyone writes a learning rate (PyYAML reads it as a string)
    path = tmp_path / "c.yaml"
    path.write_text("datasets: [demo:molecules-dft]\noptimizer:\n  lr: 3e-4\n"
                    "training:\n  max_time: 1e3\n")
    config = load_config(path)
    assert config["optimizer"]["lr"] == pytest.approx(3e-4)
    assert config["training"]["max_time"] == pytest.approx(1000.0)


# ----------------------------------------------------------------- errors name the key
@pytest.mark.parametrize("content, key", [
    (given(bogus=1), "bogus"),
    (given(optimizer={"lrr": 0.1}), "optimizer.lrr"),
    (given(model={"n_features": 8, "n_feature": 8}), "model.n_feature"),
    ({"datasets": [{"path": "demo:molecules-dft"},
                   {"path": "demo:metals-emt", "wieght": 2.0}]}, "datasets[1].wieght"),
], ids=["top-level", "nested", "nested-near-miss", "in-datasets[1]"])
def test_unknown_key(content, key):
    message = error_of(content)
    assert names_key(message, key), message
    assert "unknown key" in message


@pytest.mark.parametrize("content, key, words", [
    (given(optimizer={"lr": "fast"}), "optimizer.lr", "number"),
    (given(model={"n_features": 8.5}), "model.n_features", "integer"),
    (given(model={"n_features": True}), "model.n_features", "integer"),
    (given(training={"plots": "yes please"}), "training.plots", "true or false"),
    (given(training={"plots": 1}), "training.plots", "true or false"),
    (given(device=3), "device", "string"),
    (given(seed=None), "seed", "required"),
    (given(optimizer={"lr": float("nan")}), "optimizer.lr", "finite"),
    (given(optimizer=[1, 2]), "optimizer", "mapping"),
    ({"datasets": [{"path": "demo:molecules-dft"}, {"path": "demo:metals-emt", "weight": "x"}]},
     "datasets[1].weight", "number"),
    ({"datasets": [{"path": "demo:molecules-dft", "max_samples": 2.5}]},
     "datasets[0].max_samples", "integer"),
    ({"datasets": {"path": "demo:molecules-dft"}}, "datasets", "list"),
    ({"datasets": [3]}, "datasets[0]", "mapping"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_wrong_type(content, key, words):
    message = error_of(content)
    assert names_key(message, key), message
    assert words in message, message


@pytest.mark.parametrize("content, key", [
    (given(optimizer={"lr": 0.0}), "optimizer.lr"),            # exclusive minimum
    (given(optimizer={"lr": -1e-3}), "optimizer.lr"),
    (given(optimizer={"beta2": 1.5}), "optimizer.beta2"),      # maximum
    (given(model={"n_features": 0}), "model.n_features"),
    (given(model={"cutoff": 0}), "model.cutoff"),
    (given(threads=0), "threads"),
    (given(training={"eval_every": 0}), "training.eval_every"),
    (given(training={"ema_decay": 1.01}), "training.ema_decay"),
    (given(schedule={"plateau_factor": 0.0}), "schedule.plateau_factor"),
    (given(distributed={"timeout": 0.5}), "distributed.timeout"),
    ({"datasets": [{"path": "demo:molecules-dft", "validation_fraction": 0.95}]},
     "datasets[0].validation_fraction"),
    ({"datasets": [{"path": "demo:molecules-dft"},
                   {"path": "demo:metals-emt", "max_samples": 0}]}, "datasets[1].max_samples"),
    ({"datasets": [{"path": "demo:molecules-dft", "loss_weight": -1}]},
     "datasets[0].loss_weight"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_out_of_range(content, key):
    message = error_of(content)
    assert names_key(message, key), message
    assert "must be" in message


@pytest.mark.parametrize("content, key", [
    (given(precision="fp16"), "precision"),
    (given(loss={"kind": "l1"}), "loss.kind"),
    (given(schedule={"kind": "linear"}), "schedule.kind"),
    (given(model={"activation": "relu"}), "model.activation"),
    (given(finetune={"trunk": "freeze"}), "finetune.trunk"),
    (given(distributed={"backend": "mpi"}), "distributed.backend"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_choice(content, key):
    message = error_of(content)
    assert names_key(message, key), message
    assert "must be one of" in message


def test_dataset_path_errors(tmp_path):
    message = error_of({"datasets": [{"path": "demo:molecules-dft"}, {"weight": 2.0}]})
    assert names_key(message, "datasets[1].path"), message
    message = error_of({"datasets": [{"path": str(tmp_path / "nowhere")}]})
    assert names_key(message, "datasets[0].path") and "does not exist" in message, message
    message = error_of({"datasets": [{"path": "demo:no-such-set"}]})
    assert names_key(message, "datasets[0].path") and "no-such-set" in message, message
    (tmp_path / "not-a-dataset").mkdir()
    message = error_of({"datasets": [{"path": str(tmp_path / "not-a-dataset")}]})
    assert names_key(message, "datasets[0].path") and "not a pygfm dataset" in message, message
    message = error_of({"datasets": [{"path": "demo:molecules-dft",
                                      "validation": str(tmp_path / "gone")}]})
    assert names_key(message, "datasets[0].validation"), message
    message = error_of({"datasets": []})
    assert names_key(message, "datasets"), message
    message = error_of({})
    assert names_key(message, "datasets"), message


def test_relative_dataset_paths_are_taken_from_the_config_directory(tmp_path):
    (tmp_path / "sets" / "mine").mkdir(parents=True)
    (tmp_path / "sets" / "mine" / MANIFEST).write_text("{}")
    path = tmp_path / "c.yaml"
    path.write_text("datasets:\n  - path: sets/mine\n    name: mine\n")
    config = load_config(path)
    assert config["datasets"][0]["path"] == str((tmp_path / "sets" / "mine").resolve())
    path.write_text("datasets:\n  - path: sets/yours\n")
    with pytest.raises(ConfigError, match=re.escape("datasets[0].path")):
        load_config(path)


def test_init_from_must_exist(tmp_path):
    message = error_of(given(finetune={"init_from": str(tmp_path / "missing.pt")}))
    assert names_key(message, "finetune.init_from") and "does not exist" in message, message
    # relative to the config's directory
    (tmp_path / "here.pt").write_bytes(b"x")
    path = tmp_path / "c.yaml"
    path.write_text("datasets: [demo:molecules-dft]\nfinetune:\n  init_from: here.pt\n")
    assert load_config(path)["finetune"]["init_from"] == str((tmp_path / "here.pt").resolve())


def test_duplicate_head_names():
    message = error_of({"datasets": [{"path": "demo:molecules-dft"},
                                     {"path": "demo:molecules-dft"}]})
    assert names_key(message, "datasets") and "molecules-dft" in message, message
    message = error_of({"datasets": [{"path": "demo:molecules-dft", "name": "mol"},
                                     {"path": "demo:molecules-b3lyp", "name": "mol"}]})
    assert names_key(message, "datasets") and "'mol'" in message, message
    # an explicit name that clashes with another dataset's default name
    message = error_of({"datasets": [{"path": "demo:molecules-dft", "name": "metals-emt"},
                                     {"path": "demo:metals-emt"}]})
    assert "metals-emt" in message, message
    # the same data under two names is fine
    resolved = resolve({"datasets": [{"path": "demo:molecules-dft"},
                                     {"path": "demo:molecules-dft", "name": "again"}]})
    assert [d["name"] for d in resolved["datasets"]] == ["molecules-dft", "again"]


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [demo:molecules-dft\noptimizer: {lr: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="datasets"):
        load_config(empty)
    nested_unknown = tmp_path / "nested.yaml"
    nested_unknown.write_text("datasets: [demo:molecules-dft]\nloss:\n  forcse: 1.0\n")
    with pytest.raises(ConfigError, match=re.escape("loss.forcse")):
        load_config(nested_unknown)


# ----------------------------------------------------------------- --set overrides
def test_set_parses_values_as_yaml():
    out = apply_overrides(given(), [
        "model.n_features=16", "training.plots=false", "optimizer.grad_clip=null",
        "training.max_time=2.5", "datasets[1].weight=3", "datasets[0].name=mol",
        "seed=7", "precision=fp64", "loss.kind=huber", "schedule.warmup_steps=0",
        "optimizer.lr=0.0003"])
    assert out["model"]["n_features"] == 16 and type(out["model"]["n_features"]) is int
    assert out["training"]["plots"] is False
    assert out["optimizer"]["grad_clip"] is None
    assert out["training"]["max_time"] == 2.5
    assert out["datasets"][1]["weight"] == 3 and out["datasets"][0]["name"] == "mol"
    assert out["seed"] == 7 and out["precision"] == "fp64" and out["loss"]["kind"] == "huber"
    resolved = resolve(out)
    assert resolved["datasets"][1]["weight"] == 3.0
    assert resolved["datasets"][0]["name"] == "mol"
    assert resolved["optimizer"]["lr"] == pytest.approx(3e-4)
    # the input is not modified
    assert given() == {"datasets": DATASETS}


def test_set_scientific_notation():
    # the example of the CLI's help and of the config module: --set optimizer.lr=3e-4
    resolved = resolve(apply_overrides(given(), ["optimizer.lr=3e-4"]))
    assert resolved["optimizer"]["lr"] == pytest.approx(3e-4)


def test_set_replaces_and_adds():
    out = apply_overrides(given(), ["datasets[1]=demo:molecules-b3lyp", "finetune.trunk=frozen"])
    resolved = resolve(out)
    assert resolved["datasets"][1]["path"] == "demo:molecules-b3lyp"
    assert resolved["finetune"]["trunk"] == "frozen"


def test_set_a_key_of_a_dataset_given_as_a_bare_path():
    # `datasets: [demo:molecules-dft]` is a valid config; --set datasets[0].weight=2 on it
    out = apply_overrides({"datasets": ["demo:molecules-dft"]}, ["datasets[0].weight=2"])
    assert resolve(out)["datasets"][0]["weight"] == 2.0


def test_set_errors_name_the_key():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(given(), ["optimizer.lr"])
    with pytest.raises(ConfigError, match="empty key"):
        apply_overrides(given(), ["=3"])
    with pytest.raises(ConfigError) as info:
        apply_overrides(given(), ["optimizer.lr=[0.1"])
    assert "optimizer.lr" in str(info.value) and "cannot parse" in str(info.value)
    with pytest.raises(ConfigError) as info:
        apply_overrides(given(), ["datasets[x].weight=1"])
    assert "datasets" in str(info.value) and "index" in str(info.value)
    # the checks of the schema apply to overridden values, naming the key
    for text, key in (("optimizer.lr=fast", "optimizer.lr"), ("optimizer.lrr=0.1", "optimizer.lrr"),
                      ("model.n_features=yes", "model.n_features"), ("precision=fp8", "precision"),
                      ("training.max_steps=-1", "training.max_steps"),
                      ("training.max_steps=", "training.max_steps"),
                      ("datasets[1].wieght=1", "datasets[1].wieght"),
                      ("datasets[0].path=demo:nope", "datasets[0].path")):
        with pytest.raises(ConfigError) as info:
            resolve(apply_overrides(given(), [text]))
        assert names_key(str(info.value), key), (text, str(info.value))


def test_set_bad_dataset_index_names_the_key_as_written():
    # DATASETS has two entries: index 5 does not exist
    with pytest.raises(ConfigError) as info:
        apply_overrides(given(), ["datasets[5].weight=1"])
    message = str(info.value)
    assert "no such dataset index" in message
    assert "datasets[5]" in message, message


def test_bad_device_is_reported_as_a_config_error(tmp_path, monkeypatch):
    """A device string torch cannot parse is an error naming `device`, at load time
    or when the run starts (not a bare RuntimeError from torch)."""
    from _train_helpers import demo_cache

    monkeypatch.setenv("PYGFM_CACHE", str(demo_cache()))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(ConfigError) as info:
            from pygfm.train import Trainer
            config = resolve({"datasets": ["demo:molecules-b3lyp"], "device": "gpu",
                              "model": {"n_features": 8, "n_interactions": 1}})
            Trainer(config, tmp_path / "run", progress=False)
        assert names_key(str(info.value), "device"), str(info.value)
    finally:
        torch.set_num_threads(threads)

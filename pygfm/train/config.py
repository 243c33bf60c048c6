"""Training configuration: a YAML file checked against a schema with defaults.

Every setting has a default (``pygfm-train --print-defaults`` shows them all),
so a config names only what it changes. Loading checks every key: an unknown
key, a value of the wrong type or out of range, or a dataset or checkpoint file
that does not exist is an error naming the key (``training.lr``,
``datasets[2].path``). ``--set key=value`` overrides use the same dotted keys
and the same checks; values are parsed as YAML (``--set optimizer.lr=3e-4``).

The resolved config (defaults filled in, overrides applied) is saved in the run
directory as ``config.yaml``, and in every checkpoint.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "load_config", "resolve", "apply_overrides", "defaults",
           "dump_config", "SCHEMA", "DEMO_CONFIG", "DEMO_FINETUNE_CONFIG"]

_HERE = Path(__file__).resolve().parent
DEMO_CONFIG = _HERE / "configs" / "demo.yaml"
DEMO_FINETUNE_CONFIG = _HERE / "configs" / "demo-finetune.yaml"


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


@dataclass(frozen=True)
class Field:
    kind: Any                      # int, float, bool, str, list, or "path"
    default: Any = None
    doc: str = ""
    optional: bool = False         # None allowed
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False


# A dataset entry of the `datasets` list.
DATASET = {
    "name": Field(str, None, "head name (default: the dataset's own name)", optional=True),
    "path": Field(str, None, "a pygfm dataset directory, or demo:NAME for a shipped demo set"),
    "validation": Field(str, None, "a separate validation dataset (default: split off "
                        "validation_fraction of path)", optional=True),
    "validation_fraction": Field(float, 0.1, "share held out for validation when no "
                                 "validation set is given", minimum=0.0, maximum=0.9),
    "weight": Field(float, 1.0, "sampling weight (times size^alpha)", minimum=0.0),
    "loss_weight": Field(float, 1.0, "multiplies this dataset's loss terms", minimum=0.0),
    "max_samples": Field(int, None, "use at most this many training structures", optional=True,
                         minimum=1),
}

SCHEMA: dict[str, Any] = {
    "seed": Field(int, 0, "seeds weights, splits and sampling"),
    "device": Field(str, "auto", "auto (cuda if available), cpu, cuda, cuda:N"),
    "precision": Field(str, "fp32", "fp64, fp32 or bf16 (bf16: features in BF16, geometry, "
                       "accumulation and master weights in FP32)",
                       choices=("fp64", "fp32", "bf16")),
    "threads": Field(int, None, "CPU threads per rank (default torch's)", optional=True,
                     minimum=1),
    "datasets": Field(list, None, "list of datasets, one head each (see DATASET keys)"),
    "sampling": {
        "alpha": Field(float, 0.5, "sampling temperature: p(dataset) ~ weight * size^alpha "
                       "(0: equal, 1: proportional)", minimum=0.0),
        "samples_per_epoch": Field(int, None, "structures per epoch over all ranks "
                                   "(default: the sum of the training sets)", optional=True,
                                   minimum=1),
        "batch_atoms": Field(int, 1024, "atom budget of a batch (per rank)", minimum=1),
        "batch_edges": Field(int, None, "pair budget of a batch (per rank)", optional=True,
                             minimum=1),
        "prefetch": Field(int, 2, "batches prepared ahead in a thread", minimum=0),
    },
    "data": {
        "store": Field(str, "memory", "memory (each rank holds or reads every dataset) or "
                       "distributed (each rank holds 1/N of every dataset, reads the rest "
                       "from the other ranks by MPI one-sided access; needs mpiexec/srun); "
                       "the batches are the same", choices=("memory", "distributed")),
    },
    "model": {
        "n_features": Field(int, 64, "PaiNN features per atom", minimum=1),
        "n_interactions": Field(int, 3, "message + update layers", minimum=1),
        "cutoff": Field(float, 5.0, "radial cutoff (Å)", minimum=0.0, exclusive_minimum=True),
        "n_rbf": Field(int, 20, "radial basis functions", minimum=1),
        "radial_basis": Field(str, "gaussian", "", choices=("gaussian", "sinc")),
        "activation": Field(str, "silu", "", choices=("silu", "shifted_softplus", "tanh")),
        "shared_interactions": Field(bool, False, ""),
        "shared_filters": Field(bool, False, ""),
        "head_hidden": Field(int, None, "hidden width of each head (default n_features/2)",
                             optional=True, minimum=1),
        "head_layers": Field(int, 1, "hidden layers of each head (its depth)", minimum=1),
        "direct_forces": Field(bool, False, "also train a direct (non-conservative) force "
                               "head per dataset, for fast screening"),
    },
    "loss": {
        "kind": Field(str, "mse", "mse, mae or huber", choices=("mse", "mae", "huber")),
        "huber_delta": Field(float, 0.01, "Huber's delta (in the loss term's units)",
                             minimum=0.0, exclusive_minimum=True),
        "energy": Field(float, 1.0, "weight of the energy-per-atom term (eV/atom)",
                        minimum=0.0),
        "forces": Field(float, 10.0, "weight of the force term (eV/Å)", minimum=0.0),
        "stress": Field(float, 0.0, "weight of the stress term (eV/Å³)", minimum=0.0),
        "direct_forces": Field(float, 1.0, "weight of the direct force head's term",
                               minimum=0.0),
    },
    "optimizer": {
        "lr": Field(float, 1e-3, "peak learning rate", minimum=0.0, exclusive_minimum=True),
        "weight_decay": Field(float, 0.0, "AdamW weight decay", minimum=0.0),
        "beta1": Field(float, 0.9, "", minimum=0.0, maximum=1.0),
        "beta2": Field(float, 0.999, "", minimum=0.0, maximum=1.0),
        "grad_clip": Field(float, 10.0, "clip the gradient norm (None: off)", optional=True,
                           minimum=0.0, exclusive_minimum=True),
    },
    "schedule": {
        "kind": Field(str, "cosine", "cosine, plateau or constant",
                      choices=("cosine", "plateau", "constant")),
        "warmup_steps": Field(int, 50, "linear warm-up from 0", minimum=0),
        "min_lr_ratio": Field(float, 0.02, "cosine ends at lr * this", minimum=0.0,
                              maximum=1.0),
        "plateau_factor": Field(float, 0.5, "plateau: multiply lr by this", minimum=0.0,
                                maximum=1.0, exclusive_minimum=True),
        "plateau_patience": Field(int, 3, "plateau: evaluations without improvement",
                                  minimum=0),
    },
    "training": {
        "max_steps": Field(int, 1000, "optimizer steps (the run's length); --resume with a "
                           "larger value extends a finished run", minimum=1),
        "max_time": Field(float, None, "stop after this many seconds of training "
                          "(also bounds HPO trials)", optional=True, minimum=0.0,
                          exclusive_minimum=True),
        "eval_every": Field(int, 100, "steps between validations (and checkpoints)",
                            minimum=1),
        "ema_decay": Field(float, 0.99, "exponential moving average of the weights "
                           "(None: off); validation and best.pt use it", optional=True,
                           minimum=0.0, maximum=1.0),
        "early_stopping": Field(int, None, "stop after this many validations without "
                                "improvement (None: off)", optional=True, minimum=1),
        "objective_energy": Field(float, 1.0, "weight of the mean energy MAE (eV/atom) in "
                                  "the validation objective", minimum=0.0),
        "objective_forces": Field(float, 1.0, "weight of the mean force MAE (eV/Å)",
                                  minimum=0.0),
        "objective_datasets": Field(dict, {}, "per-dataset objective terms, added: {head: "
                                    "{energy: w, forces: w}} (pygfm-hpo's objective.datasets)"),
        "log_every": Field(int, 10, "steps between progress updates", minimum=1),
        "plots": Field(bool, True, "write PNG learning curves and parity plots"),
    },
    "finetune": {
        "init_from": Field("path", None, "checkpoint to start from (its trunk and heads; "
                           "datasets without a head there get a new one)", optional=True),
        "trunk": Field(str, "train", "frozen or train (at lr * trunk_lr_ratio)",
                       choices=("frozen", "train")),
        "trunk_lr_ratio": Field(float, 0.1, "trunk learning rate / head learning rate",
                                minimum=0.0),
        "compare_scratch": Field(bool, False, "also train the same model from scratch with "
                                 "the same budget and compare"),
    },
    "distributed": {
        "backend": Field(str, "auto", "auto (gloo on CPU, nccl on CUDA), gloo, nccl",
                         choices=("auto", "gloo", "nccl")),
        "timeout": Field(float, 300.0, "seconds a rank waits for the others before the job "
                         "fails", minimum=1.0),
    },
}


def defaults() -> dict:
    """The full default configuration (``datasets`` empty)."""
    def fill(schema):
        return {key: fill(value) if isinstance(value, dict) else copy.deepcopy(value.default)
                for key, value in schema.items()}
    out = fill(SCHEMA)
    out["datasets"] = []
    return out


def _check_value(key: str, spec: Field, value, base: Path | None):
    if value is None:
        if spec.optional:
            return None
        raise ConfigError(f"{key}: a value is required (got null)")
    kind = spec.kind
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif kind in (str, "path"):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        if kind == "path":
            path = Path(value).expanduser()
            if base is not None and not path.is_absolute():
                path = base / path
            if not path.exists():
                raise ConfigError(f"{key}: {path} does not exist")
            value = str(path)
    if key == "device" and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ConfigError(f"{key}: must be auto, cpu, cuda or cuda:N, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{key}: must be one of {', '.join(map(str, spec.choices))}, "
                          f"got {value!r}")
    if spec.minimum is not None and (value < spec.minimum or
                                     (spec.exclusive_minimum and value == spec.minimum)):
        relation = ">" if spec.exclusive_minimum else ">="
        raise ConfigError(f"{key}: must be {relation} {spec.minimum}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise ConfigError(f"{key}: must be <= {spec.maximum}, got {value!r}")
    return value


def _resolve_dataset_path(key: str, value: str, base: Path | None) -> str:
    if value.startswith("demo:"):
        from ..data.demo import DEMO_DATASETS
        name = value[5:]
        if name not in DEMO_DATASETS:
            raise ConfigError(f"{key}: no demo dataset {name!r}; there are "
                              f"{', '.join(DEMO_DATASETS)}")
        return value
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    from ..data.adios import MANIFEST
    if not (path / MANIFEST).exists():
        raise ConfigError(f"{key}: {path} is not a pygfm dataset (no {MANIFEST}); convert "
                          "structures with `pygfm-data convert`")
    return str(path)


def _merge(prefix: str, schema: dict, given, base: Path | None) -> dict:
    if not isinstance(given, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {given!r}")
    unknown = sorted(set(given) - set(schema))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key; known keys here: "
                          f"{', '.join(sorted(schema))}")
    out = {}
    for key, spec in schema.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, dict):
            out[key] = _merge(name, spec, given.get(key, {}) or {}, base)
        elif key == "datasets":
            out[key] = _datasets(name, given.get(key, []), base)
        elif spec.kind is dict:  # the only mapping-valued setting: objective_datasets
            from .objective import check_dataset_weights
            out[key] = check_dataset_weights(name, copy.deepcopy(given.get(key, spec.default)))
        else:
            out[key] = _check_value(name, spec, copy.deepcopy(given.get(key, spec.default)),
                                    base)
    return out


def _datasets(key: str, value, base: Path | None) -> list:
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of datasets, got {value!r}")
    out = []
    for index, entry in enumerate(value):
        where = f"{key}[{index}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with at least `path`, got {entry!r}")
        if "path" not in entry:
            raise ConfigError(f"{where}.path: a dataset needs a path (or demo:NAME)")
        resolved = _merge(where, DATASET, entry, base)
        resolved["path"] = _resolve_dataset_path(f"{where}.path", resolved["path"], base)
        if resolved["validation"] is not None:
            resolved["validation"] = _resolve_dataset_path(f"{where}.validation",
                                                           resolved["validation"], base)
        if resolved["name"] is None:
            resolved["name"] = (resolved["path"][5:] if resolved["path"].startswith("demo:")
                                else None)
        out.append(resolved)
    named = [d["name"] for d in out if d["name"]]
    duplicates = sorted({n for n in named if named.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{key}: head name {duplicates[0]!r} is used twice; give each "
                          "dataset its own `name`")
    return out


def resolve(given: dict | None, base: Path | None = None) -> dict:
    """Check ``given`` against the schema and fill in defaults; relative paths are
    taken from ``base`` (the config file's directory)."""
    config = _merge("", SCHEMA, given or {}, base)
    if not config["datasets"]:
        raise ConfigError("datasets: the config lists no datasets")
    return config


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value (e.g. optimizer.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}: cannot parse {raw!r} ({error})") from None
    parts = []
    for part in key.split("."):
        if "[" in part and part.endswith("]"):
            name, index = part[:-1].split("[", 1)
            parts.extend([name, index])
        else:
            parts.append(part)
    return parts, value


def apply_overrides(given: dict, overrides) -> dict:
    """``given`` with each ``key=value`` of ``overrides`` set (dotted keys;
    ``datasets[0].weight`` indexes the dataset list)."""
    out = copy.deepcopy(given or {})
    for text in overrides or []:
        parts, value = _parse_override(text)
        key_text = text.split("=", 1)[0].strip()
        target = out
        for depth, part in enumerate(parts[:-1]):
            name = ".".join(parts[:depth + 1])
            if isinstance(target, list):
                if not part.isdigit() or int(part) >= len(target):
                    raise ConfigError(f"--set {key_text}: no such dataset index [{part}] (the config "
                                      f"lists {len(target)})")
                if isinstance(target[int(part)], str):  # a bare path: make it a mapping
                    target[int(part)] = {"path": target[int(part)]}
                target = target[int(part)]
                continue
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key_text}: {name} is not a section")
            if not isinstance(target.get(part), (dict, list)):
                target[part] = [] if part == "datasets" else {}
            target = target[part]
        last = parts[-1]
        if isinstance(target, list):
            if not last.isdigit() or int(last) >= len(target):
                raise ConfigError(f"--set {key_text}: no such dataset index [{last}] (the config lists "
                                  f"{len(target)})")
            target[int(last)] = value
        else:
            target[last] = value
    return out


def read_mapping(path: Path) -> dict:
    """A YAML file's mapping ({} when empty); ConfigError names a missing file,
    invalid YAML or a file that is not a mapping."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        given = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections")
    return given


def load_config(path=None, overrides=None) -> dict:
    """Read a YAML config (default: the shipped demo), apply overrides, check
    and fill in defaults."""
    path = Path(path) if path is not None else DEMO_CONFIG
    return resolve(apply_overrides(read_mapping(path), overrides), base=path.parent.resolve())


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)

"""The ``pygfm-hpo`` campaign configuration: a YAML file checked when it loads.

    base: demo                    # the training config every trial starts from
                                  # (a path, relative to this file; demo: the shipped one)
    set: [training.eval_every=50] # fixed overrides for every trial (and the best config)
    space:                        # dotted training keys (as in pygfm-train --set)
      model.n_features: {low: 16, high: 128, log: true}    # a range (int or float
      optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true} #   as the key's type)
      model.n_rbf: [8, 16, 32]                             # a list: choices
    trials: 20                    # how many trials
    budget: {max_steps: 300, max_time: 600}   # per trial (training.max_steps/max_time)
    objective:                    # minimized, from the validation MAEs of best.pt
      energy: 1.0                 # x mean energy MAE over heads (eV/atom)
      forces: 0.1                 # x mean force MAE over heads (eV/Å)
      datasets: {molecules-dft: {energy: 2.0}}   # per-dataset terms (added)
    search: {seed: 0, initial_points: 5, surrogate: ET, acquisition: UCBd, kappa: 1.96}
    evaluator: {kind: process, workers: 1, launcher: null, trial_timeout: null}
    promote: {set: [training.max_steps=3000]}   # what --promote K changes

Every space key, bound and choice is checked against pygfm-train's schema (type
and range) before anything runs; an error names the key.
"""

from __future__ import annotations

import copy
import math
import shlex
from pathlib import Path
from typing import Any

import yaml

from ..train.config import (DATASET, DEMO_CONFIG, SCHEMA, ConfigError, Field, _check_value,
                            apply_overrides, read_mapping, resolve)

__all__ = ["load_hpo_config", "trial_config", "space_key_field",
           "HPO_DEMO_CONFIG"]

HPO_DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"

_TOP = ("base", "set", "space", "trials", "budget", "objective", "search", "evaluator",
        "promote")

_DEFAULTS: dict[str, Any] = {
    "base": "demo",
    "set": [],
    "space": {},
    "trials": 10,
    "budget": {"max_steps": 200, "max_time": None, "eval_every": None},
    "objective": {"energy": 1.0, "forces": 0.1, "datasets": {}},
    "search": {"method": "cbo", "seed": 0, "initial_points": None, "surrogate": "ET",
               "acquisition": "UCBd", "kappa": 1.96},
    "evaluator": {"kind": "process", "workers": 1, "launcher": None, "trial_timeout": None,
                  "threads": None, "gpus_per_node": 0},
    "promote": {"set": [], "workers": None},
}

_SURROGATES = ("ET", "RF", "GBRT", "HGBRT", "GP", "DUMMY")
_ACQUISITIONS = ("UCB", "UCBd", "EI", "EId", "PI", "PId", "LCB")


def space_key_field(key: str, n_datasets: int) -> Field:
    """The training schema's Field of a dotted key (``model.cutoff``,
    ``datasets[1].weight``); ConfigError when the key does not exist."""
    if key.startswith("datasets["):
        inside, _, rest = key[len("datasets["):].partition("]")
        if not inside.isdigit() or not rest.startswith(".") or rest[1:] not in DATASET:
            raise ConfigError(f"space.{key}: not a dataset setting; use datasets[N].KEY with "
                              f"KEY one of {', '.join(sorted(DATASET))}")
        if int(inside) >= n_datasets:
            raise ConfigError(f"space.{key}: the base config lists {n_datasets} dataset(s)")
        return DATASET[rest[1:]]
    node: Any = SCHEMA
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"space.{key}: no such training setting (see "
                              "pygfm-train --print-defaults)")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"space.{key}: is a section, not a setting")
    if key == "datasets":
        raise ConfigError("space.datasets: the dataset list cannot be searched; search "
                          "datasets[N].weight or loss_weight")
    return node


def _number(where: str, value) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return value


def _space(space, n_datasets: int) -> dict:
    """{key: {"kind": "int"|"float"|"choice", ...}} checked against the schema."""
    if not isinstance(space, dict) or not space:
        raise ConfigError("space: give at least one setting to search, e.g. "
                          "`optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}`")
    out = {}
    for key, spec in space.items():
        key = str(key)
        field = space_key_field(key, n_datasets)
        where = f"space.{key}"
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: an empty list of choices")
            choices = [_check_value(f"{where}[{i}]", field, copy.deepcopy(v), None)
                       for i, v in enumerate(spec)]
            if any(c is None for c in choices):
                raise ConfigError(f"{where}: null is not a searchable choice")
            if len({repr(c) for c in choices}) != len(choices):
                raise ConfigError(f"{where}: a choice is listed twice")
            out[key] = {"kind": "choice", "choices": choices}
            continue
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a list of choices or a range "
                              f"{{low: .., high: .., log: false}}, got {spec!r}")
        unknown = sorted(set(spec) - {"low", "high", "log"})
        if unknown or "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: a range has keys low, high and optionally log "
                              f"(got {sorted(spec)})")
        if field.kind not in (int, float):
            raise ConfigError(f"{where}: a {getattr(field.kind, '__name__', field.kind)} "
                              "setting takes a list of choices, not a range")
        low, high = _number(f"{where}.low", spec["low"]), _number(f"{where}.high", spec["high"])
        low = _check_value(f"{where}.low", field, low, None)
        high = _check_value(f"{where}.high", field, high, None)
        if not low < high:
            raise ConfigError(f"{where}: low must be below high, got {low} and {high}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        out[key] = {"kind": "int" if field.kind is int else "float", "low": low,
                    "high": high, "log": log}
    return out


def _section(name: str, given, defaults: dict) -> dict:
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise ConfigError(f"{name}: expected a mapping, got {given!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key; known keys here: "
                          f"{', '.join(sorted(defaults))}")
    return {**copy.deepcopy(defaults), **given}


def _optional(where: str, value, kind, minimum=None):
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if kind is float:
        value = _number(where, value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value!r}")
    return value


def _overrides(where: str, value) -> list:
    if value is None:
        return []
    if isinstance(value, dict):  # {key: value} is accepted as well as ["key=value"]
        return [f"{k}={_render(v)}" for k, v in value.items()]
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{where}: expected a list of key=value overrides, got {value!r}")
    return list(value)


def _base(value, here: Path) -> Path:
    if value in (None, "demo"):
        return DEMO_CONFIG
    if not isinstance(value, str):
        raise ConfigError(f"base: expected a training config path or demo, got {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else here / path
    if not path.is_file():
        raise ConfigError(f"base: {path} does not exist")
    return path.resolve()


def load_hpo_config(path=None, overrides=None) -> dict:
    """Read, check and complete a campaign config (default: the shipped demo
    search). ``overrides`` are ``key=value`` strings on the campaign's keys
    (``trials=4``, ``budget.max_steps=20``)."""
    path = Path(path) if path is not None else HPO_DEMO_CONFIG
    given = apply_overrides(read_mapping(path), overrides)
    unknown = sorted(set(given) - set(_TOP))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; known keys: {', '.join(_TOP)}")
    here = path.parent.resolve()
    out: dict[str, Any] = {"base": str(_base(given.get("base"), here))}
    out["set"] = _overrides("set", given.get("set"))
    try:
        base_raw = read_mapping(Path(out["base"]))
        base_resolved = resolve(apply_overrides(base_raw, out["set"]),
                                base=Path(out["base"]).parent)
    except ConfigError as error:
        raise ConfigError(f"base ({out['base']}) with set: {error}") from None
    heads = [d["name"] or Path(d["path"]).name for d in base_resolved["datasets"]]
    out["space"] = _space(given.get("space"), len(base_resolved["datasets"]))
    trials = given.get("trials", _DEFAULTS["trials"])
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials: expected a positive integer, got {trials!r}")
    out["trials"] = trials

    budget = _section("budget", given.get("budget"), _DEFAULTS["budget"])
    budget["max_steps"] = _optional("budget.max_steps", budget["max_steps"], int, 1)
    budget["max_time"] = _optional("budget.max_time", budget["max_time"], float, 1.0)
    budget["eval_every"] = _optional("budget.eval_every", budget["eval_every"], int, 1)
    if budget["max_steps"] is None and budget["max_time"] is None:
        raise ConfigError("budget: give max_steps or max_time (or both): a trial must end")
    out["budget"] = budget

    objective = _section("objective", given.get("objective"), _DEFAULTS["objective"])
    for key in ("energy", "forces"):
        objective[key] = _optional(f"objective.{key}", objective[key], float, 0.0) or 0.0
    per = objective["datasets"] or {}
    if not isinstance(per, dict):
        raise ConfigError(f"objective.datasets: expected {{head: {{energy: w, forces: w}}}}, "
                          f"got {per!r}")
    checked = {}
    for name, weights in per.items():
        if name not in heads:
            raise ConfigError(f"objective.datasets.{name}: no such head; the base config's "
                              f"heads are {', '.join(heads)}")
        weights = _section(f"objective.datasets.{name}", weights, {"energy": 0.0, "forces": 0.0})
        checked[name] = {k: _optional(f"objective.datasets.{name}.{k}", v, float, 0.0) or 0.0
                         for k, v in weights.items()}
    objective["datasets"] = checked
    total = objective["energy"] + objective["forces"] + sum(
        w for d in checked.values() for w in d.values())
    if total <= 0:
        raise ConfigError("objective: every weight is zero; nothing to minimize")
    out["objective"] = objective

    search = _section("search", given.get("search"), _DEFAULTS["search"])
    if search["method"] not in ("cbo", "random"):
        raise ConfigError(f"search.method: must be cbo (Bayesian optimization) or random, got "
                          f"{search['method']!r}")
    search["seed"] = _optional("search.seed", search["seed"], int)
    search["initial_points"] = _optional("search.initial_points", search["initial_points"],
                                         int, 1)
    if search["surrogate"] not in _SURROGATES:
        raise ConfigError(f"search.surrogate: must be one of {', '.join(_SURROGATES)}, got "
                          f"{search['surrogate']!r}")
    if search["acquisition"] not in _ACQUISITIONS:
        raise ConfigError(f"search.acquisition: must be one of {', '.join(_ACQUISITIONS)}, "
                          f"got {search['acquisition']!r}")
    search["kappa"] = _optional("search.kappa", search["kappa"], float, 0.0)
    out["search"] = search

    evaluator = _section("evaluator", given.get("evaluator"), _DEFAULTS["evaluator"])
    if evaluator["kind"] not in ("process", "mpi"):
        raise ConfigError(f"evaluator.kind: must be process (local processes) or mpi (ranks "
                          f"of an mpiexec/srun job), got {evaluator['kind']!r}")
    evaluator["workers"] = _optional("evaluator.workers", evaluator["workers"], int, 1)
    evaluator["trial_timeout"] = _optional("evaluator.trial_timeout",
                                           evaluator["trial_timeout"], float, 1.0)
    evaluator["threads"] = _optional("evaluator.threads", evaluator["threads"], int, 1)
    evaluator["gpus_per_node"] = _optional("evaluator.gpus_per_node",
                                           evaluator["gpus_per_node"], int, 0) or 0
    launcher = evaluator["launcher"]
    if isinstance(launcher, str):
        launcher = shlex.split(launcher)
    if launcher is not None and (not isinstance(launcher, list) or not launcher or
                                 not all(isinstance(a, str) for a in launcher)):
        raise ConfigError(f"evaluator.launcher: expected a command prefix such as "
                          f"'srun -N 1 -n 4', got {evaluator['launcher']!r}")
    evaluator["launcher"] = launcher
    out["evaluator"] = evaluator

    promote = _section("promote", given.get("promote"), _DEFAULTS["promote"])
    promote["set"] = _overrides("promote.set", promote["set"])
    promote["workers"] = _optional("promote.workers", promote["workers"], int, 1)
    out["promote"] = promote
    out["heads"] = heads
    # every space value must make a valid trial: check the corners now
    for key, spec in out["space"].items():
        values = spec["choices"] if spec["kind"] == "choice" else [spec["low"], spec["high"]]
        for value in values:
            trial_config(out, {key: value})
    return out


def _render(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def trial_config(campaign: dict, params: dict, *, budget: bool = True,
                 extra: list | None = None) -> dict:
    """The resolved training config of a trial: the base, the campaign's ``set``,
    the trial's ``params``, then (``budget``) the trial budget or ``extra``
    overrides (promotion). ConfigError names the setting that is invalid."""
    base = Path(campaign["base"])
    raw = read_mapping(base)
    overrides = list(campaign["set"])
    overrides += [f"{k}={_render(v)}" for k, v in params.items()]
    objective = campaign["objective"]
    # the trial keeps as best.pt the checkpoint that is best by the campaign's objective
    overrides += [f"training.objective_energy={objective['energy']}",
                  f"training.objective_forces={objective['forces']}",
                  f"training.objective_datasets={_render(objective['datasets'])}"]
    if budget:
        b = campaign["budget"]
        if b["max_steps"] is not None:
            overrides.append(f"training.max_steps={b['max_steps']}")
        if b["max_time"] is not None:
            overrides.append(f"training.max_time={b['max_time']}")
        if b["eval_every"] is not None:
            overrides.append(f"training.eval_every={b['eval_every']}")
    overrides += list(extra or [])
    threads = campaign["evaluator"]["threads"]
    if threads is not None:
        overrides.append(f"threads={threads}")
    config = resolve(apply_overrides(raw, overrides), base=base.parent)
    if budget and config["training"]["eval_every"] > config["training"]["max_steps"]:
        config["training"]["eval_every"] = config["training"]["max_steps"]
    return config

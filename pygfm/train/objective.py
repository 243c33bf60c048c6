"""The validation objective: one number from per-dataset validation errors.

pygfm-train keeps as ``best.pt`` the checkpoint with the lowest objective, and
pygfm-hpo ranks trials by the objective of their ``best.pt``: both call
:func:`objective_value` with the weights of :func:`objective_weights`, so a
trial's checkpoint is the best by the very number the search compares.

    objective = energy  x mean over heads of the energy MAE per atom (eV/atom)
              + forces  x mean over heads of the force MAE (eV/Å)
              + sum over named heads of (their energy weight x their energy MAE
                                         + their forces weight x their force MAE)

A head without a finite MAE (no validation structure carries that label) is
left out of a mean, and a term with nothing to average or a NaN MAE is left
out; when no term is left the objective is NaN (nothing was measured).
"""

from __future__ import annotations

import math

from .config import ConfigError

__all__ = ["objective_weights", "objective_value", "check_dataset_weights"]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def check_dataset_weights(key: str, value) -> dict:
    """``{head: {energy: w, forces: w}}`` checked (weights >= 0, missing ones 0);
    ConfigError names the key."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected {{head: {{energy: w, forces: w}}}}, got {value!r}")
    out = {}
    for head, weights in value.items():
        where = f"{key}.{head}"
        if not isinstance(weights, dict):
            raise ConfigError(f"{where}: expected {{energy: w, forces: w}}, got {weights!r}")
        unknown = sorted(set(weights) - {"energy", "forces"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; known keys here: "
                              "energy, forces")
        checked = {}
        for term in ("energy", "forces"):
            weight = weights.get(term, 0.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                    not math.isfinite(weight) or weight < 0:
                raise ConfigError(f"{where}.{term}: expected a number >= 0, got {weight!r}")
            checked[term] = float(weight)
        out[str(head)] = checked
    return out


def objective_weights(config: dict) -> dict:
    """The objective's weights from a resolved pygfm-train config:
    ``{"energy": w, "forces": w, "datasets": {head: {"energy": w, "forces": w}}}``."""
    training = config["training"]
    return {"energy": training["objective_energy"], "forces": training["objective_forces"],
            "datasets": training.get("objective_datasets") or {}}


def objective_value(weights: dict, metrics: dict) -> float:
    """The objective (lower is better) of validation ``metrics``
    ``{head: {"energy_mae": eV/atom, "forces_mae": eV/Å}}`` (NaN where not
    measured). A per-dataset weight for a head not in ``metrics`` is a KeyError
    naming it."""
    terms = []
    for term in ("energy", "forces"):
        values = [m[f"{term}_mae"] for m in metrics.values() if _finite(m[f"{term}_mae"])]
        if weights[term] and values:
            terms.append(weights[term] * sum(values) / len(values))
    for head, head_weights in weights["datasets"].items():
        if head not in metrics:
            raise KeyError(f"objective datasets: no head {head!r}; the heads are "
                           f"{', '.join(metrics)}")
        for term in ("energy", "forces"):
            value = metrics[head][f"{term}_mae"]
            if head_weights[term] and _finite(value):
                terms.append(head_weights[term] * value)
    return float(sum(terms)) if terms else math.nan

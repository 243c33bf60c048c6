"""What ``pygfm-train --resume`` may change, and whether a run has more to do.

A resumed run continues the saved one exactly, so its config must be the saved
one except for the keys in :data:`RESUMABLE`: the length of the run (which
extends a finished run), and settings that change where and how fast it runs
but not what it computes. Any other difference is refused, naming the key.
"""

from __future__ import annotations

from .config import ConfigError, defaults

__all__ = ["RESUMABLE", "config_differences", "check_resume_config", "nothing_to_do"]

RESUMABLE = frozenset({
    "training.max_steps", "training.max_time", "training.early_stopping",  # the length
    "training.log_every", "training.plots", "threads", "device", "sampling.prefetch",
    "distributed.backend", "distributed.timeout", "data.store",
})


def config_differences(first, second, prefix: str = "") -> list[str]:
    """Dotted keys (``optimizer.lr``, ``datasets[1].weight``) whose values differ."""
    if isinstance(first, dict) and isinstance(second, dict):
        out = []
        for key in list(first) + [k for k in second if k not in first]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in first or key not in second:
                out.append(name)
            else:
                out.extend(config_differences(first[key], second[key], name))
        return out
    if isinstance(first, list) and isinstance(second, list):
        if len(first) != len(second):
            return [f"{prefix} (lists {len(first)} entries, now {len(second)})"]
        return [key for k, (a, b) in enumerate(zip(first, second))
                for key in config_differences(a, b, f"{prefix}[{k}]")]
    return [] if first == second else [prefix]


def _with_defaults(saved, default):
    """``saved`` with the settings it lacks (added to pygfm after the run was
    saved) at their defaults, which is what the run used."""
    if not isinstance(saved, dict) or not isinstance(default, dict):
        return saved
    out = {key: _with_defaults(value, default.get(key)) for key, value in saved.items()}
    for key, value in default.items():
        out.setdefault(key, value)
    return out


def check_resume_config(saved: dict, config: dict, run_dir) -> None:
    """ConfigError naming the keys where ``config`` differs from the ``saved`` run's
    config other than :data:`RESUMABLE`."""
    changed = [k for k in config_differences(_with_defaults(saved, defaults()), config)
               if k not in RESUMABLE]
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more"
                                          if len(changed) > 5 else "")
        raise ConfigError(f"--resume: {shown} differ(s) from the run in {run_dir}; a resumed "
                          "run keeps its settings (only training.max_steps, max_time and "
                          "early_stopping, and where it runs, may change): use the run's "
                          "config, or start a new --run-dir (finetune.init_from to start "
                          "from its weights)")


def nothing_to_do(config: dict, state: dict) -> str | None:
    """Why a saved run (its trainer ``state``) would stop at once under ``config``,
    or None when it has steps left."""
    training = config["training"]
    if state["step"] >= training["max_steps"]:
        return (f"the run is already at step {state['step']} (training.max_steps "
                f"{training['max_steps']}); nothing to do: raise training.max_steps to "
                "extend it")
    if training["max_time"] is not None and state["elapsed"] >= training["max_time"]:
        return (f"the run has already trained {state['elapsed']:.0f} s (training.max_time "
                f"{training['max_time']:g}); nothing to do: raise or unset max_time")
    patience = training["early_stopping"]
    if state["stopped"].startswith("early stopping") and patience is not None and \
            state["bad_evaluations"] >= patience:
        return (f"the run stopped early at step {state['step']} ({state['stopped']}); "
                "nothing to do: raise or unset training.early_stopping to continue it")
    return None

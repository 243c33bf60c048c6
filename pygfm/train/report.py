"""Plots of a training run: learning curves from ``metrics.csv`` and parity plots
(predicted against reference energy per atom and force components) per head.
Written with matplotlib's Agg backend (no display needed), atomically."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .._files import atomic_output

__all__ = ["learning_curves", "parity_plots"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _save(figure, path: Path) -> None:
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight")


def _read(path: Path) -> dict:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = {}
    for row in rows:
        for key, value in row.items():
            try:
                number = float(value) if value not in ("", None) else math.nan
            except ValueError:
                number = math.nan
            columns.setdefault(key, []).append(number)
    return {k: np.asarray(v) for k, v in columns.items()}


def learning_curves(metrics_csv, output) -> Path:
    """Training loss and validation objective, and per-dataset energy and force
    MAE (train dashed, validation solid) against the step."""
    plt = _pyplot()
    data = _read(Path(metrics_csv))
    step = data["step"]
    names = sorted({key.split("/", 1)[1] for key in data if "/" in key})
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(step, data["train_loss"], label="training loss")
    axes[0].plot(step, data["val_objective"], label="validation objective")
    axes[0].set_title("loss")
    for k, name in enumerate(names):
        color = f"C{k % 10}"
        for axis, key, scale in ((axes[1], "energy_mae", 1000), (axes[2], "forces_mae", 1000)):
            val, train = data.get(f"val_{key}/{name}"), data.get(f"train_{key}/{name}")
            if val is not None and np.isfinite(val).any():
                axis.plot(step, val * scale, color=color, label=f"{name} (val)")
            if train is not None and np.isfinite(train).any():
                axis.plot(step, train * scale, color=color, linestyle="--", alpha=0.6,
                          label=f"{name} (train)")
    axes[1].set_title("energy MAE (meV/atom)")
    axes[2].set_title("force MAE (meV/Å)")
    for axis in axes:
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    _save(figure, Path(output))
    plt.close(figure)
    return Path(output)


def parity_plots(pairs: dict, directory) -> list[Path]:
    """``pairs[head] = {"energy": [n, 2], "forces": [m, 2]}`` (reference,
    prediction) -> ``parity_<head>.png`` in ``directory``."""
    plt = _pyplot()
    written = []
    for name, data in pairs.items():
        panels = [(key, np.asarray(data.get(key, np.zeros((0, 2))))) for key in ("energy", "forces")]
        panels = [(key, values) for key, values in panels if len(values)]
        if not panels:
            continue
        figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6))
        axes = np.atleast_1d(axes)
        for axis, (key, values) in zip(axes, panels):
            if len(values) > 50_000:  # keep the file small: a fixed random subset
                values = values[np.random.default_rng(0).choice(len(values), 50_000,
                                                                replace=False)]
            reference, predicted = values[:, 0], values[:, 1]
            low, high = float(min(reference.min(), predicted.min())), \
                float(max(reference.max(), predicted.max()))
            axis.plot([low, high], [low, high], color="0.6", linewidth=1)
            axis.scatter(reference, predicted, s=3, alpha=0.4)
            mae = float(np.abs(predicted - reference).mean())
            unit = "eV/atom" if key == "energy" else "eV/Å"
            axis.set_xlabel(f"reference ({unit})")
            axis.set_ylabel(f"predicted ({unit})")
            label = "energy per atom" if key == "energy" else "force components"
            axis.set_title(f"{name}: {label}\nMAE {1000 * mae:.1f} m{unit}, n = {len(values)}")
            axis.grid(alpha=0.3)
        figure.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        path = Path(directory) / f"parity_{safe}.png"
        _save(figure, path)
        plt.close(figure)
        written.append(path)
    return written

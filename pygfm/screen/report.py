"""The screening histogram: predicted energy per atom, one series per head."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._files import atomic_output

__all__ = ["energy_histogram"]


def energy_histogram(table: dict, columns, output) -> Path:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    values = [np.asarray(table[c], dtype=float) for c in columns]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    bins = np.histogram_bin_edges(finite, bins=60) if finite.size else 10
    for column, v in zip(columns, values):
        axis.hist(v[np.isfinite(v)], bins=bins, histtype="step", linewidth=1.4,
                  label=column.split(":", 1)[1])
    axis.set_xlabel("predicted energy per atom (eV/atom)")
    axis.set_ylabel("structures")
    axis.set_title(f"{len(table['id'])} structures screened")
    axis.grid(alpha=0.3)
    if len(columns) > 1:
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    output = Path(output)
    try:
        with atomic_output(output) as tmp:
            figure.savefig(tmp, dpi=110)
    finally:
        plt.close(figure)
    return output

"""What a search leaves to look at: ``objective.png`` and ``summary.md``."""

from __future__ import annotations

import math
from pathlib import Path

from .._files import atomic_output

__all__ = ["objective_plot", "summary_markdown"]


def objective_plot(records: list, path: Path) -> None:
    """The objective of every trial in order, the best so far, failures marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    trials = [r["trial"] for r in records]
    ok = [(r["trial"], r["objective"]) for r in records if r["status"] == "ok"]
    failed = [r["trial"] for r in records if r["status"] != "ok"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    if ok:
        xs, ys = zip(*ok)
        ax.scatter(xs, ys, s=18, color="tab:blue", label="trial", zorder=3)
        best, line = math.inf, []
        for r in records:
            if r["status"] == "ok":
                best = min(best, r["objective"])
            line.append(best)
        xs_line = [t for t, b in zip(trials, line) if math.isfinite(b)]
        ys_line = [b for b in line if math.isfinite(b)]
        ax.step(xs_line, ys_line, where="post", color="tab:orange", label="best so far")
        if min(ys) > 0 and max(ys) / min(ys) > 20:
            ax.set_yscale("log")
    if failed:
        top = max((y for _, y in ok), default=1.0)
        ax.scatter(failed, [top] * len(failed), marker="x", color="tab:red",
                   label=f"failed ({len(failed)})", zorder=4)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("objective (lower is better)")
    ax.set_title(f"pygfm-hpo: {len(records)} trial(s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_markdown(records: list, ranked: list, config: dict, run_dir: Path,
                     top: int = 10) -> str:
    failed = [r for r in records if r["status"] != "ok"]
    keys = list(config["space"])
    lines = [f"# pygfm-hpo: {run_dir}", "",
             f"{len(records)} of {config['trials']} trial(s) finished, {len(ranked)} succeeded, "
             f"{len(failed)} failed. Objective (lower is better): "
             f"{config['objective']['energy']} x energy MAE (eV/atom) + "
             f"{config['objective']['forces']} x force MAE (eV/Å), means over heads"
             + "".join(f" + {w} x {'energy' if key == 'energy' else 'force'} MAE of {name}"
                       for name, weights in config["objective"]["datasets"].items()
                       for key, w in weights.items() if w)
             + ".", ""]
    if ranked:
        lines += [f"Best: trial {ranked[0]['trial']} (objective {ranked[0]['objective']:.5g});"
                  " `best.yaml` is its ready-to-run training config.", "",
                  "| rank | trial | objective | " + " | ".join(keys) + " | seconds |",
                  "| ---: | ---: | ---: | " + " | ".join("---:" for _ in keys) + " | ---: |"]
        for place, r in enumerate(ranked[:top], 1):
            lines.append(f"| {place} | {r['trial']} | {r['objective']:.5g} | "
                         + " | ".join(_value(r["params"].get(k)) for k in keys)
                         + f" | {r['seconds']:.0f} |")
        lines.append("")
    if failed:
        lines += ["Failed trials:", ""]
        lines += [f"- trial {r['trial']}: {r['error']}" for r in failed]
        lines.append("")
    return "\n".join(lines)

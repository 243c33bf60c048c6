"""The search loop of ``pygfm-hpo``: DeepHyper's centralized Bayesian optimization
(``CBO``) asks for configurations, trials run as ``pygfm-train`` processes, the
results are told back.

Run directory::

    campaign.yaml       the checked campaign config (resume compares against it)
    journal.jsonl       one line per trial started / ended (what --resume reads)
    trials.csv          every trial: status, objective, parameters, MAEs, error
    objective.png       the objective over trials, with the best so far
    best.yaml           the best configuration as a ready-to-run pygfm-train config
    summary.md          the best trials as a table
    trials/00007/       one trial: config.yaml, log.txt, the pygfm-train run in run/
    promoted/           --promote K: full training of the best K configurations

Everything is written atomically; a SIGKILL loses at most the trials that were
running, and ``--resume`` continues them from their own checkpoints.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import time
from pathlib import Path

import yaml

from .._files import (atomic_write_text, check_folder_is_ours, remove_stale_temporaries,
                      starts_with_line)
from ..train.config import ConfigError, dump_config
from ..train.objective import objective_value as train_objective
from .config import trial_config

__all__ = ["Campaign", "objective_value", "HPOError"]

_COMPARED = ("base", "set", "space", "budget", "objective")
# the first line of campaign.yaml: how a search directory is recognised as ours
CAMPAIGN_HEADER = "# written by pygfm-hpo: the checked campaign config (--resume compares it)\n"
# the files a search writes in its run directory (and config.yaml in each trial's)
_SEARCH_FILES = ("campaign.yaml", "trials.csv", "objective.png", "best.yaml", "summary.md",
                 "promoted.csv")


class HPOError(RuntimeError):
    """A campaign that cannot go on (e.g. a changed config on --resume)."""


def _is_search_dir(folder: Path) -> bool:
    """Whether ``folder`` is a pygfm-hpo search directory (its campaign.yaml is ours)."""
    return starts_with_line(folder / "campaign.yaml", CAMPAIGN_HEADER)


def _remove_stale_temporaries(run_dir: Path) -> None:
    """The temporaries a SIGKILL of an earlier search left (the trials' own run
    directories are cleaned by pygfm-train when they resume)."""
    for name in _SEARCH_FILES:
        remove_stale_temporaries(run_dir, name)
    for group in ("trials", "promoted"):
        if (run_dir / group).is_dir():
            for directory in (run_dir / group).iterdir():
                remove_stale_temporaries(directory, "config.yaml")


def objective_value(objective: dict, summary: dict) -> float:
    """The campaign's objective (lower is better) of a pygfm-train summary (the
    validation MAEs of its best.pt): :func:`pygfm.train.objective.objective_value`,
    the very number the trial chose its best.pt by."""
    metrics = {name: {"energy_mae": _nan(h["energy_mae"]), "forces_mae": _nan(h["forces_mae"])}
               for name, h in summary["heads"].items()}
    return train_objective(objective, metrics)


def _nan(value) -> float:
    return float(value) if _finite(value) else math.nan


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _native(value):
    return value.item() if hasattr(value, "item") else value


def _problem(space: dict):
    from deephyper.hpo import HpProblem

    problem = HpProblem()
    for key, spec in space.items():
        if spec["kind"] == "choice":
            problem.add_hyperparameter(list(spec["choices"]), key)
        else:
            prior = "log-uniform" if spec["log"] else "uniform"
            problem.add_hyperparameter((spec["low"], spec["high"], prior), key)
    return problem


def _error_from_log(log: Path, returncode: int, timed_out: bool, timeout) -> str:
    if timed_out:
        return f"stopped after exceeding evaluator.trial_timeout ({timeout:.0f} s)"
    lines = []
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        pass
    for line in reversed(lines):
        if "pygfm-train" in line and "error:" in line:
            return line.split("error:", 1)[1].strip()
        if line.startswith("pygfm-hpo: cannot start"):
            return line.split(": ", 1)[1]
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory?)" if -returncode == signal.SIGKILL else ""
        return f"the trial process was killed by {name}{hint}"
    tail = [line for line in lines[-20:] if line.strip()]
    last = tail[-1].strip() if tail else "no output"
    return f"pygfm-train exited with status {returncode}: {last}"


class Campaign:
    """One search in ``run_dir`` as ``config`` (from :func:`load_hpo_config`) says."""

    def __init__(self, config: dict, run_dir, *, resume: bool = False, progress: bool = True):
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress
        self._evaluator = None
        self.journal = self.run_dir / "journal.jsonl"
        self.records: dict[int, dict] = {}     # finished trials by id
        self.started: dict[int, dict] = {}     # started trials (params) by id
        stored = self.run_dir / "campaign.yaml"
        if self.journal.exists() and not resume:
            raise FileExistsError(f"{self.run_dir} already holds a search (journal.jsonl); "
                                  "continue it with --resume or choose another --run-dir")
        if resume and stored.exists():
            old = yaml.safe_load(stored.read_text(encoding="utf-8")) or {}
            for key in _COMPARED:
                if old.get(key) != config.get(key):
                    raise HPOError(f"--resume: `{key}` differs from the search in "
                                   f"{self.run_dir} (campaign.yaml); the trials so far would "
                                   "not be comparable. Start a new --run-dir instead")
        if not (resume and self.journal.exists()):
            check_folder_is_ours(self.run_dir, _is_search_dir, option="--run-dir",
                                 tool="pygfm-hpo")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.run_dir)
        atomic_write_text(stored, CAMPAIGN_HEADER + yaml.safe_dump(config, sort_keys=False))
        if resume:
            self._read_journal()

    # ------------------------------------------------------------ journal
    def _read_journal(self) -> None:
        if not self.journal.exists():
            return
        for line in self.journal.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if entry.get("event") == "start":
                self.started[entry["trial"]] = entry["params"]
            elif entry.get("event") == "end":
                self.records[entry["trial"]] = entry["record"]

    def _log(self, entry: dict) -> None:
        with open(self.journal, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    # ------------------------------------------------------------ the search
    def _make_search(self):
        import logging
        import warnings

        logging.getLogger("deephyper").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module="deephyper")
        from deephyper.hpo import CBO, RandomSearch

        problem = _problem(self.config["space"])
        s = self.config["search"]
        log_dir = self.run_dir  # DeepHyper writes nothing there (no CSV checkpoints)
        if s["method"] == "random":
            return RandomSearch(problem, random_state=s["seed"], log_dir=str(log_dir),
                                checkpoint_history_to_csv=False)
        kwargs = {}
        if s["initial_points"] is not None:
            kwargs["n_initial_points"] = s["initial_points"]
        return CBO(problem, random_state=s["seed"], log_dir=str(log_dir),
                   checkpoint_history_to_csv=False, surrogate_model=s["surrogate"],
                   acq_func=s["acquisition"], acq_func_kwargs={"kappa": s["kappa"]},
                   **kwargs)

    def _tell(self, search, record: dict) -> None:
        value = record["objective"] if record["status"] == "ok" else "F"
        params = {k: record["params"][k] for k in self.config["space"]}
        search.tell([(params, -value if value != "F" else "F")])

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)

    def _trial_dir(self, trial: int) -> Path:
        return self.run_dir / "trials" / f"{trial:05d}"

    def _prepare(self, trial: int, params: dict) -> tuple[Path, str | None]:
        """Write the trial's config; (its path, an error when the combination is invalid)."""
        directory = self._trial_dir(trial)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.yaml"
        try:
            config = trial_config(self.config, params)
        except ConfigError as error:
            return path, f"invalid configuration: {error}"
        atomic_write_text(path, dump_config(config))
        return path, None

    def _timeout(self) -> float | None:
        timeout = self.config["evaluator"]["trial_timeout"]
        max_time = self.config["budget"]["max_time"]
        if timeout is None and max_time is not None:
            timeout = 2 * max_time + 600  # start-up and final evaluation on top
        return timeout

    def _finish(self, trial: int, params: dict, code: int, seconds: float,
                timed_out: bool) -> dict:
        directory = self._trial_dir(trial)
        record = {"trial": trial, "status": "failed", "objective": None, "params": params,
                  "ended": round(time.time(), 2), "seconds": round(seconds, 2), "steps": None,
                  "metrics": {}, "error": None, "run_dir": str(directory.relative_to(self.run_dir))}
        summary_path = directory / "run" / "summary.json"
        if code == 0 and summary_path.exists():
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            record["steps"] = summary.get("steps")
            record["metrics"] = {name: {"energy_mae": h["energy_mae"],
                                        "forces_mae": h["forces_mae"]}
                                 for name, h in summary["heads"].items()}
            value = objective_value(self.config["objective"], summary)
            if _finite(value):
                record["status"], record["objective"] = "ok", value
            else:
                record["error"] = f"the objective is {value} (no finite validation MAE)"
        elif code == 0:
            record["error"] = "pygfm-train ended without a summary.json"
        else:
            record["error"] = _error_from_log(directory / "log.txt", code, timed_out,
                                              self._timeout())
        return record

    def _get_evaluator(self, workers: int | None = None):
        from .evaluators import MPIEvaluator, ProcessEvaluator

        e = self.config["evaluator"]
        if self._evaluator is None:
            if e["kind"] == "mpi":
                from ..distributed import mpi_comm
                self._evaluator = MPIEvaluator(mpi_comm())
            else:
                self._evaluator = ProcessEvaluator(e["workers"], e["launcher"], e["threads"],
                                                   e["gpus_per_node"])
        if workers is not None and e["kind"] != "mpi":
            self._evaluator.workers = workers
        return self._evaluator

    def close(self) -> None:
        """Release the evaluator (under MPI: end the worker ranks' loops)."""
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def _interrupted(self) -> None:
        if self._evaluator is not None:
            self._evaluator.shutdown()
            self._evaluator = None

    def run(self) -> dict:
        """Run (or continue) the search; returns the best record (None if no trial
        succeeded)."""
        evaluator = self._get_evaluator(self.config["evaluator"]["workers"])
        try:
            return self._loop(evaluator)
        except BaseException:
            self._interrupted()
            raise

    def _loop(self, evaluator) -> dict:
        search = self._make_search()
        total = self.config["trials"]
        for trial in sorted(self.records):
            self._tell(search, self.records[trial])
        # trials started but not finished (killed with the search): run them again,
        # from their own checkpoints, before asking for new ones
        again = [(t, self.started[t]) for t in sorted(self.started) if t not in self.records]
        next_id = max(list(self.started) + list(self.records) + [0]) + 1
        if self.records or again:
            self._say(f"pygfm-hpo: resuming: {len(self.records)} trial(s) finished, "
                      f"{len(again)} to continue")
        running: dict[int, dict] = {}
        started_at = time.monotonic()
        while len(self.records) < total or running:
            wanted = total - len(self.records) - len(running)
            n = min(evaluator.free, wanted)
            if n > 0:
                batch = again[:n]
                again = again[n:]
                fresh = n - len(batch)
                if fresh > 0:
                    for params in search.ask(fresh):
                        params = {k: _native(v) for k, v in params.items()}
                        batch.append((next_id, params))
                        next_id += 1
                for trial, params in batch:
                    resume = trial in self.started
                    config_path, error = self._prepare(trial, params)
                    if trial not in self.started:
                        self._log({"event": "start", "trial": trial, "params": params})
                        self.started[trial] = params
                    if error is not None:
                        self._record(search, {"trial": trial, "status": "failed",
                                              "objective": None, "params": params,
                                              "ended": round(time.time(), 2),
                                              "seconds": 0.0, "steps": None, "metrics": {},
                                              "error": error,
                                              "run_dir": str(self._trial_dir(trial).relative_to(
                                                  self.run_dir))}, started_at)
                        continue
                    directory = self._trial_dir(trial)
                    evaluator.submit(trial, config_path, directory / "run",
                                     directory / "log.txt",
                                     resume and (directory / "run" / "last.pt").exists(),
                                     self._timeout())
                    running[trial] = params
                    self._say(f"trial {trial:>4} started" + (" (continued)" if resume else "")
                              + ": " + ", ".join(f"{k}={_short(v)}" for k, v in params.items()))
                continue
            for done in evaluator.poll(1.0):
                params = running.pop(done.trial)
                self._record(search, self._finish(done.trial, params, done.returncode,
                                                  done.seconds, done.timed_out), started_at)
        self.write_reports()
        return self.best()

    def _record(self, search, record: dict, started_at: float) -> None:
        self.records[record["trial"]] = record
        self._log({"event": "end", "trial": record["trial"], "record": record})
        self._tell(search, record)
        self.write_reports(final=False)
        best = self.best()
        done = len(self.records)
        total = self.config["trials"]
        what = (f"objective {record['objective']:.5g}" if record["status"] == "ok"
                else f"FAILED: {record['error']}")
        best_text = (f"best {best['objective']:.5g} (trial {best['trial']})" if best
                     else "no success yet")
        self._say(f"trial {record['trial']:>4} [{done}/{total}] {what}; {best_text}; "
                  f"{record['seconds']:.0f} s; elapsed {time.monotonic() - started_at:.0f} s")

    # ------------------------------------------------------------ results
    def ranked(self) -> list:
        ok = [r for r in self.records.values() if r["status"] == "ok"]
        return sorted(ok, key=lambda r: (r["objective"], r["trial"]))

    def best(self) -> dict | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def write_reports(self, final: bool = True) -> None:
        from .report import objective_plot, summary_markdown

        records = [self.records[t] for t in sorted(self.records)]
        atomic_write_text(self.run_dir / "trials.csv", trials_csv(records, self.config))
        best = self.best()
        if best is not None:
            config = trial_config(self.config, best["params"], budget=False,
                                  extra=self.config["promote"]["set"])
            header = (f"# pygfm-hpo: the best of {len(records)} trial(s) in {self.run_dir}: "
                      f"trial {best['trial']}, objective {best['objective']:.6g}\n"
                      f"# run it: pygfm-train best.yaml --run-dir runs/best\n")
            atomic_write_text(self.run_dir / "best.yaml", header + dump_config(config))
        if final or len(records) % 5 == 0:
            try:
                objective_plot(records, self.run_dir / "objective.png")
            except Exception as error:  # noqa: BLE001 - a plot never fails a search
                self._say(f"warning: objective.png not written ({type(error).__name__}: "
                          f"{error})")
        atomic_write_text(self.run_dir / "summary.md",
                           summary_markdown(records, self.ranked(), self.config, self.run_dir))

    # ------------------------------------------------------------ promotion
    def promote(self, k: int) -> list:
        """Train the best ``k`` configurations with the full budget (the base's
        training length, changed by ``promote.set``) in ``promoted/``; resumable.
        Returns one record per promoted run."""
        chosen = self.ranked()[:k]
        if not chosen:
            raise HPOError("--promote: no trial succeeded, nothing to promote")
        evaluator = self._get_evaluator(self.config["promote"]["workers"]
                                        or self.config["evaluator"]["workers"])
        out, pending = {}, []
        for place, record in enumerate(chosen, 1):
            directory = self.run_dir / "promoted" / f"{place}-trial{record['trial']:05d}"
            directory.mkdir(parents=True, exist_ok=True)
            config = trial_config(self.config, record["params"], budget=False,
                                  extra=self.config["promote"]["set"])
            atomic_write_text(directory / "config.yaml", dump_config(config))
            summary = directory / "run" / "summary.json"
            if summary.exists() and json.loads(summary.read_text()).get("complete"):
                out[place] = self._promoted(place, record, directory, 0, 0.0, False)
            else:
                pending.append((place, record, directory))
        self._say(f"pygfm-hpo: promoting the best {len(chosen)} configuration(s) "
                  f"({len(pending)} to train) into {self.run_dir / 'promoted'}")
        running = {}
        try:
            while pending or running:
                while pending and evaluator.free > 0:
                    place, record, directory = pending.pop(0)
                    evaluator.submit(place, directory / "config.yaml", directory / "run",
                                     directory / "log.txt",
                                     (directory / "run" / "last.pt").exists(), None)
                    running[place] = (record, directory)
                for done in evaluator.poll(1.0):
                    record, directory = running.pop(done.trial)
                    out[done.trial] = self._promoted(done.trial, record, directory,
                                                     done.returncode, done.seconds,
                                                     done.timed_out)
                    result = out[done.trial]
                    self._say(f"promoted #{done.trial} (trial {record['trial']}): "
                              + (f"objective {result['objective']:.5g}" if result["status"]
                                 == "ok" else f"FAILED: {result['error']}"))
        except BaseException:
            self._interrupted()
            raise
        results = [out[p] for p in sorted(out)]
        atomic_write_text(self.run_dir / "promoted.csv", promoted_csv(results))
        return results

    def _promoted(self, place, record, directory, code, seconds, timed_out) -> dict:
        summary_path = directory / "run" / "summary.json"
        result = {"place": place, "trial": record["trial"],
                  "trial_objective": record["objective"], "status": "failed",
                  "objective": None, "steps": None, "seconds": round(seconds, 1),
                  "error": None, "run_dir": str(directory.relative_to(self.run_dir) / "run")}
        if code == 0 and summary_path.exists():
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            value = objective_value(self.config["objective"], summary)
            result.update(status="ok" if _finite(value) else "failed",
                          objective=value if _finite(value) else None,
                          steps=summary.get("steps"),
                          seconds=round(summary.get("train_seconds", seconds), 1))
            if not _finite(value):
                result["error"] = f"the objective is {value}"
        else:
            result["error"] = _error_from_log(directory / "log.txt", code, timed_out, None)
        return result


def trials_csv(records: list, config: dict) -> str:
    heads = config["heads"]
    columns = ["trial", "status", "objective", "seconds", "steps"]
    columns += [f"p:{k}" for k in config["space"]]
    columns += [f"{m}/{h}" for h in heads for m in ("energy_mae", "forces_mae")]
    columns += ["error", "run_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {"trial": r["trial"], "status": r["status"], "seconds": r["seconds"],
               "objective": "" if r["objective"] is None else f"{r['objective']:.8g}",
               "steps": "" if r["steps"] is None else r["steps"],
               "error": r["error"] or "", "run_dir": r["run_dir"]}
        for k in config["space"]:
            row[f"p:{k}"] = r["params"].get(k)
        for h in heads:
            for m in ("energy_mae", "forces_mae"):
                value = r["metrics"].get(h, {}).get(m)
                row[f"{m}/{h}"] = f"{value:.6g}" if _finite(value) else ""
        writer.writerow(row)
    return buffer.getvalue()


def promoted_csv(results: list) -> str:
    columns = ["place", "trial", "trial_objective", "status", "objective", "steps", "seconds",
               "error", "run_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in columns})
    return buffer.getvalue()

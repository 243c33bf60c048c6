"""``pygfm-hpo`` end to end, as a user runs it (subprocesses, tiny trials on demo
data): a search with a trial that crashes on purpose, its files, the best config
ready to run; --resume adding trials without repeating any; --promote; a search
whose every trial diverges; SIGKILL of the search in mid-trial, then --resume; the
MPI evaluator under mpiexec; two local workers at once; CLI errors."""

from __future__ import annotations

import csv
import json
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from _train_helpers import (PYTHON, mpiexec, run_command, signal_when,  # noqa: E402
                            tiny_config, write_yaml)

from pygfm.hpo import load_hpo_config, objective_value, trial_config  # noqa: E402
from pygfm.train.config import load_config  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACE = {"model.n_features": [4, 8], "optimizer.lr": {"low": 1e-3, "high": 1e-2, "log": True}}


def hpo_command(*args) -> list:
    return [PYTHON, "-m", "pygfm.cli.hpo", *map(str, args)]


def campaign(tmp_path: Path, **content) -> Path:
    base = tiny_config(training={"max_steps": 4, "eval_every": 2, "log_every": 1,
                                 "plots": False})
    write_yaml(tmp_path / "base.yaml", base)
    config = {"base": "base.yaml", "space": SPACE, "trials": 3,
              "budget": {"max_steps": 4, "eval_every": 2},
              "objective": {"energy": 1.0, "forces": 0.1,
                            "datasets": {"molecules-dft": {"energy": 0.5}}},
              "search": {"seed": 3, "initial_points": 2},
              "promote": {"set": ["training.max_steps=6"]}}
    config.update(content)
    return write_yaml(tmp_path / "hpo.yaml", config)


def read_csv(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def journal(run: Path) -> list:
    return [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]


def check(result, code=0):
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def crash_launcher(tmp_path: Path, trial: str) -> Path:
    """A launcher prefix that SIGKILLs itself for one trial (a crash, as an OOM kill
    looks) and runs the others."""
    script = tmp_path / "flaky-launcher.sh"
    script.write_text(f'#!/bin/sh\ncase "$*" in *trials/{trial}/*) kill -9 $$ ;; esac\n'
                      'exec "$@"\n')
    script.chmod(0o755)
    return script


def test_search_failing_trial_resume_and_promote(tmp_path):
    launcher = crash_launcher(tmp_path, "00002")
    config_path = campaign(tmp_path, evaluator={"launcher": str(launcher)})
    run = tmp_path / "run"
    result = check(run_command(hpo_command(config_path, "--run-dir", run), tmp_path))
    assert "FAILED: the trial process was killed by SIGKILL" in result.stdout
    rows = read_csv(run / "trials.csv")
    assert [r["trial"] for r in rows] == ["1", "2", "3"]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "SIGKILL" in rows[1]["error"] and rows[1]["objective"] == ""
    config = load_hpo_config(config_path)
    for row in (rows[0], rows[2]):
        trial_dir = run / row["run_dir"]
        summary = json.loads((trial_dir / "run" / "summary.json").read_text())
        assert summary["steps"] == 4  # the trial budget, not the base's length
        # the objective is the configured combination of the trial's validation MAEs
        assert float(row["objective"]) == pytest.approx(
            objective_value(config["objective"], summary), rel=1e-7)
        assert float(row["energy_mae/molecules-dft"]) == pytest.approx(
            summary["heads"]["molecules-dft"]["energy_mae"], rel=1e-5)
        params = {"model.n_features": int(row["p:model.n_features"]),
                  "optimizer.lr": float(row["p:optimizer.lr"])}
        trial = load_config(trial_dir / "config.yaml")
        assert trial["model"]["n_features"] == params["model.n_features"]
        assert trial["optimizer"]["lr"] == pytest.approx(params["optimizer.lr"], rel=1e-12)
    best = min((r for r in rows if r["status"] == "ok"), key=lambda r: float(r["objective"]))
    # best.yaml: a ready pygfm-train config of the best trial with the full budget
    best_config = load_config(run / "best.yaml")
    assert best_config["model"]["n_features"] == int(best["p:model.n_features"])
    assert best_config["training"]["max_steps"] == 6  # promote.set, not the trial budget
    assert (run / "objective.png").read_bytes()[:8] == PNG_MAGIC
    summary_md = (run / "summary.md").read_text()
    assert f"Best: trial {best['trial']}" in summary_md and "- trial 2:" in summary_md
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]

    # --resume with more trials: the finished ones are not run again
    logs = {t: (run / "trials" / f"{t:05d}" / "log.txt").read_text() for t in (1, 2, 3)}
    check(run_command(hpo_command(config_path, "--run-dir", run, "--resume", "--set", "trials=5",
                                  "--quiet"), tmp_path))
    rows = read_csv(run / "trials.csv")
    assert [r["trial"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(r["status"] == "ok" for r in rows[3:])
    for t, text in logs.items():
        assert (run / "trials" / f"{t:05d}" / "log.txt").read_text() == text
    ends = [e["trial"] for e in journal(run) if e["event"] == "end"]
    assert sorted(ends) == [1, 2, 3, 4, 5]
    # the surrogate saw the earlier trials: new trials are not repeats of them
    seen = {(r["p:model.n_features"], r["p:optimizer.lr"]) for r in rows}
    assert len(seen) == 5

    # --promote on the finished search: full training of the best, no new trial
    check(run_command(hpo_command(config_path, "--run-dir", run, "--resume", "--set", "trials=5",
                                  "--promote", "1", "--quiet"), tmp_path))
    assert sorted(e["trial"] for e in journal(run) if e["event"] == "end") == [1, 2, 3, 4, 5]
    rows = read_csv(run / "trials.csv")
    best = min((r for r in rows if r["status"] == "ok"), key=lambda r: float(r["objective"]))
    promoted = read_csv(run / "promoted.csv")
    assert len(promoted) == 1 and promoted[0]["status"] == "ok"
    assert promoted[0]["trial"] == best["trial"]
    run_dir = run / promoted[0]["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["complete"]
    assert float(promoted[0]["objective"]) == pytest.approx(
        objective_value(config["objective"], summary), rel=1e-7)
    assert load_config(run_dir / "config.yaml")["model"]["n_features"] == \
        int(best["p:model.n_features"])


def test_every_trial_diverging_is_recorded_and_the_search_ends(tmp_path):
    config_path = campaign(tmp_path, space={"optimizer.lr": [1e11, 1e12]}, trials=2,
                           set=["optimizer.grad_clip=null", "schedule.warmup_steps=0"])
    run = tmp_path / "run"
    result = check(run_command(hpo_command(config_path, "--run-dir", run), tmp_path), code=1)
    assert "all 2 trial(s) failed" in result.stderr
    rows = read_csv(run / "trials.csv")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("the loss became nan" in r["error"] for r in rows)
    assert not (run / "best.yaml").exists()
    assert (run / "objective.png").read_bytes()[:8] == PNG_MAGIC


def _alive(marker: str) -> list:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            text = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker in text and state != "Z":
            out.append(int(proc.name))
    return out


def test_sigkill_mid_trial_then_resume(tmp_path):
    config_path = campaign(tmp_path, trials=3, budget={"max_steps": 24, "eval_every": 2})
    run = tmp_path / "run"
    # the search only: its trial must not live on as an orphan
    signal_when(hpo_command(config_path, "--run-dir", run, "--quiet"), tmp_path,
                run / "trials" / "00002" / "run" / "last.pt", signal.SIGKILL, group=False)
    marker = str(run / "trials" / "00002")
    for _ in range(50):
        if not _alive(marker):
            break
        time.sleep(0.1)
    assert not _alive(marker), "the running trial outlived the killed search"
    rows = read_csv(run / "trials.csv")
    assert [r["trial"] for r in rows] == ["1"]
    first_log = (run / "trials" / "00001" / "log.txt").read_text()
    check(run_command(hpo_command(config_path, "--run-dir", run, "--resume", "--quiet"),
                      tmp_path))
    rows = read_csv(run / "trials.csv")
    assert [r["trial"] for r in rows] == ["1", "2", "3"]
    assert all(r["status"] == "ok" for r in rows)
    assert (run / "trials" / "00001" / "log.txt").read_text() == first_log
    log = (run / "trials" / "00002" / "log.txt").read_text()
    commands = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--resume" not in commands[0] and "--resume" in commands[1]
    summary = json.loads((run / "trials" / "00002" / "run" / "summary.json").read_text())
    assert summary["steps"] == 24
    starts = [e["trial"] for e in journal(run) if e["event"] == "start"]
    assert starts == [1, 2, 3]  # trial 2 continued under its own id and parameters


def test_sigterm_stops_the_search_and_its_trial(tmp_path):
    """A scheduler's SIGTERM (time limit): the running trial is stopped, the search
    exits 130 telling to --resume; nothing is left running."""
    config_path = campaign(tmp_path, trials=2, budget={"max_steps": 400, "eval_every": 2})
    run = tmp_path / "run"
    result = signal_when(hpo_command(config_path, "--run-dir", run, "--quiet"), tmp_path,
                         run / "trials" / "00001" / "run" / "last.pt", signal.SIGTERM,
                         group=False)
    assert result.returncode == 130 and "continue with --resume" in result.stderr
    assert not _alive(str(run / "trials" / "00001"))
    assert [e["event"] for e in journal(run)] == ["start"]


def test_mpi_evaluator_under_mpiexec(tmp_path):
    config_path = campaign(tmp_path, trials=3, evaluator={"kind": "mpi"})
    run = tmp_path / "run"
    check(run_command(mpiexec(3) + hpo_command(config_path, "--run-dir", run, "--quiet"),
                      tmp_path))
    rows = read_csv(run / "trials.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    for row in rows:
        summary = json.loads((run / row["run_dir"] / "run" / "summary.json").read_text())
        assert summary["ranks"] == 1  # a trial is not a rank of the search's MPI job
    # two worker ranks: trials ran two at a time
    records = [e["record"] for e in journal(run) if e["event"] == "end"]
    spans = sorted((r["ended"] - r["seconds"], r["ended"]) for r in records)
    assert spans[1][0] < spans[0][1]


def test_trials_behind_a_launcher_are_multi_rank_runs(tmp_path):
    """evaluator.launcher (srun on a cluster; mpiexec here): each trial is a 2-rank
    data-parallel pygfm-train run."""
    launcher = " ".join(mpiexec(2))
    config_path = campaign(tmp_path, trials=1, evaluator={"launcher": launcher})
    run = tmp_path / "run"
    check(run_command(hpo_command(config_path, "--run-dir", run, "--quiet"), tmp_path))
    rows = read_csv(run / "trials.csv")
    assert [r["status"] for r in rows] == ["ok"]
    summary = json.loads((run / rows[0]["run_dir"] / "run" / "summary.json").read_text())
    assert summary["ranks"] == 2


def test_two_local_workers_run_at_once(tmp_path):
    config_path = campaign(tmp_path, trials=2, evaluator={"workers": 2})
    run = tmp_path / "run"
    check(run_command(hpo_command(config_path, "--run-dir", run, "--quiet"), tmp_path))
    records = [e["record"] for e in journal(run) if e["event"] == "end"]
    assert [r["status"] for r in records] == ["ok", "ok"]
    spans = sorted((r["ended"] - r["seconds"], r["ended"]) for r in records)
    assert spans[1][0] < spans[0][1]
    # two first asks at once are two different configurations
    params = [tuple(sorted(r["params"].items())) for r in records]
    assert params[0] != params[1]


def test_cli_errors(tmp_path):
    result = check(run_command(hpo_command(tmp_path / "nope.yaml"), tmp_path), code=2)
    assert "nope.yaml: no such config file" in result.stderr
    config_path = campaign(tmp_path, space={"model.n_featurez": [8]})
    result = check(run_command(hpo_command(config_path), tmp_path), code=2)
    assert "space.model.n_featurez: no such training setting" in result.stderr
    assert "Traceback" not in result.stderr
    config_path = campaign(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "journal.jsonl").write_text("")
    result = check(run_command(hpo_command(config_path, "--run-dir", run), tmp_path), code=2)
    assert "already holds a search" in result.stderr
    # evaluator.kind process under mpiexec would run the whole search on every rank
    result = run_command(mpiexec(2) + hpo_command(config_path, "--run-dir", tmp_path / "r2"),
                         tmp_path)
    assert result.returncode != 0 and "evaluator.kind is process" in result.stderr
    printed = check(run_command(hpo_command(config_path, "--print-config", "--set",
                                            "trials=7"), tmp_path))
    assert yaml.safe_load(printed.stdout)["trials"] == 7
    assert trial_config(load_hpo_config(config_path), {})["training"]["max_steps"] == 4


def test_a_launcher_that_does_not_exist_fails_the_trials_not_the_search(tmp_path):
    config_path = campaign(tmp_path, trials=2,
                           evaluator={"launcher": str(tmp_path / "no-such-launcher")})
    run = tmp_path / "run"
    result = check(run_command(hpo_command(config_path, "--run-dir", run), tmp_path), code=1)
    assert "all 2 trial(s) failed" in result.stderr
    rows = read_csv(run / "trials.csv")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("cannot start the trial" in r["error"] and "no-such-launcher" in r["error"]
               for r in rows)


def test_concurrent_trials_get_their_own_gpu(tmp_path):
    """gpus_per_node: 2 with two workers: the two trials running at once see
    different CUDA_VISIBLE_DEVICES (recorded by a launcher; the trials run on the CPU)."""
    script = tmp_path / "record-gpu.sh"
    script.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in */run) d=$(dirname "$a");; '
                      'esac; done\necho "$CUDA_VISIBLE_DEVICES $HIP_VISIBLE_DEVICES" > "$d/gpu"\n'
                      'exec "$@"\n')
    script.chmod(0o755)
    config_path = campaign(tmp_path, trials=2, evaluator={"workers": 2, "gpus_per_node": 2,
                                                          "launcher": str(script)})
    run = tmp_path / "run"
    check(run_command(hpo_command(config_path, "--run-dir", run, "--quiet"), tmp_path))
    seen = sorted((run / "trials" / f"{t:05d}" / "gpu").read_text().split()[0] for t in (1, 2))
    assert seen == ["0", "1"]
    for t in (1, 2):  # HIP_VISIBLE_DEVICES the same as CUDA_VISIBLE_DEVICES
        cuda, hip = (run / "trials" / f"{t:05d}" / "gpu").read_text().split()
        assert hip == cuda

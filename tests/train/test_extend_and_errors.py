"""``pygfm-train`` as a user runs it (subprocesses): extending a finished run with
--resume and a larger training.max_steps (the schedule goes on without a jump,
metrics.csv grows, best.pt and the summary follow), resumes that change other
settings refused naming the key, nothing-to-do resumes said so, max_steps=0
refused, a dataset that cannot be opened named in one line, an unwritable run
directory named in one line, and ranks given different configs (mpiexec -n 2)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from _train_helpers import (cli, cli_command, demo_cache, describe, mpiexec, run_command,
                            tiny_config, write_yaml)

# 6 steps, validation every 3 (tiny_config runs 12)
SHORT = {"training": {"max_steps": 6, "eval_every": 3, "plots": False}}


def rows_of(run_dir):
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def one_error_line(result, prog="pygfm-train") -> str:
    """The single error line of a failed command (and no traceback)."""
    assert "Traceback" not in result.stderr, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, describe(result)
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 6-step run: (config file, run_dir)."""
    work = tmp_path_factory.mktemp("extend")
    config = write_yaml(work / "tiny.yaml", tiny_config(**SHORT))
    run_dir = work / "run"
    result = cli(config, "--run-dir", run_dir, "--quiet", cwd=work)
    assert result.returncode == 0, describe(result)
    return config, run_dir


def test_extending_a_finished_run(finished, tmp_path):
    config, source = finished
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    before = rows_of(run_dir)
    assert [int(r["step"]) for r in before] == [3, 6]
    result = cli(config, "--run-dir", run_dir, "--quiet", "--resume",
                 "--set", "training.max_steps=12", cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "extending the finished run to step 12" in result.stdout, describe(result)
    rows = rows_of(run_dir)
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    assert rows[:2] == before  # appended, the first rows unchanged
    # the cosine went on from where it was (its end, lr x min_lr_ratio) down to
    # min_lr_ratio: no jump back up
    lr_end = float(before[-1]["lr"])
    for row in rows[2:]:
        assert float(row["lr"]) == pytest.approx(1e-3 * 0.02, rel=1e-4), row
    assert lr_end == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5 * (1 + math.cos(
        math.pi * 3 / 4))), rel=1e-4)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["complete"] is True
    assert summary["stopped"] == "max_steps 12 reached", summary["stopped"]
    best = min(rows, key=lambda r: float(r["val_objective"]))
    assert summary["best_step"] == int(best["step"])
    state = torch.load(run_dir / "best.pt", weights_only=True)["extra"]["state"]
    assert state["best_step"] == summary["best_step"]
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["extra"]["state"]["step"] == 12
    assert last["config"]["training"]["max_steps"] == 12

    # the same command again: nothing to do, and it says so
    result = cli(config, "--run-dir", run_dir, "--quiet", "--resume",
                 "--set", "training.max_steps=12", cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "already at step 12" in result.stdout and "nothing to do" in result.stdout


def test_resume_of_a_finished_run_refuses_other_changes(finished, tmp_path):
    config, run_dir = finished
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    for override, key in (("optimizer.lr=0.01", "optimizer.lr"),
                          ("datasets[1].weight=3", "datasets[1].weight")):
        result = cli(config, "--run-dir", run_dir, "--quiet", "--resume",
                     "--set", "training.max_steps=12", "--set", override, cwd=tmp_path)
        assert result.returncode == 2, describe(result)
        line = one_error_line(result)
        assert key in line and "--resume" in line, line
    # a smaller max_steps: nothing to do
    result = cli(config, "--run-dir", run_dir, "--quiet", "--resume",
                 "--set", "training.max_steps=4", cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "already at step 6 (training.max_steps 4); nothing to do" in result.stdout
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("override, key", [("training.max_steps=0", "training.max_steps"),
                                           ("training.max_time=0", "training.max_time")])
def test_a_run_of_no_length_is_refused(tmp_path, override, key):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(**SHORT))
    result = cli(config, "--run-dir", tmp_path / "run", "--set", override, cwd=tmp_path,
                 timeout=120)
    assert result.returncode == 2, describe(result)
    assert key in one_error_line(result)
    assert not (tmp_path / "run").exists()


def test_a_dataset_that_cannot_be_opened_is_one_line(tmp_path):
    """A truncated shard: the error names the key and the file, without a traceback."""
    import shutil
    from pygfm.data.demo import demo_dataset
    source = demo_dataset("molecules-dft", directory=demo_cache() / "demo").path
    copy = tmp_path / "dft"
    shutil.copytree(source, copy)
    shard = sorted(copy.glob("*.bp"))[0]
    victim = shard / "data.0"
    victim.write_bytes(victim.read_bytes()[:50])
    content = tiny_config(**SHORT)
    content["datasets"][1] = {"path": str(copy), "max_samples": 40}
    config = write_yaml(tmp_path / "tiny.yaml", content)
    result = cli(config, "--run-dir", tmp_path / "run", "--quiet", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, describe(result)
    line = one_error_line(result)
    assert "datasets[1].path" in line and str(victim) in line, line


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    """/proc is read-only even for root (the tests may run as root, where chmod does not
    stop a write)."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(**SHORT))
    target = "/proc/pygfm-run"
    result = cli(config, "--run-dir", target, "--quiet", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, describe(result)
    assert target in one_error_line(result)


def test_ranks_with_different_configs_fail_naming_the_key(tmp_path):
    """Rank 1 is given another learning rate (as an environment-dependent --set would):
    every rank stops, rank 0 names the key once."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(**SHORT))
    args = [config, "--run-dir", tmp_path / "run", "--quiet"]
    first = mpiexec(1)
    command = first + cli_command(*args) + [":", "-n", "1"] + \
        cli_command(*args, "--set", "optimizer.lr=0.002")
    result = run_command(command, tmp_path, timeout=120)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr, \
        describe(result)
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("pygfm-train (rank 0): error: the ranks were given "
                               "different configs") and "optimizer.lr" in lines[0], lines

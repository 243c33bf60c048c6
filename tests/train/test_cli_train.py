"""``pygfm-train`` end to end, as a user runs it (``python -m pygfm.cli.train`` in a
subprocess, from a temporary directory so the installed package is imported): a tiny
two-dataset run and its files, the same under ``mpiexec -n 2`` (and its logged training
loss), resume after a SIGKILL reproducing the uninterrupted run, fine-tuning with the
from-scratch comparison (and its resume), the two-stage demo (no config), what happens
when a rank fails, refusing to overwrite a run, --print-defaults / --print-config.

Every subprocess has a timeout that kills its process group (mpiexec's ranks too)."""

from __future__ import annotations

import csv
import json
import math
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk, molecule

import pygfm
from _train_helpers import (HERE, PYTHON, TINY_HEADS, TRAIN_LOSS_CONFIG, cli,
                            cli_command, describe, env, mpiexec, run_command, signal_when,
                            tiny_config, write_yaml)
from pygfm.train.config import defaults, load_config

RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.csv", "summary.json", "summary.md")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = [3, 6, 9, 12]


def read_metrics(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files of atomic writes left behind."""
    return sorted(p.name for p in run_dir.rglob("*") if ".tmp" in p.name)


def representation(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if k.startswith("representation.")}


def check_predicts(checkpoint: Path, heads=TINY_HEADS) -> None:
    model = pygfm.load(checkpoint)
    assert list(model.head_names) == list(heads)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    water = molecule("H2O")
    for head in heads:
        out = model.predict([water, cu], head=head)
        assert out["energy"].shape == (2,) and np.isfinite(out["energy"]).all()
        assert [f.shape for f in out["forces"]] == [(3, 3), (4, 3)]
        assert all(np.isfinite(f).all() for f in out["forces"])
        assert np.isnan(out["stress"][0]).all() and np.isfinite(out["stress"][1]).all()
    both = model.predict([water], head=list(heads))
    assert both["energy"].shape == (1, len(heads))


def check_run(run_dir: Path, *, ranks: int, stdout: str, plots: bool = True,
              killed: bool = False) -> dict:
    """The files of a finished tiny run (TINY config); returns summary.json. A run that
    was killed may keep the temporary file of a write the kill interrupted."""
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"{name} missing from {run_dir}"
    if not killed:
        assert not leftovers(run_dir), leftovers(run_dir)
    pngs = ["learning_curves.png"] + [f"parity_{h}.png" for h in TINY_HEADS]
    for name in pngs:
        if plots:
            assert (run_dir / name).is_file(), f"{name} missing"
            assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC, name
            assert (run_dir / name).stat().st_size > 2000, name
        else:
            assert not (run_dir / name).exists(), name
    # metrics.csv: one header, a row per validation, per-head columns
    text = (run_dir / "metrics.csv").read_text()
    assert text.count("train_loss") == 1, text
    columns, rows = read_metrics(run_dir / "metrics.csv")
    for name in ("step", "epoch", "elapsed_s", "lr", "train_loss", "val_objective"):
        assert name in columns, columns
    for head in TINY_HEADS:
        for split in ("train", "val"):
            for metric in ("energy_mae", "forces_mae"):
                assert f"{split}_{metric}/{head}" in columns, (split, metric, head, columns)
    assert [int(r["step"]) for r in rows] == STEPS
    for row in rows:
        for key, value in row.items():
            if key in ("step", "epoch"):
                continue
            assert math.isfinite(float(value)), (key, value, row)
        assert float(row["train_loss"]) > 0
    # lr follows the schedule: linear warm-up (2 steps), then cosine (set at step index step-1)
    lr, warmup, low, total = 1e-3, 2, 0.02, 12
    for row in rows:
        index = int(row["step"]) - 1
        factor = min(1.0, (index + 1) / warmup)
        progress = min(max(index - warmup, 0) / (total - warmup), 1.0)
        factor *= low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
        assert float(row["lr"]) == pytest.approx(lr * factor, rel=1e-5), row
    # summary.json
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["ranks"] == ranks and summary["device"] == "cpu"
    assert summary["best_step"] in STEPS
    best_row = next(r for r in rows if int(r["step"]) == summary["best_step"])
    assert float(best_row["val_objective"]) == pytest.approx(summary["best_objective"], rel=1e-5)
    assert summary["best_objective"] == pytest.approx(
        min(float(r["val_objective"]) for r in rows), rel=1e-5)
    assert set(summary["heads"]) == set(TINY_HEADS)
    for head, entry in summary["heads"].items():
        assert entry["train_structures"] == 40, entry
        assert entry["validation_structures"] == 30, entry  # 1% of 3000, 10% of 300
        for key in ("energy_mae", "forces_mae", "baseline_energy_mae", "baseline_forces_mae"):
            assert math.isfinite(entry[key]) and entry[key] > 0, (head, key, entry)
    # config.yaml is the resolved config
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["n_features"] == 8 and saved["training"]["max_steps"] == 12
    assert [d["name"] for d in saved["datasets"]] == list(TINY_HEADS)
    # the summary is printed once (rank 0 only)
    assert stdout.count("# pygfm-train summary") == 1, stdout
    check_predicts(run_dir / "best.pt")
    check_predicts(run_dir / "last.pt")
    return summary


# ----------------------------------------------------------------- one process
@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    return write_yaml(tmp_path_factory.mktemp("config") / "tiny.yaml", tiny_config())


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, config_file):
    """The tiny config trained by the CLI alone: (run_dir, CompletedProcess)."""
    work = tmp_path_factory.mktemp("single")
    result = cli(config_file, "--run-dir", work / "run", "--quiet", cwd=work)
    assert result.returncode == 0, describe(result)
    return work / "run", result


def test_single_process_run(single_run):
    run_dir, result = single_run
    check_run(run_dir, ranks=1, stdout=result.stdout)
    summary_md = (run_dir / "summary.md").read_text()
    assert "metals-emt" in summary_md and "molecules-dft" in summary_md
    assert summary_md.strip() in result.stdout


def test_print_defaults_and_print_config(tmp_path, config_file):
    result = cli("--print-defaults", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, describe(result)
    assert yaml.safe_load(result.stdout) == defaults()
    result = cli(config_file, "--run-dir", tmp_path / "never", "--print-config",
                 "--set", "optimizer.lr=0.002", "--set", "datasets[1].weight=3", cwd=tmp_path,
                 timeout=120)
    assert result.returncode == 0, describe(result)
    printed = yaml.safe_load(result.stdout)
    assert printed == load_config(config_file, ["optimizer.lr=0.002", "datasets[1].weight=3"])
    assert printed["datasets"][1]["weight"] == 3.0
    assert not (tmp_path / "never").exists()


def test_config_errors_exit_2_naming_the_key(tmp_path, config_file):
    result = cli(config_file, "--run-dir", tmp_path / "run", "--set", "optimizer.lrr=1",
                 cwd=tmp_path, timeout=120)
    assert result.returncode == 2, describe(result)
    assert "optimizer.lrr" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_refuses_to_overwrite_a_run(single_run, config_file, tmp_path):
    run_dir, _ = single_run
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()
              if p.is_file()}
    result = cli(config_file, "--run-dir", run_dir, "--quiet", cwd=tmp_path, timeout=120)
    assert result.returncode not in (0, None), describe(result)
    assert "--resume" in result.stderr, describe(result)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()
             if p.is_file()}
    assert after == before
    # --resume of a finished run: nothing to do, nothing rewritten
    result = cli(config_file, "--run-dir", run_dir, "--quiet", "--resume", cwd=tmp_path,
                 timeout=120)
    assert result.returncode == 0, describe(result)
    assert "already finished" in result.stdout, describe(result)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()
             if p.is_file()}
    assert after == before


# ----------------------------------------------------------------- resume
def test_resume_after_sigkill_reproduces_the_run(single_run, config_file, tmp_path):
    """Kill a run (SIGKILL) once last.pt exists, resume it: the metrics and the final
    weights are those of the uninterrupted run (single_run)."""
    reference_dir, _ = single_run
    run_dir = tmp_path / "run"
    args = (config_file, "--run-dir", run_dir, "--quiet", "--set", "training.plots=false")
    result = signal_when(cli_command(*args), tmp_path, run_dir / "last.pt", what="last.pt")
    assert result.returncode == -signal.SIGKILL
    killed_at = torch.load(run_dir / "last.pt", weights_only=True)["extra"]["state"]["step"]
    assert killed_at < 12, "the run finished before it was killed: nothing was resumed"
    assert not (run_dir / "summary.json").exists()

    # resuming with another architecture is refused, naming the section
    result = cli(*args, "--resume", "--set", "model.n_features=16", cwd=tmp_path)
    assert result.returncode not in (0, None), describe(result)
    assert "model" in result.stderr and "resume" in result.stderr, describe(result)

    result = cli(*args, "--resume", cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert f"at step {killed_at}" in result.stdout, describe(result)
    check_run(run_dir, ranks=1, stdout=result.stdout, plots=False, killed=True)

    columns, rows = read_metrics(run_dir / "metrics.csv")
    reference_columns, reference_rows = read_metrics(reference_dir / "metrics.csv")
    assert columns == reference_columns
    assert len(rows) == len(reference_rows)
    for row, expected in zip(rows, reference_rows):
        for key in columns:
            if key == "elapsed_s":
                continue
            assert float(row[key]) == pytest.approx(float(expected[key]), rel=1e-9,
                                                    abs=1e-300), (key, row, expected)
    # and the final weights, EMA weights and optimizer state agree
    last = torch.load(run_dir / "last.pt", weights_only=True)
    reference = torch.load(reference_dir / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        for key, value in reference["extra"][part].items():
            torch.testing.assert_close(last["extra"][part][key], value, rtol=1e-9, atol=1e-12,
                                       msg=f"{part} {key}")
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((reference_dir / "summary.json").read_text())
    assert summary["best_step"] == expected["best_step"]
    for head in TINY_HEADS:
        assert summary["heads"][head]["energy_mae"] == pytest.approx(
            expected["heads"][head]["energy_mae"], rel=1e-9)


# ----------------------------------------------------------------- fine-tuning
def finetune_config(init_from: Path, **training) -> dict:
    return {"seed": 0, "device": "cpu", "threads": 1,
            "datasets": [{"path": "demo:molecules-b3lyp", "max_samples": 40,
                          "validation_fraction": 0.2}],
            "sampling": {"batch_atoms": 200, "prefetch": 0},
            "schedule": {"warmup_steps": 1},
            "training": {"max_steps": 6, "eval_every": 3, "plots": False, **training},
            "finetune": {"init_from": str(init_from), "trunk": "frozen",
                         "compare_scratch": True}}


def check_finetune(run_dir: Path, init_from: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary.get("finetuned") is True, summary.keys()
    assert "scratch" in summary, summary.keys()
    assert set(summary["heads"]) == {"molecules-b3lyp"}
    assert summary["heads"]["molecules-b3lyp"]["new_head"] is True
    scratch = summary["scratch"]
    assert set(scratch["heads"]) == {"molecules-b3lyp"} and scratch["steps"] == 6
    assert math.isfinite(scratch["heads"]["molecules-b3lyp"]["energy_mae"])
    assert "scratch" in (run_dir / "summary.md").read_text()
    for name in RUN_FILES:
        assert (run_dir / "scratch" / name).is_file(), name
    # the trunk is frozen: best.pt and last.pt carry the pretrained trunk unchanged
    initial = torch.load(init_from, weights_only=True)
    for name in ("best.pt", "last.pt"):
        content = torch.load(run_dir / name, weights_only=True)
        assert content["heads"] == list(TINY_HEADS) + ["molecules-b3lyp"]
        trunk = representation(content["state_dict"])
        assert trunk.keys() == representation(initial["state_dict"]).keys()
        for key, value in representation(initial["state_dict"]).items():
            assert torch.equal(trunk[key], value), f"{name}: {key} changed"
    # the comparison trains the same architecture (the checkpoint's, not the defaults)
    scratch_content = torch.load(run_dir / "scratch" / "best.pt", weights_only=True)
    assert scratch_content["representation"] == initial["representation"]
    assert scratch_content["heads"] == ["molecules-b3lyp"]
    check_predicts(run_dir / "best.pt", heads=list(TINY_HEADS) + ["molecules-b3lyp"])
    return summary


def test_finetune_with_scratch_comparison(single_run, tmp_path):
    init_from = single_run[0] / "best.pt"
    config = write_yaml(tmp_path / "finetune.yaml", finetune_config(init_from))
    result = cli(config, "--run-dir", tmp_path / "run", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    check_finetune(tmp_path / "run", init_from)


def test_resume_of_a_finetune_interrupted_during_the_scratch_comparison(single_run, tmp_path):
    """Kill the fine-tune once its own part is done (summary.json written) while the
    from-scratch comparison is still to come, resume: the comparison must be completed,
    not skipped ("already finished")."""
    init_from = single_run[0] / "best.pt"
    config = write_yaml(tmp_path / "finetune.yaml", finetune_config(init_from))
    run_dir = tmp_path / "run"
    args = (config, "--run-dir", run_dir, "--quiet")
    # the fine-tune's own summary.json, then the scratch comparison starts
    signal_when(cli_command(*args), tmp_path, run_dir / "summary.json",
                what="the start of the scratch comparison")
    assert not (run_dir / "scratch" / "summary.json").exists(), \
        "the comparison finished before the kill"
    result = cli(*args, "--resume", cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "scratch" in summary and (run_dir / "scratch" / "summary.json").exists(), (
        "--resume left the from-scratch comparison unfinished:\n" + describe(result))
    check_finetune(run_dir, init_from)


# ----------------------------------------------------------------- the demo
DEMO_SHRINK = ["model.n_features=8", "model.n_interactions=1", "model.n_rbf=8",
               "training.max_steps=2", "training.eval_every=2", "training.plots=false",
               "sampling.batch_atoms=100", "sampling.prefetch=0", "threads=1", "device=cpu"]
DEMO_ARGS = [a for o in DEMO_SHRINK for a in ("--set", o)]
# tunes the demo's first stage (three datasets); the fine-tune stage (one) must not fail on it
FIRST_STAGE_ONLY = ["--set", "datasets[2].weight=3"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``pygfm-train`` with no config (the two-stage demo), shrunk by --set."""
    work = tmp_path_factory.mktemp("demo")
    result = cli("--run-dir", work / "demo", "--quiet", *DEMO_ARGS, *FIRST_STAGE_ONLY, cwd=work)
    return work / "demo", result


def test_demo_runs_both_stages(demo_run):
    """Joint training on the three demo sets, then the fine-tune on molecules-b3lyp with
    the from-scratch comparison."""
    run_dir, result = demo_run
    assert result.returncode == 0, describe(result)
    assert "stage 1 of 2" in result.stdout and "stage 2 of 2" in result.stdout
    first = json.loads((run_dir / "summary.json").read_text())
    assert list(first["heads"]) == ["metals-emt", "molecules-xtb", "molecules-dft"]
    assert first["steps"] == 2
    finetune_dir = run_dir / "finetune"
    second = json.loads((finetune_dir / "summary.json").read_text())
    assert list(second["heads"]) == ["molecules-b3lyp"] and second["finetuned"] is True
    assert "scratch" in second and (finetune_dir / "scratch" / "best.pt").is_file()
    assert yaml.safe_load((finetune_dir / "config.yaml").read_text())["finetune"][
        "init_from"] == str((run_dir / "best.pt").resolve())
    model = pygfm.load(finetune_dir / "best.pt")
    assert model.head_names == ["metals-emt", "molecules-xtb", "molecules-dft",
                                "molecules-b3lyp"]
    assert model.representation.config["n_features"] == 8  # stage 1's trunk


def test_demo_override_of_a_first_stage_dataset(demo_run, tmp_path):
    """demo_run's `--set datasets[2].weight=3` tuned the first stage (three datasets) and
    the fine-tune stage (one dataset) did not fail on it. Both stages are finished, so
    --resume with the same arguments skips both: it must exit 0, not fail in the second
    stage; without the override it would change the finished first stage: refused."""
    run_dir, first = demo_run
    assert first.returncode == 0, describe(first)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["datasets"][2]["weight"] == 3.0
    result = cli("--run-dir", run_dir, "--quiet", "--resume", *DEMO_ARGS, *FIRST_STAGE_ONLY,
                 cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert result.stdout.count("already finished") == 2, describe(result)
    result = cli("--run-dir", run_dir, "--quiet", "--resume", *DEMO_ARGS, cwd=tmp_path)
    assert result.returncode == 2 and "datasets[2].weight" in result.stderr, describe(result)


# ----------------------------------------------------------------- MPI
def test_two_ranks_run(config_file, tmp_path):
    run_dir = tmp_path / "run"
    command = mpiexec(2) + cli_command(config_file, "--run-dir", run_dir, "--quiet")
    result = run_command(command, tmp_path)
    assert result.returncode == 0, describe(result)
    summary = check_run(run_dir, ranks=2, stdout=result.stdout)
    assert summary["structures_seen"] > 0
    # rank 0 alone wrote: no per-rank copies, no temporary files left
    names = [p.name for p in run_dir.iterdir()]
    assert not [n for n in names if "rank" in n or n.startswith(".") or ".tmp" in n], names
    assert "Traceback" not in result.stderr and ": error:" not in result.stderr, \
        describe(result)


def test_two_ranks_convert_the_demo_data_on_first_use(tmp_path):
    """A fresh cache: rank 0 converts the demo set while rank 1 waits. ASE's readers
    broadcast from rank 0 under MPI unless told not to, so this hung before."""
    config = write_yaml(tmp_path / "c.yaml", TRAIN_LOSS_CONFIG)
    run_dir = tmp_path / "run"
    result = run_command(mpiexec(2) + cli_command(config, "--run-dir", run_dir, "--quiet"),
                         tmp_path, timeout=180, environment=env(PYGFM_CACHE=tmp_path / "cache"))
    assert result.returncode == 0, describe(result)
    assert list((tmp_path / "cache" / "demo").glob("molecules-b3lyp-*/pygfm-dataset.json"))
    assert (run_dir / "best.pt").exists()


def test_train_loss_is_the_loss_of_the_global_batch(tmp_path):
    """With one structure per batch and rank, an MAE energy-only loss of a step is the
    mean |energy error| per atom over the structures of all ranks, so the logged
    train_loss (mean over steps) equals train_energy_mae, as it does alone
    (tests/train/test_trainer.py::test_train_loss_alone_is_the_mean_step_loss)."""
    config = write_yaml(tmp_path / "c.yaml", TRAIN_LOSS_CONFIG)
    run_dir = tmp_path / "run"
    result = run_command(mpiexec(2) + cli_command(config, "--run-dir", run_dir, "--quiet"),
                         tmp_path)
    assert result.returncode == 0, describe(result)
    _, rows = read_metrics(run_dir / "metrics.csv")
    assert len(rows) == 2
    for row in rows:
        assert float(row["train_loss"]) == pytest.approx(
            float(row["train_energy_mae/molecules-b3lyp"]), rel=1e-4), row


def test_config_error_on_every_rank_ends_the_job(config_file, tmp_path):
    command = mpiexec(2) + cli_command(config_file, "--run-dir", tmp_path / "run",
                                       "--set", "optimizer.lr=fast")
    result = run_command(command, tmp_path, timeout=120)
    assert result.returncode not in (0, None), describe(result)
    assert "optimizer.lr" in result.stderr, describe(result)


def mpmd(first: list[str], second: list[str]) -> list[str]:
    """``mpiexec -n 1 FIRST : -n 1 SECOND`` (rank 0 runs FIRST, rank 1 SECOND)."""
    prefix = mpiexec(1)
    return prefix + first + [":", "-n", "1"] + second


def test_a_rank_failing_mid_training_ends_the_job(config_file, tmp_path):
    """Rank 1 raises at its third step (tests/train/failing_rank.py) while rank 0 waits in
    a collective: the job must end with an error well before the 300 s collective
    timeout (distributed.timeout is left at its default)."""
    run_dir = tmp_path / "run"
    args = [config_file, "--run-dir", run_dir, "--quiet"]
    command = mpmd(cli_command(*args), [PYTHON, str(HERE / "failing_rank.py"), *map(str, args)])
    started = time.monotonic()
    result = run_command(command, tmp_path, timeout=150)
    assert result.returncode not in (0, None), describe(result)
    assert time.monotonic() - started < 150
    assert "(rank 1): error: injected failure" in result.stderr, describe(result)
    assert not (run_dir / "summary.json").exists()


def test_a_rank_failing_before_training_ends_the_job(config_file, tmp_path):
    """Rank 1 alone cannot use the config (say its node does not see a dataset): the
    job must end with an error, not leave rank 0 waiting forever for rank 1."""
    run_dir = tmp_path / "run"
    args = [config_file, "--run-dir", run_dir, "--quiet"]
    command = mpmd(cli_command(*args),
                   cli_command(*args, "--set", f"datasets[0].path={tmp_path / 'not-here'}"))
    result = run_command(command, tmp_path, timeout=25, allow_timeout=True)
    assert result.returncode is not None, (
        "mpiexec hung (killed after 25 s) when rank 1 failed on its config:\n" + describe(result))
    assert result.returncode != 0, describe(result)
    assert "datasets[0].path" in result.stderr, describe(result)

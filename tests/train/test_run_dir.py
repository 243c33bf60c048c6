"""What pygfm-train may write into (issue #15): a new run goes only into a new or
empty directory or one of its own; a regular file or a folder of someone else's
files is refused and left untouched; a resume removes the checkpoint temporaries
a SIGKILL left (and nothing else)."""

from __future__ import annotations

import pytest

from _train_helpers import (cli, demo_environment,  # noqa: F401 (a fixture)
                            describe, tiny_config, write_yaml)
from pygfm.train import Trainer, resolve, train
from pygfm.train.trainer import RUN_CONFIG_HEADER


# the shared demo cache; torch's thread count restored after each test
pytestmark = pytest.mark.usefixtures("demo_environment")


def small_config() -> dict:
    return resolve(tiny_config(training={"max_steps": 2, "eval_every": 2, "plots": False}))


def contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_folder_of_other_files_is_refused_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("# my own notes, not a pygfm run\n")
    (folder / "data.csv").write_text("1,2,3\n")
    before = contents(folder)
    with pytest.raises(FileExistsError, match=r"--run-dir .*mine: holds files that pygfm-train "
                                              r"did not write \(config.yaml, data.csv\)"):
        Trainer(small_config(), folder, progress=False)
    assert contents(folder) == before


def test_a_regular_file_is_refused(tmp_path):
    target = tmp_path / "run.txt"
    target.write_text("keep")
    with pytest.raises(FileExistsError, match="run.txt: is a file, not a directory"):
        Trainer(small_config(), target, progress=False)
    assert target.read_text() == "keep"


def test_the_cli_refuses_a_regular_file_in_one_line(tmp_path):
    target = tmp_path / "run.txt"
    target.write_text("keep")
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(training={"max_steps": 2}))
    result = cli(config, "--run-dir", target, "--quiet", cwd=tmp_path, timeout=120)
    assert result.returncode not in (0, None), describe(result)
    assert "is a file, not a directory" in result.stderr and "Traceback" not in result.stderr
    assert target.read_text() == "keep"


def test_resume_removes_the_temporaries_a_kill_left(tmp_path):
    run_dir = tmp_path / "run"
    config = small_config()
    train(config, run_dir, progress=False)
    assert (run_dir / "config.yaml").read_text().startswith(RUN_CONFIG_HEADER)
    stale = [".last.pt.tmp-deadbeef", ".best.pt.tmp-0123abcd4567.pt",
             ".metrics.csv.tmp-77.csv"]
    kept = ["notes.txt", ".last.pt.tmp-my-backup", "last.pt.tmp-deadbeef"]
    for name in stale + kept:
        (run_dir / name).write_bytes(b"x" * 64)
    # a new run is refused (the folder holds a run) and removes nothing
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(config, run_dir, progress=False)
    assert all((run_dir / name).exists() for name in stale)
    Trainer(config, run_dir, resume=True, progress=False)
    assert not [name for name in stale if (run_dir / name).exists()]
    assert all((run_dir / name).read_bytes() == b"x" * 64 for name in kept)
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()


def test_a_run_killed_before_its_first_checkpoint_can_start_again(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(RUN_CONFIG_HEADER + "seed: 0\n")
    (run_dir / ".config.yaml.tmp-0badc0de.yaml").write_text("half")
    Trainer(small_config(), run_dir, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]

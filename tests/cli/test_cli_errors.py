"""One error line instead of a traceback (pygfm/cli/_errors.py): the wrapper's rules
in-process, then the entry points as a user runs them (subprocesses): a closed pipe,
an uncountable random input, a corrupt dataset shard, a read-only output folder."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch
from ase.build import bulk, molecule

from pygfm.cli._errors import BROKEN_PIPE, FAILED, INTERRUPTED, USAGE, Context, run

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
TIMEOUT = 120
READ_ONLY = "/proc/pygfm-test"  # read-only even for root (chmod does not stop root)


def command(tool: str, *args, cwd, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pygfm.cli.{tool}", *map(str, args)],
                          cwd=cwd, env=ENV, stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=TIMEOUT, check=False)


def only_line(result, prog: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    return lines[0]


# ----------------------------------------------------------------- the rules
def raising(error):
    def main(context):
        raise error
    return main


@pytest.mark.parametrize("error, words", [
    (ValueError("datasets[0].path: bad"), "datasets[0].path: bad"),
    (KeyError("no head 'x'"), "no head 'x'"),  # not "'no head ...'" in quotes
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/a/b"),
     "/a/b: No such file or directory"),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/last.pt"),
     "/runs/x/last.pt: No space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"),
     "/mnt/ro/run: Read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "/srv/out"),
     "/srv/out: Permission denied"),
    (FileExistsError("runs/x already holds a run"), "runs/x already holds a run"),
])
def test_expected_errors_are_one_line_and_exit_2(error, words, capsys):
    assert run(raising(error), Context("pygfm-x")) == USAGE
    err = capsys.readouterr().err
    assert err == f"pygfm-x: error: {words}\n"


def test_failures_interrupts_and_bugs(capsys):
    class RunFailed(RuntimeError):
        pass

    assert run(raising(RunFailed("the loss became nan")),
               Context("pygfm-x", failures=(RunFailed,))) == FAILED
    assert capsys.readouterr().err == "pygfm-x: error: the loss became nan\n"
    assert run(raising(KeyboardInterrupt()), Context("pygfm-x")) == INTERRUPTED
    assert capsys.readouterr().err == "pygfm-x: interrupted\n"
    aborted = []
    assert run(raising(ZeroDivisionError("division by zero")),
               Context("pygfm-x", abort=aborted.append)) == FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.splitlines()[-1].startswith("pygfm-x: error: division by zero") and \
        "please report it" in err.splitlines()[-1]
    assert aborted == [FAILED]  # under MPI the other ranks are ended too


def test_an_error_every_rank_agrees_on_is_printed_by_rank_0_alone(capsys):
    class Agreed(ValueError):
        pass

    closed = []
    for rank in (0, 1):
        context = Context("pygfm-x", agreed_errors=(Agreed,), rank=rank,
                          abort=lambda code: pytest.fail("no abort: every rank stops"),
                          close=lambda: closed.append(rank))
        assert run(raising(Agreed("the ranks differ")), context) == USAGE
    assert capsys.readouterr().err == "pygfm-x: error: the ranks differ\n"
    assert closed == [0, 1]


# ----------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from pygfm.data import write_dataset
    from pygfm.models import MultiHeadModel
    from pygfm.models.checkpoint import save_checkpoint
    from pygfm.nn import PaiNN

    root = tmp_path_factory.mktemp("cli-errors")
    torch.manual_seed(0)
    model = MultiHeadModel(PaiNN(n_features=8, n_interactions=1, cutoff=4.0, n_rbf=6),
                           ["a"]).double()
    save_checkpoint(model, root / "model.pt")
    structures = [molecule("H2O"), molecule("CH4"), bulk("Cu", cubic=True)] * 4
    write_dataset(root / "set", structures, name="set", fidelity="EMT", shard_size=4,
                  progress=False)
    return root


def test_data_info_into_a_closed_pipe_is_quiet(files):
    """`pygfm-data info DIR | head -0`: the reader is gone before anything is written."""
    process = subprocess.Popen([sys.executable, "-m", "pygfm.cli.data", "info",
                                str(files / "set")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=ENV, cwd=files)
    process.stdout.close()  # the only reader: every write now fails with EPIPE
    _, err = process.communicate(timeout=TIMEOUT)
    assert err.decode() == "" and process.returncode == BROKEN_PIPE


def test_screen_random_input_too_large_to_number(files, tmp_path):
    result = command("screen", "--model", files / "model.pt", "--input",
                     "random:100000000000000000000", "--output", tmp_path / "o.csv",
                     "--quiet", cwd=tmp_path)
    assert result.returncode == USAGE
    line = only_line(result, "pygfm-screen")
    assert "random:100000000000000000000" in line and "2^62" in line


def test_screen_a_corrupt_shard_names_it(files, tmp_path):
    """A position in a shard overwritten by NaN (same size, so only `verify`'s
    checksums would see it): one line naming the shard, not a neighbor-list traceback."""
    import shutil

    import numpy as np

    from pygfm.data import open_dataset

    copy = tmp_path / "set"
    shutil.copytree(files / "set", copy)
    dataset = open_dataset(copy)
    shard = copy / dataset.manifest["shards"][1]["path"]
    data = shard / "data.0"
    raw = data.read_bytes()
    # the positions of the second shard's first structure (structure 4 of the 12)
    needle = np.asarray(dataset[4].positions, dtype=np.float64).tobytes()
    assert needle in raw
    data.write_bytes(raw.replace(needle, np.full(len(needle) // 8, np.nan).tobytes(), 1))
    result = command("screen", "--model", files / "model.pt", "--input", copy,
                     "--output", tmp_path / "o.csv", "--quiet", cwd=tmp_path)
    assert result.returncode == USAGE
    line = only_line(result, "pygfm-screen")
    assert str(shard.relative_to(tmp_path)) in line or str(shard) in line, line
    assert "corrupt" in line


@pytest.mark.parametrize("tool, args, prog", [
    ("screen", ["--input", "random:3", "--output", f"{READ_ONLY}/o.csv", "--quiet"],
     "pygfm-screen"),
    ("data", ["split", "SET", "-o", READ_ONLY, "--quiet"], "pygfm-data split"),
])
def test_a_read_only_output_folder_is_one_line(files, tmp_path, tool, args, prog):
    args = [str(files / "set") if a == "SET" else a for a in args]
    if tool == "screen":
        args = ["--model", files / "model.pt", *args]
    result = command(tool, *args, cwd=tmp_path)
    assert result.returncode == USAGE, result.stderr
    assert READ_ONLY in only_line(result, prog)


def test_hpo_into_a_read_only_folder_is_one_line(tmp_path):
    result = command("hpo", "--run-dir", READ_ONLY, "--quiet", "--set", "trials=1",
                     cwd=tmp_path)
    assert result.returncode == USAGE, result.stderr
    assert READ_ONLY in only_line(result, "pygfm-hpo")


def test_demo_errors_are_one_line(tmp_path):
    result = command("demo", "--no-data", "--structures", "abc", cwd=tmp_path)
    assert result.returncode == 2 and "invalid int value" in result.stderr  # argparse

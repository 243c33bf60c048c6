"""`--overwrite` of pygfm-data convert and split replaces a pygfm dataset and nothing
else (issue #15): a user's folder, a regular file, a dataset holding foreign files
and the input itself are refused, untouched; a real dataset is replaced only once
the new one is complete."""

from __future__ import annotations

import sys
from pathlib import Path

import ase.io
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _structures import mixed_structures  # noqa: E402

from pygfm.cli.data import main  # noqa: E402
from pygfm.data import open_dataset, write_dataset  # noqa: E402
from pygfm.data import adios  # noqa: E402


def snapshot(root: Path) -> dict:
    """Every path under ``root`` (itself included) with its bytes (None for folders)."""
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return {str(p.relative_to(root.parent)): (None if p.is_dir() else p.read_bytes())
            for p in paths}


@pytest.fixture(scope="module")
def extxyz(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "in.extxyz"
    ase.io.write(path, mixed_structures(6, 3))
    return path


def convert(extxyz, output, *extra, name="set"):
    return main(["convert", str(extxyz), "--dataset", name, "--fidelity", "EMT (ase)", "-o",
                 str(output), "--quiet", *extra])


@pytest.fixture
def dataset(extxyz, tmp_path):
    target = tmp_path / "set"
    assert convert(extxyz, target, "--shard-size", "4") == 0
    return target


def refused(capsys, *words):
    message = capsys.readouterr().err
    assert message.startswith("pygfm-data ") and "error:" in message, message
    assert "Traceback" not in message
    for word in words:
        assert str(word) in message, message
    return message


def test_refuses_a_user_folder_and_leaves_it_untouched(extxyz, tmp_path, capsys):
    folder = tmp_path / "thesis"
    (folder / "figures").mkdir(parents=True)
    (folder / "chapter1.tex").write_text("my work")
    (folder / "figures" / "a.png").write_bytes(b"\x89PNG")
    before = snapshot(folder)
    assert convert(extxyz, folder, "--overwrite") == 2
    refused(capsys, folder, "holds no pygfm-dataset.json", "not replacing")
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no partial left


def test_refuses_a_regular_file(extxyz, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert convert(extxyz, target, "--overwrite") == 2
    refused(capsys, target, "is a file, not a directory")
    assert target.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["results.txt"]


def test_refuses_the_input_being_converted(extxyz, tmp_path, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    source = folder / "in.extxyz"
    source.write_bytes(extxyz.read_bytes())
    before = snapshot(folder)
    for output in (source, folder):
        assert convert(source, output, "--overwrite") == 2
        refused(capsys, output, "the input", source)
        assert snapshot(folder) == before


def test_refuses_a_dataset_holding_other_files(dataset, extxyz, capsys):
    (dataset / "notes.txt").write_text("my notes on this set")
    before = snapshot(dataset)
    assert convert(extxyz, dataset, "--overwrite", name="other") == 2
    refused(capsys, dataset, "notes.txt", "not part of the dataset")
    assert snapshot(dataset) == before


def test_replaces_a_dataset(dataset, extxyz, tmp_path):
    assert convert(extxyz, dataset, "--overwrite", name="other") == 0
    assert open_dataset(dataset, verify=True).name == "other"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_failure_mid_write_keeps_the_old_dataset(dataset, monkeypatch, tmp_path):
    """The new dataset fails on its second shard: the old one is still whole."""
    before = snapshot(dataset)
    real, written = adios._write_shard, []

    def failing(path, block, attributes):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        return real(path, block, attributes)

    monkeypatch.setattr(adios, "_write_shard", failing)
    samples = list(open_dataset(dataset))
    with pytest.raises(OSError, match="No space left"):
        write_dataset(dataset, iter(samples), name="new", fidelity="x", shard_size=2,
                      overwrite=True)
    assert written  # the failure came after some of the new dataset was written
    assert snapshot(dataset) == before
    assert open_dataset(dataset, verify=True).name == "set"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_failure_while_publishing_keeps_the_old_dataset(dataset, monkeypatch, tmp_path):
    before = snapshot(dataset)

    def failing(source, target):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(adios, "replace_path", failing)
    with pytest.raises(OSError, match="Input/output"):
        write_dataset(dataset, iter(list(open_dataset(dataset))), name="new", fidelity="x",
                      overwrite=True)
    assert snapshot(dataset) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_split_refuses_to_replace_its_input(dataset, tmp_path, capsys):
    before = snapshot(dataset)
    assert main(["split", str(dataset), "-o", str(tmp_path), "--names", "val,set",
                 "--fractions", "0.5", "0.5", "--quiet", "--overwrite"]) == 2
    refused(capsys, "the input", dataset)
    assert snapshot(dataset) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no part written first


def test_split_checks_every_part_before_writing_any(dataset, tmp_path, capsys):
    out = tmp_path / "parts"
    (out / "test").mkdir(parents=True)
    (out / "test" / "mine.csv").write_text("1,2")
    assert main(["split", str(dataset), "-o", str(out), "--quiet", "--overwrite"]) == 2
    refused(capsys, out / "test", "not replacing")
    assert sorted(p.name for p in out.iterdir()) == ["test"]
    assert (out / "test" / "mine.csv").read_text() == "1,2"

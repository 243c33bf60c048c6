"""pygfm._files: atomic writes (fsynced, nothing left behind on failure, errors that
name the file), the temporaries' names and their cleanup, the folder checks."""

from __future__ import annotations

import errno
import json
import os

import pytest

from pygfm import _files
from pygfm._files import (FileWriteError, atomic_output, atomic_write_bytes, atomic_write_json,
                          atomic_write_text, check_folder_is_ours, check_not_an_input,
                          is_temporary, remove_stale_temporaries, temporary_path)


def _count_fsyncs(monkeypatch) -> list:
    calls = []
    real = os.fsync

    def counting(descriptor):
        calls.append(descriptor)
        return real(descriptor)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_writes_are_complete_and_fsynced(tmp_path, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert len(calls) == 2  # the file and its folder (so the rename survives a crash)
    atomic_write_text(tmp_path / "a.txt", "Å\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "Å\n"
    atomic_write_json(tmp_path / "a.json", {"unit": "eV/Å"})
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"unit": "eV/Å"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.json", "a.txt"]


def test_replacing_keeps_the_old_content_until_the_new_is_complete(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            assert target.read_text() == "old"
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary left


def test_a_directory_output_replaces_the_old_one_only_when_done(tmp_path, monkeypatch):
    target = tmp_path / "out.bp"
    target.mkdir()
    (target / "data.0").write_text("old")
    calls = _count_fsyncs(monkeypatch)
    with atomic_output(target) as tmp:
        assert tmp.suffix == ".bp" and tmp.parent == tmp_path
        tmp.mkdir()
        (tmp / "data.0").write_text("new")
    assert (target / "data.0").read_text() == "new"
    assert len(calls) >= 3  # the file, the new directory and the folder
    assert [p.name for p in tmp_path.iterdir()] == ["out.bp"]


def test_disk_full_names_the_file_and_keeps_errno(tmp_path, monkeypatch):
    target = tmp_path / "runs" / "x" / "last.pt"
    target.parent.mkdir(parents=True)

    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"weights")
    error = info.value
    assert isinstance(error, FileWriteError)
    assert error.errno == errno.ENOSPC and error.filename == str(target)
    assert str(error) == f"cannot write {target}: No space left on device"
    assert list(target.parent.iterdir()) == []


def test_an_unwritable_folder_names_the_file(tmp_path):
    target = tmp_path / "missing" / "summary.json"
    with pytest.raises(FileWriteError, match=f"cannot write {target}: No such file"):
        atomic_write_json(target, {})


def test_an_error_about_another_file_is_left_alone(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        with atomic_output(tmp_path / "out.csv"):
            open(tmp_path / "input.xyz", encoding="utf-8")
    assert not isinstance(info.value, FileWriteError)
    assert info.value.filename == str(tmp_path / "input.xyz")


def test_temporary_names_and_their_cleanup(tmp_path):
    tmp = temporary_path(tmp_path / "last.pt")
    assert tmp.name.startswith(".last.pt.tmp-") and tmp.suffix == ".pt"
    assert is_temporary(tmp.name, "last.pt")
    assert is_temporary(".last.pt.tmp-deadbeef", "last.pt")  # what older pygfm wrote
    assert is_temporary(".chunk-000000003.npz.tmp-1f.npz", "chunk-*.npz")
    keep = ["last.pt", ".last.pt.tmp-notours", "last.pt.tmp-deadbeef", ".best.pt.tmp-deadbeef",
            ".last.pt.tmp-deadbeef.txt", "notes.txt"]
    for name in keep + [".last.pt.tmp-deadbeef", tmp.name]:
        (tmp_path / name).write_text("x")
    (tmp_path / ".last.pt.tmp-abc123.pt").mkdir()
    removed = remove_stale_temporaries(tmp_path, "last.pt")
    assert sorted(p.name for p in removed) == sorted([".last.pt.tmp-abc123.pt",
                                                      ".last.pt.tmp-deadbeef", tmp.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temporaries(tmp_path / "absent", "last.pt") == []


def test_folder_checks(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="is a file, not a directory"):
        check_folder_is_ours(tmp_path / "file", lambda f: True, option="--run-dir", tool="t")
    check_folder_is_ours(tmp_path / "new", lambda f: False, option="--run-dir", tool="t")
    (tmp_path / "empty").mkdir()
    check_folder_is_ours(tmp_path / "empty", lambda f: False, option="--run-dir", tool="t")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "thesis.tex").write_text("mine")
    with pytest.raises(FileExistsError, match=r"--run-dir .*user: holds files that t did not "
                                              r"write \(thesis.tex\)"):
        check_folder_is_ours(tmp_path / "user", lambda f: False, option="--run-dir", tool="t")
    check_folder_is_ours(tmp_path / "user", lambda f: True, option="--run-dir", tool="t")

    check_not_an_input(tmp_path / "out", [tmp_path / "in.xyz"], option="-o")
    with pytest.raises(FileExistsError, match="is the input"):
        check_not_an_input(tmp_path / "in.xyz", [tmp_path / "in.xyz"], option="-o")
    with pytest.raises(FileExistsError, match="holds the input"):
        check_not_an_input(tmp_path, [tmp_path / "sub" / "in.xyz"], option="-o")


def test_every_writer_uses_the_helper():
    """No hand-written temporary-and-rename left in the package (issue #18)."""
    from pathlib import Path

    package = Path(_files.__file__).parent
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py")
                 if p.name != "_files.py" and ("os.replace(" in p.read_text(encoding="utf-8")
                                               or ".tmp-" in p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_a_file_never_replaces_a_directory(tmp_path):
    folder = tmp_path / "metrics.csv"  # someone's directory where a file is to go
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(FileWriteError, match=f"cannot write {folder}: Is a directory"):
        atomic_write_text(folder, "step\n")
    assert (folder / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]

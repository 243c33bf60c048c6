"""pygfm datasets on disk (pygfm/data/adios.py): write_dataset / open_dataset.

* write -> open is bitwise exact for molecules, bulk crystals and slabs with mixed
  labels, for one sample per shard, several shards and one shard;
* indexing, views (slices, steps, lists, views of views), read_block/take, load();
* manifest and statistics.json contents;
* writes are atomic: a bad sample or an interrupted write leaves nothing behind;
* every kind of damage (truncated, flipped, missing files, bad manifests, duplicated
  or missing sample ids) is a DatasetError naming the file, and never a hang.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

import pygfm.data
import pygfm.data.adios as adios
from _structures import assert_same_sample, emt_label, mixed_structures
from pygfm.data import (DatasetError, Sample, SampleBlock, open_dataset, write_dataset)
from pygfm.data.adios import FORMAT_NAME, FORMAT_VERSION, MANIFEST, STATISTICS, UNITS
from pygfm.data.statistics import compute_statistics

NUM = 100
_CACHE: dict = {}


def structures(n: int = NUM):
    if "atoms" not in _CACHE:
        _CACHE["atoms"] = mixed_structures(NUM, seed=11)
        _CACHE["samples"] = [Sample.from_ase(a) for a in _CACHE["atoms"]]
    return _CACHE["atoms"][:n], _CACHE["samples"][:n]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{shard_size: (dataset path, number of samples)}; shard size 1 on fewer samples."""
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    for shard_size, n in ((1, 30), (7, NUM), (100_000, NUM)):
        atoms, _ = structures(n)
        path = root / f"mixed-{shard_size}"
        dataset = write_dataset(path, atoms, name="mixed", fidelity="EMT (ase)",
                                description="random structures", shard_size=shard_size)
        assert isinstance(dataset, pygfm.data.AtomicDataset)
        out[shard_size] = (path, n)
    return out


@pytest.fixture(scope="module")
def dataset7(written):
    return open_dataset(written[7][0])


def small(tmp_path, n=12, name="small", shard_size=5, **kwargs):
    atoms, _ = structures(n)
    return write_dataset(tmp_path / name, atoms, name=name, fidelity="EMT",
                         shard_size=shard_size, **kwargs)


def only_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# ----------------------------------------------------------------- round trip
@pytest.mark.parametrize("shard_size", [1, 7, 100_000])
def test_round_trip_is_bitwise_exact(written, shard_size):
    path, n = written[shard_size]
    _, expected = structures(n)
    dataset = open_dataset(path)
    assert len(dataset) == n
    assert len(dataset.manifest["shards"]) == math.ceil(n / shard_size)
    assert dataset.name == "mixed" and dataset.description == "random structures"
    np.testing.assert_array_equal(dataset.num_atoms, [s.num_atoms for s in expected])
    for k in range(n):
        assert_same_sample(dataset[k], expected[k], index=k, dataset="mixed")
    # the whole dataset as one block equals packing the inputs: every array, bitwise
    block = dataset.read_block()
    reference = SampleBlock.from_samples(expected)
    assert set(block.arrays) == set(reference.arrays)
    for name, value in reference.arrays.items():
        got = block.arrays[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), name
    block.check("read back")
    # iteration gives the same samples in order
    for k, sample in enumerate(dataset):
        assert_same_sample(sample, expected[k], index=k)
    assert k == n - 1
    # load() reads everything (checked) and then gives the same results
    dataset.load()
    for k in (0, n // 2, n - 1):
        assert_same_sample(dataset[k], expected[k], index=k)
    loaded = dataset.read_block()
    for name, value in reference.arrays.items():
        assert loaded.arrays[name].tobytes() == value.tobytes(), name
    dataset.verify()
    open_dataset(path, verify=True)


def test_shards_hold_contiguous_ids_and_their_files(written):
    path, n = written[7]
    manifest = json.loads((path / MANIFEST).read_text())
    assert [s["path"] for s in manifest["shards"]] == [f"shard-r0000-{i:05d}.bp"
                                                       for i in range(15)]
    for i, shard in enumerate(manifest["shards"]):
        assert (shard["first_id"], shard["last_id"]) == (7 * i, min(7 * i + 6, n - 1))
        for file_name, info in shard["files"].items():
            assert (path / shard["path"] / file_name).stat().st_size == info["bytes"]
    assert sum(s["num_samples"] for s in manifest["shards"]) == n


# ----------------------------------------------------------------- indexing and views
def test_indexing_negative_and_out_of_range(dataset7):
    _, expected = structures()
    assert_same_sample(dataset7[-1], expected[-1], index=NUM - 1)
    assert_same_sample(dataset7[-NUM], expected[0], index=0)
    assert_same_sample(dataset7[np.int64(42)], expected[42], index=42)
    for bad in (NUM, -NUM - 1, 10**9):
        with pytest.raises(IndexError, match="mixed: index"):
            dataset7[bad]
    with pytest.raises(IndexError, match="out of range"):
        dataset7[[0, NUM]]
    with pytest.raises(IndexError, match="out of range"):
        dataset7[[-NUM - 1]]
    with pytest.raises(TypeError, match="indices must be integers"):
        dataset7[1.5]


@pytest.mark.parametrize("key", [slice(10, 50, 3), slice(None, None, -1), slice(95, None),
                                 slice(-5, -1), [5, 2, 99, -1, 5], np.array([0, 63, 7]),
                                 slice(3, 3)])
def test_views_index_the_whole_dataset(dataset7, key):
    _, expected = structures()
    positions = np.arange(NUM)[key]
    view = dataset7[key]
    assert len(view) == len(positions)
    np.testing.assert_array_equal(view.num_atoms, [expected[p].num_atoms for p in positions])
    for k, p in list(enumerate(positions))[:4] + list(enumerate(positions))[-2:]:
        assert_same_sample(view[k], expected[p], index=int(p))
    block = view.read_block()
    np.testing.assert_array_equal(block.arrays["sample_id"], positions)
    for k, p in enumerate(positions):
        assert_same_sample(block.sample(k), expected[p], index=int(p))
    assert [s.index for s in view] == positions.tolist()
    assert view.name == "mixed" and view.fidelity == dataset7.fidelity


def test_scattered_reads_from_one_big_shard(written, monkeypatch):
    """Samples far apart in a shard are read as separate runs, not one big span."""
    path, n = written[100_000]
    _, expected = structures(n)
    dataset = open_dataset(path)
    spans = []
    real = adios._read_shard_ranges

    def spy(shard, ranges, *args, **kwargs):
        spans.extend(ranges)
        return real(shard, ranges, *args, **kwargs)

    monkeypatch.setattr(adios, "_read_shard_ranges", spy)
    monkeypatch.setattr(adios, "_RUN_GAP_ATOMS", 0)  # only adjacent samples share a read
    positions = [n - 1, 0, 50, 1, n - 2, 0, 52]
    block = dataset.take(positions)
    assert sorted((int(a), int(b)) for a, b in spans) == [(0, 2), (50, 51), (52, 53),
                                                          (n - 2, n)]
    for k, p in enumerate(positions):
        assert_same_sample(block.sample(k), expected[p], index=p)


def test_ranks_must_pass_their_round_robin_share(tmp_path):
    """Under MPI the ids are r, r+P, ...: a rank with the wrong share is refused."""
    class FakeComm:  # rank 0 of 2, as if rank 1 wrote nothing
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 2

        def bcast(self, value):
            return value

        def allgather(self, value):
            return [value, None]

        def gather(self, value):
            return [value, []]

    atoms, _ = structures(6)
    with pytest.raises(ValueError, match="must pass input items r, r\\+2"):
        write_dataset(tmp_path / "d", atoms, name="d", fidelity="EMT", comm=FakeComm())
    assert only_dirs(tmp_path) == []


def test_boolean_mask_selects_samples(dataset7):
    mask = np.zeros(NUM, dtype=bool)
    mask[[3, 40, 41]] = True
    assert [s.index for s in dataset7[mask]] == [3, 40, 41]
    with pytest.raises(IndexError, match="boolean mask"):
        dataset7[np.array([True, False])]


def test_views_of_views(dataset7):
    _, expected = structures()
    view = dataset7[10:60]
    inner = view[5:20:2]            # whole-dataset positions 15, 17, ..., 29
    innermost = inner[[-1, 0, 3]]   # 29, 15, 21
    assert len(inner) == 8
    assert [inner[k].index for k in range(len(inner))] == list(range(15, 30, 2))
    assert [s.index for s in innermost] == [29, 15, 21]
    assert_same_sample(innermost[0], expected[29], index=29)
    assert_same_sample(inner[-1], expected[29], index=29)
    np.testing.assert_array_equal(innermost.num_atoms, [expected[p].num_atoms
                                                        for p in (29, 15, 21)])
    with pytest.raises(IndexError):
        inner[8]
    # the parent is unaffected
    assert len(dataset7) == NUM and dataset7[3].index == 3


def test_read_block_and_take_keep_the_order(dataset7):
    _, expected = structures()
    block = dataset7.read_block(13, 30)  # spans shards 1..4
    np.testing.assert_array_equal(block.arrays["sample_id"], np.arange(13, 30))
    for k in range(len(block)):
        assert_same_sample(block.sample(k), expected[13 + k], index=13 + k)
    assert len(dataset7.read_block(90, 10**6)) == 10
    assert len(dataset7.read_block(5, 5)) == 0
    with pytest.raises(IndexError, match="bad range"):
        dataset7.read_block(-1, 5)
    with pytest.raises(IndexError, match="bad range"):
        dataset7.read_block(20, 10)
    order = [77, 3, 3, 50, 0, 99, 51, 6]
    taken = dataset7.take(order)
    taken.check("taken")
    np.testing.assert_array_equal(taken.arrays["sample_id"], order)
    for k, p in enumerate(order):
        assert_same_sample(taken.sample(k), expected[p], index=p)
    # negative positions count from the end; out of range is an IndexError
    negative = dataset7.take([-1, -100])
    np.testing.assert_array_equal(negative.arrays["sample_id"], [99, 0])
    with pytest.raises(IndexError):
        dataset7.take([100])
    # take on a view: positions are the view's, ids the whole dataset's
    view = dataset7[::-2]  # 99, 97, ...
    np.testing.assert_array_equal(view.take([0, 1, -1]).arrays["sample_id"], [99, 97, 1])
    np.testing.assert_array_equal(view.read_block(2, 4).arrays["sample_id"], [95, 93])


def test_load_then_views_and_reads_match(written):
    path, _ = written[7]
    _, expected = structures()
    dataset = open_dataset(path)
    before = dataset.take([64, 2, 33])
    assert dataset.load() is dataset
    view = dataset[60:70]
    after = dataset.take([64, 2, 33])
    for name, value in before.arrays.items():
        assert after.arrays[name].tobytes() == value.tobytes(), name
    assert_same_sample(view[4], expected[64], index=64)
    assert [s.index for s in view[::3]] == [60, 63, 66, 69]


def test_rank_range_covers_everything(dataset7):
    ranges = [dataset7.rank_range(r, 3) for r in range(3)]
    assert ranges[0][0] == 0 and ranges[-1][1] == NUM
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    with pytest.raises(ValueError):
        dataset7.rank_range(3, 3)


# ----------------------------------------------------------------- manifest and statistics
def test_manifest_contents(written):
    path, n = written[7]
    atoms, expected = structures()
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["format"] == FORMAT_NAME and manifest["format_version"] == FORMAT_VERSION
    assert manifest["name"] == "mixed" and manifest["description"] == "random structures"
    assert manifest["units"] == UNITS
    from ase.data import chemical_symbols
    numbers = sorted({int(z) for a in atoms for z in a.numbers})
    assert manifest["elements"] == [chemical_symbols[z] for z in numbers]
    counts = {label: sum(getattr(s, label) is not None for s in expected)
              for label in ("energy", "forces", "stress")}
    assert all(counts.values())
    assert manifest["label_counts"] == counts
    assert manifest["labels"] == ["energy", "forces", "stress"]
    assert manifest["num_samples"] == n
    assert manifest["num_atoms"] == sum(s.num_atoms for s in expected)
    assert manifest["writer"].startswith("pygfm ")
    assert manifest["fidelity"] == {"code": None, "code_version": None, "method": None,
                                    "basis": None, "text": "EMT (ase)"}
    dataset = open_dataset(path)
    assert dataset.elements == manifest["elements"] and dataset.labels == manifest["labels"]
    assert dataset.fidelity == manifest["fidelity"] and dataset.units == UNITS
    assert "mixed" in repr(dataset) and "EMT (ase)" in repr(dataset)


def test_labels_only_lists_labels_some_sample_has(tmp_path):
    bare = [molecule("H2O"), emt_label(molecule("CH4"), ("energy",))]
    dataset = write_dataset(tmp_path / "d", bare, name="d", fidelity="x")
    assert dataset.labels == ["energy"]
    assert dataset.manifest["label_counts"] == {"energy": 1, "forces": 0, "stress": 0}
    assert dataset[0].labels == () and dataset[1].labels == ("energy",)


@pytest.mark.parametrize("fidelity, expected", [
    ("  PBE/def2-SVP (pyscf)  ", {"code": None, "code_version": None, "method": None,
                                  "basis": None, "text": "PBE/def2-SVP (pyscf)"}),
    ({"code": "pyscf", "code_version": "2.14.0", "method": "PBE", "basis": "def2-SVP"},
     {"code": "pyscf", "code_version": "2.14.0", "method": "PBE", "basis": "def2-SVP",
      "text": "PBE/def2-SVP (pyscf 2.14.0)"}),
    ({"code": "ase", "method": "EMT"},
     {"code": "ase", "code_version": None, "method": "EMT", "basis": None,
      "text": "EMT (ase)"}),
    ({"code": "tblite", "code_version": 0.8}, {"code": "tblite", "code_version": "0.8",
                                               "method": None, "basis": None,
                                               "text": "tblite 0.8"}),
    ({"method": "GFN2-xTB", "text": "xtb as I like it"},
     {"code": None, "code_version": None, "method": "GFN2-xTB", "basis": None,
      "text": "xtb as I like it"}),
])
def test_fidelity_normalization(tmp_path, fidelity, expected):
    dataset = write_dataset(tmp_path / "d", [molecule("H2O")], name="d", fidelity=fidelity)
    assert dataset.fidelity == expected
    assert json.loads((tmp_path / "d" / MANIFEST).read_text())["fidelity"] == expected


@pytest.mark.parametrize("fidelity, error", [("", ValueError), ("   ", ValueError),
                                             ({"level": "PBE"}, ValueError),
                                             ({"code_version": "1.0"}, ValueError),
                                             ({"basis": "def2-SVP"}, ValueError),
                                             ({}, ValueError), (3, TypeError),
                                             (None, TypeError)])
def test_bad_fidelity_is_refused(tmp_path, fidelity, error):
    with pytest.raises(error, match="fidelity"):
        write_dataset(tmp_path / "d", [molecule("H2O")], name="d", fidelity=fidelity)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("kwargs, message", [(dict(name=""), "name"),
                                             (dict(name="a/b"), "name"),
                                             (dict(shard_size=0), "shard_size")])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    arguments = dict(name="d", fidelity="x") | kwargs
    with pytest.raises(ValueError, match=message):
        write_dataset(tmp_path / "d", [molecule("H2O")], **arguments)
    assert os.listdir(tmp_path) == []


def test_statistics_file_matches_compute_statistics(written):
    path, _ = written[7]
    saved = json.loads((path / STATISTICS).read_text(encoding="utf-8"))
    dataset = open_dataset(path)
    assert dataset.statistics == saved
    recomputed = json.loads(json.dumps(compute_statistics(dataset)))
    assert saved == recomputed
    assert saved["num_samples"] == NUM
    _, expected = structures()
    assert saved["samples_with_energy"] == sum(s.energy is not None for s in expected)


def test_no_statistics_when_asked(tmp_path):
    dataset = small(tmp_path, statistics=False)
    assert dataset.statistics is None and not (tmp_path / "small" / STATISTICS).exists()


def test_bad_statistics_json_is_named(tmp_path):
    small(tmp_path)
    (tmp_path / "small" / STATISTICS).write_text("{nope")
    with pytest.raises(DatasetError, match=f"{STATISTICS}: not valid JSON"):
        open_dataset(tmp_path / "small")


def test_samples_and_label_keys(tmp_path):
    """Sample objects are accepted (re-indexed by position); label keys reach ASE input."""
    atoms = molecule("H2O")
    atoms.info["my_energy"] = -4.0
    dataset = write_dataset(tmp_path / "k", [atoms, atoms], name="k", fidelity="x",
                            energy_key="my_energy")
    assert [s.energy for s in dataset] == [-4.0, -4.0]
    samples = [Sample([1], [[0, 0, 0]], index=40, dataset="elsewhere"),
               Sample([2], [[0, 0, 0]], energy=1.0)]
    dataset = write_dataset(tmp_path / "s", samples, name="s", fidelity="x")
    assert [(s.index, s.dataset, int(s.numbers[0])) for s in dataset] == [(0, "s", 1),
                                                                         (1, "s", 2)]


def test_missing_parent_directories_are_made(tmp_path):
    dataset = write_dataset(tmp_path / "a" / "b" / "set", [molecule("H2O")], name="set",
                            fidelity="x")
    assert len(dataset) == 1 and dataset.path == tmp_path / "a" / "b" / "set"
    assert os.listdir(tmp_path / "a" / "b") == ["set"]


def test_empty_dataset(tmp_path):
    dataset = write_dataset(tmp_path / "empty", [], name="empty", fidelity="x")
    assert len(dataset) == 0 and list(dataset) == [] and dataset.labels == []
    assert dataset.manifest["num_samples"] == 0 and dataset.manifest["shards"] == []
    assert len(dataset.read_block()) == 0 and len(dataset.num_atoms) == 0
    assert not (tmp_path / "empty" / STATISTICS).exists()
    open_dataset(tmp_path / "empty", verify=True)
    with pytest.raises(IndexError):
        dataset[0]


def test_pygfm_data_open_is_open_dataset(written):
    assert len(pygfm.data.open(written[7][0])) == NUM


# ----------------------------------------------------------------- atomic writes
def test_overwrite_refused_then_allowed(tmp_path):
    small(tmp_path, n=5)
    before = (tmp_path / "small" / MANIFEST).read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        small(tmp_path, n=8)
    assert (tmp_path / "small" / MANIFEST).read_text() == before
    dataset = small(tmp_path, n=8, overwrite=True)
    assert len(dataset) == 8 and len(open_dataset(tmp_path / "small")) == 8
    assert only_dirs(tmp_path) == ["small"]  # no .partial or .old directory left
    # a plain file in the way is refused, even with overwrite (it is not a dataset)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "file", [molecule("H2O")], name="f", fidelity="x")
    with pytest.raises(FileExistsError, match="is a file, not a directory"):
        write_dataset(tmp_path / "file", [molecule("H2O")], name="f", fidelity="x",
                      overwrite=True)
    assert (tmp_path / "file").read_text() == "x"


def test_a_bad_sample_in_the_middle_leaves_nothing(tmp_path):
    atoms, _ = structures(30)
    bad = list(atoms)
    bad[17] = Atoms("HX", positions=[[0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="set, sample 17: atom 1 has atomic number 0"):
        write_dataset(tmp_path / "out", bad, name="set", fidelity="x", shard_size=4)
    assert os.listdir(tmp_path) == []
    nan = list(atoms)
    nan[20] = Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]])
    with pytest.raises(ValueError, match="set, sample 20: positions contain NaN"):
        write_dataset(tmp_path / "out", nan, name="set", fidelity="x", shard_size=4)
    assert os.listdir(tmp_path) == []


def test_a_failed_overwrite_keeps_the_old_dataset(tmp_path):
    small(tmp_path, n=6, name="keep")
    manifest = (tmp_path / "keep" / MANIFEST).read_text()
    atoms, _ = structures(10)
    bad = list(atoms) + [Atoms("H", pbc=True)]
    with pytest.raises(ValueError, match="keep, sample 10: .*degenerate"):
        write_dataset(tmp_path / "keep", bad, name="keep", fidelity="x", overwrite=True,
                      shard_size=3)
    assert only_dirs(tmp_path) == ["keep"]
    assert (tmp_path / "keep" / MANIFEST).read_text() == manifest
    assert len(open_dataset(tmp_path / "keep", verify=True)) == 6


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError("disk full")])
def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch, error):
    calls = []
    real = adios._write_shard

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(adios, "_write_shard", failing)
    atoms, _ = structures(20)
    with pytest.raises(error if isinstance(error, type) else type(error)):
        write_dataset(tmp_path / "out", atoms, name="out", fidelity="x", shard_size=3)
    assert len(calls) == 3
    assert os.listdir(tmp_path) == []


def test_an_interrupted_input_iterator_leaves_nothing(tmp_path):
    atoms, _ = structures(20)

    def source():
        yield from atoms[:10]
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError, match="reader died"):
        write_dataset(tmp_path / "out", source(), name="out", fidelity="x", shard_size=3)
    assert os.listdir(tmp_path) == []


def test_leftover_partial_directory_does_not_open(tmp_path, monkeypatch):
    """What a killed conversion leaves (simulated: cleanup disabled) is no dataset."""
    monkeypatch.setattr(adios.shutil, "rmtree", lambda *a, **k: None)
    atoms, _ = structures(10)
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "out", list(atoms) + [Atoms()], name="out", fidelity="x",
                      shard_size=3)
    monkeypatch.undo()
    (partial,) = tmp_path.iterdir()
    assert partial.name.startswith(".out.partial-")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetError, match=f"{partial.name}: not a complete pygfm dataset.*"
                                           "interrupted conversion"):
        open_dataset(partial)


def test_directories_that_are_not_datasets(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such dataset directory"):
        open_dataset(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match=f"plain: not a complete pygfm dataset: "
                                           f"{MANIFEST} is missing"):
        open_dataset(tmp_path / "plain")
    (tmp_path / "data.bp").mkdir()
    with pytest.raises(DatasetError, match="HydraGNN"):
        open_dataset(tmp_path / "data.bp")


# ----------------------------------------------------------------- damage
def _copy(written, tmp_path, shard_size=7) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(written[shard_size][0], target)
    return target


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_truncated_files_fail_fast_naming_the_file(written, tmp_path):
    """ADIOS2 may hang reading a truncated BP5 file: opening must fail before that.
    Run in a subprocess with a timeout so that a regression cannot hang the suite."""
    cases = {}
    for file_name in ("data.0", "md.0", "md.idx"):
        target = tmp_path / f"cut-{file_name}"
        shutil.copytree(written[7][0], target)
        victim = target / "shard-r0000-00003.bp" / file_name
        size = victim.stat().st_size
        with open(victim, "r+b") as handle:
            handle.truncate(size // 2)
        cases[str(target)] = str(victim)
    script = textwrap.dedent("""
        import json, sys
        from pygfm.data import open_dataset
        out = {}
        for path in sys.argv[1:]:
            for verify in (False, True):
                try:
                    open_dataset(path, verify=verify)
                    out[path + str(verify)] = "opened"
                except Exception as error:
                    out[path + str(verify)] = type(error).__name__ + ": " + str(error)
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script, *cases], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for path, victim in cases.items():
        for verify in (False, True):
            message = results[path + str(verify)]
            assert message.startswith("DatasetError: " + victim), message
            assert "the manifest says" in message and "truncated" in message


def test_flipped_byte_fails_the_checksum(written, tmp_path):
    path = _copy(written, tmp_path)
    dataset = open_dataset(path)
    victim = path / "shard-r0000-00005.bp" / "data.0"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    victim.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=f"{victim}: checksum mismatch"):
        dataset.verify()
    with pytest.raises(DatasetError, match=f"{victim}: checksum mismatch"):
        open_dataset(path, verify=True)


def test_missing_shard_and_missing_file(written, tmp_path):
    path = _copy(written, tmp_path)
    shutil.rmtree(path / "shard-r0000-00002.bp")
    with pytest.raises(DatasetError, match="shard-r0000-00002.bp: shard listed in the "
                                           "manifest is missing"):
        open_dataset(path)
    shutil.rmtree(path)
    path = _copy(written, tmp_path)
    (path / "shard-r0000-00004.bp" / "md.idx").unlink()
    with pytest.raises(DatasetError, match=r"shard-r0000-00004.bp/md.idx: missing \(the "
                                           "dataset is incomplete\\)"):
        open_dataset(path)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="something-else"), "format 'something-else', expected"),
    (lambda m: m.pop("format"), "format None, expected"),
    (lambda m: m.update(format_version=2), "format version 2; this pygfm reads version 1"),
    (lambda m: m.pop("shards"), r"missing keys \['shards'\]"),
    (lambda m: [m.pop("name"), m.pop("num_samples")], r"missing keys \['name', 'num_samples'\]"),
    (lambda m: m["shards"][3].update(num_samples=6), "shard-r0000-00003.bp: 7 samples, the "
                                                     "manifest says 6"),
    (lambda m: m["shards"][3].update(num_atoms=1), "shard-r0000-00003.bp: \\d+ atoms, the "
                                                   "manifest says 1"),
    # a shard dropped from the list: its ids are missing
    (lambda m: m["shards"].pop(4), r"sample ids are not 0..99 \(shards missing"),
    (lambda m: [m["shards"].pop(4), m.update(num_samples=93)], r"sample ids are not 0..92"),
    # a shard listed twice: its ids are duplicated
    (lambda m: [m["shards"].append(m["shards"][0]), m.update(num_samples=107)],
     r"sample ids are not 0..106"),
    (lambda m: m.update(num_samples=101), r"sample ids are not 0..100"),
])
def test_bad_manifests(written, tmp_path, edit, message):
    path = _copy(written, tmp_path)
    _edit_manifest(path, edit)
    with pytest.raises(DatasetError, match=message) as info:
        open_dataset(path)
    assert str(path) in str(info.value)


def test_manifest_that_is_not_json(written, tmp_path):
    path = _copy(written, tmp_path)
    (path / MANIFEST).write_text('{"format": "pygfm-atomic-dataset",')
    with pytest.raises(DatasetError, match=f"{MANIFEST}: not valid JSON"):
        open_dataset(path)
    (path / MANIFEST).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="not valid JSON"):
        open_dataset(path)


def _rewrite_shard(path: Path, number: int, change) -> None:
    """Rewrite shard ``number`` with changed arrays, and its manifest entry to match
    (sizes, checksums), as a buggy writer would."""
    manifest = json.loads((path / MANIFEST).read_text())
    entry = manifest["shards"][number]
    shard = path / entry["path"]
    arrays = adios._read_shard_arrays(shard)
    change(arrays)
    shutil.rmtree(shard)
    new = adios._write_shard(shard, SampleBlock(arrays, "mixed"), {"format": FORMAT_NAME})
    entry["files"] = new["files"]
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_duplicated_sample_ids_in_the_shards(written, tmp_path):
    path = _copy(written, tmp_path)
    _rewrite_shard(path, 1, lambda a: a["sample_id"].__setitem__(slice(None), np.arange(7)))
    with pytest.raises(DatasetError, match=r"sample ids are not 0..99 \(shards missing, "
                                           "duplicated or corrupt\\)"):
        open_dataset(path)


def test_sample_ids_out_of_range_in_the_shards(written, tmp_path):
    path = _copy(written, tmp_path)
    _rewrite_shard(path, 2, lambda a: a["sample_id"].__setitem__(0, 1000))
    with pytest.raises(DatasetError, match="sample ids are not"):
        open_dataset(path)


def test_bad_arrays_are_found_by_verify_and_load(written, tmp_path):
    path = _copy(written, tmp_path)

    def poison(arrays):
        arrays["positions"][3, 1] = np.nan

    _rewrite_shard(path, 6, poison)
    dataset = open_dataset(path)  # the cheap checks pass: sizes, counts and ids are fine
    shard = path / "shard-r0000-00006.bp"
    with pytest.raises(ValueError, match=f"{shard}: 'positions' of samples 0..6 hold NaN or "
                                         "infinite values \\(corrupt shard"):
        dataset.verify()
    with pytest.raises(ValueError, match=f"{shard}: 'positions' of samples 0..6 hold NaN or "
                                         "infinite values \\(corrupt shard"):
        open_dataset(path).load()
    with pytest.raises(ValueError, match="'positions' of samples 0..6 hold NaN"):
        open_dataset(path, verify=True)

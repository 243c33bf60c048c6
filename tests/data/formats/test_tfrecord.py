"""QCML's TFDS release read without TensorFlow (issue #16).

The fixture under ``fixtures/qcml/`` was written by QCML's reference writer,
TensorFlow Datasets (``fixtures/make_qcml.py``: a TFDS builder with the feature
names and shapes of the published ``dft_force_field`` config, two shards, TFDS's
own shuffling); ``fixtures/qcml_expected.json`` holds the raw values given to
TFDS. TFDS stores floats as float32, so expected values are the float32 of the
raw numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pygfm.cli.data import main
from pygfm.data import open_dataset
from pygfm.data.formats import LabelKeys, ReadOptions, detect, get_format, parse_units
from pygfm.data.formats import tfrecord

FIXTURES = Path(__file__).parent / "fixtures"
QCML = FIXTURES / "qcml" / "dft_force_field" / "1.0.0"
EXPECTED = json.loads((FIXTURES / "qcml_expected.json").read_text())
HARTREE, BOHR = 27.211386245988, 0.529177210903


def _all(path=QCML, options=None, size=1):
    fmt = get_format("qcml")
    out = {}
    for rank in range(size):
        for position, sample in fmt.read(path, options, rank, size):
            assert position % size == rank and position not in out
            out[position] = sample
    return out


def _by_energy():
    return {float(np.float32(e["pbe0_energy"])): e for e in EXPECTED}


def test_values_match_what_tfds_was_given():
    samples = _all()
    assert sorted(samples) == list(range(len(EXPECTED)))
    expected = _by_energy()
    assert len(expected) == len(EXPECTED)
    seen = set()
    for sample in samples.values():
        raw = expected[sample.energy]
        seen.add(raw["key_hash"])
        np.testing.assert_array_equal(sample.numbers, raw["atomic_numbers"])
        np.testing.assert_array_equal(sample.positions, np.float32(raw["positions"]))
        np.testing.assert_array_equal(sample.forces, np.float32(raw["pbe0_forces"]))
        assert (sample.charge, sample.spin) == (raw["charge"], raw["multiplicity"])
        assert not sample.pbc.any() and sample.stress is None
    assert len(seen) == len(EXPECTED)


def test_ranks_partition_the_shards_and_agree_with_one_rank():
    one = _all()
    for size in (2, 3, 5):
        split = _all(size=size)
        assert sorted(split) == sorted(one)
        for k in one:
            assert split[k].energy == one[k].energy
            np.testing.assert_array_equal(split[k].positions, one[k].positions)


def test_units_override_atomic_units():
    options = ReadOptions(units=parse_units("energy=hartree,forces_length=bohr"))
    plain, scaled = _all(), _all(options=options)
    for k in plain:
        assert scaled[k].energy == pytest.approx(plain[k].energy * HARTREE, rel=1e-15)
        np.testing.assert_allclose(scaled[k].forces, plain[k].forces * HARTREE / BOHR,
                                   rtol=1e-15)
        np.testing.assert_array_equal(scaled[k].positions, plain[k].positions)


def test_detected_by_content_count_and_inspect(tmp_path):
    assert detect(QCML).name == "qcml"
    assert detect(FIXTURES / "qcml").name == "qcml"  # a folder above one version
    shard = tmp_path / "anything.bin"
    shutil.copy(sorted(QCML.glob("*.tfrecord-*"))[0], shard)
    assert tfrecord._sniff(shard) and not tfrecord._sniff(FIXTURES / "make_qcml.py")
    fmt = get_format("qcml")
    assert fmt.count(QCML, None) == len(EXPECTED)
    # without dataset_info.json the records are counted from the framing
    bare = tmp_path / "bare"
    shutil.copytree(QCML, bare)
    (bare / "dataset_info.json").unlink()
    assert fmt.count(bare, None) == len(EXPECTED)
    info = fmt.inspect(QCML)
    assert info["num_structures"] == len(EXPECTED)
    assert info["features (features.json dtypes)"]["pbe0_energy"] == "float64"
    assert "pbe0_forces" in info["first_record"]


def test_crc32c_of_the_check_string():
    assert tfrecord._crc32c_small(b"123456789") == 0xE3069283


def _damaged(tmp_path, edit):
    folder = tmp_path / "damaged"
    shutil.copytree(QCML, folder)
    shard = sorted(folder.glob("*.tfrecord-*"))[0]
    data = bytearray(shard.read_bytes())
    shard.write_bytes(bytes(edit(data)))
    return folder, shard


def test_damaged_length_data_and_truncation_name_shard_and_record(tmp_path):
    def flip(k):
        def edit(data):
            data[k] ^= 0x10
            return data
        return edit

    folder, shard = _damaged(tmp_path, flip(3))  # the first record's length field
    with pytest.raises(ValueError, match=rf"{shard.name}: record 0: damaged or truncated"):
        _all(folder)
    folder, shard = _damaged(tmp_path / "b", flip(40))  # inside the first record
    with pytest.raises(ValueError, match=rf"{shard.name}: record 0: data CRC32C mismatch"):
        _all(folder)
    folder, shard = _damaged(tmp_path / "c", lambda data: data[:-30])
    with pytest.raises(ValueError, match=rf"{shard.name}: record \d+: truncated"):
        _all(folder)


def test_absent_key_lists_the_record_keys(tmp_path):
    with pytest.raises(KeyError, match="no energy under the key 'nope'.*pbe0_energy"):
        _all(options=ReadOptions(keys=LabelKeys(energy="nope")))
    (tmp_path / "notes.txt").write_text("no shards here")
    with pytest.raises(ValueError, match="no TFRecord shards"):
        _all(tmp_path)


def test_not_an_example_is_refused():
    with pytest.raises(ValueError):
        tfrecord.parse_example(b"\x0a\x05\x0a\x03\x0a\x01")


def test_convert_command(tmp_path, capsys):
    assert main(["convert", str(FIXTURES / "qcml"), "--dataset", "qcml", "-o",
                 str(tmp_path / "qcml"), "--quiet"]) == 0
    dataset = open_dataset(tmp_path / "qcml")
    assert len(dataset) == len(EXPECTED)
    assert dataset.fidelity["text"] == "PBE0 (FHI-aims)"
    assert dataset.manifest["property_counts"] == {"charge": len(EXPECTED),
                                                   "spin": len(EXPECTED)}
    neutral = sum(e["charge"] == 0 for e in EXPECTED)
    assert main(["convert", str(QCML), "--dataset", "qcml0", "--where", "charge=0", "-o",
                 str(tmp_path / "neutral"), "--quiet"]) == 0
    assert len(open_dataset(tmp_path / "neutral")) == neutral

"""OC20/OC22 readers (issue #16) on files made the way FAIR Chem makes them.

LMDBs are written as ocp's scripts/preprocess_ef.py writes them: a real
torch_geometric ``Data`` per frame, ``pickle.dumps(data, protocol=-1)`` under the
ASCII index, a pickled ``length`` key, ``lmdb.open(..., subdir=False)``. The extxyz
files carry OC20's header (``Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:
forces:R:3 energy=... free_energy=...``) and ``system_id,frame_number,
reference_energy`` sidecars (FAIR Chem DATASET.md). Expected values are taken from
the raw tensors / raw text, independently of the reader.
"""

from __future__ import annotations

import lzma
import os
import pickle
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
lmdb = pytest.importorskip("lmdb")
pyg_data = pytest.importorskip("torch_geometric.data")

from pygfm.data.formats import ReadOptions, detect, get_format  # noqa: E402
from pygfm.data.formats.oc20 import loads_restricted  # noqa: E402

RNG = np.random.default_rng(20)


def _frame(natoms: int):
    """Fields of one OC20-like adslab (float32 as AtomsToGraphs stores them)."""
    cell = np.diag([8.0, 8.5, 25.0]) + np.array([[0, 0, 0], [1.2, 0, 0], [0, 0, 0]])
    frac = RNG.uniform(0.05, 0.95, size=(natoms, 3)) * [1, 1, 0.5]
    # spread atoms on a grid so that no two overlap
    frac[:, 0] = (np.arange(natoms) % 4) / 4 + 0.05
    frac[:, 1] = (np.arange(natoms) // 4 % 4) / 4 + 0.05
    frac[:, 2] = (np.arange(natoms) // 16) * 0.1 + 0.1
    return dict(pos=torch.tensor(frac @ cell, dtype=torch.float32),
                cell=torch.tensor(cell, dtype=torch.float32).view(1, 3, 3),
                atomic_numbers=torch.tensor(RNG.choice([1, 6, 8, 29, 78], natoms),
                                            dtype=torch.float32),
                natoms=natoms,
                fixed=torch.tensor(RNG.integers(0, 2, natoms), dtype=torch.float32),
                tags=torch.LongTensor(RNG.integers(0, 3, natoms)))


def _write_lmdb(path: Path, datas, length_key: bool = True):
    db = lmdb.open(str(path), map_size=1 << 26, subdir=False, meminit=False, map_async=True)
    for idx, data in enumerate(datas):
        txn = db.begin(write=True)
        txn.put(f"{idx}".encode("ascii"), pickle.dumps(data, protocol=-1))
        txn.commit()
    if length_key:
        txn = db.begin(write=True)
        txn.put("length".encode("ascii"), pickle.dumps(len(datas), protocol=-1))
        txn.commit()
    db.sync()
    db.close()


def _s2ef(n: int, sid0: int = 0):
    datas = []
    for k in range(n):
        fields = _frame(5 + k % 4)
        natoms = fields["natoms"]
        data = pyg_data.Data(**fields, y=float(RNG.normal(-1.0, 0.5)),
                             force=torch.tensor(RNG.normal(size=(natoms, 3)),
                                                dtype=torch.float32),
                             sid=sid0 + k, fid=k)
        datas.append(data)
    return datas


def _raw(path: Path, key: str):
    """The entry as the real torch_geometric unpickles it (the independent side)."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        data = pickle.loads(txn.get(key.encode("ascii")))
    env.close()
    return data


def test_s2ef_lmdb_matches_raw_tensors(tmp_path):
    path = tmp_path / "data.0000.lmdb"
    _write_lmdb(path, _s2ef(7))
    fmt = get_format("oc20-lmdb")
    assert detect(path) is fmt and fmt.count(path, ReadOptions()) == 7
    assert fmt.levels(path) == []
    got = list(fmt.read(path, ReadOptions(dataset="oc20-s2ef-ads"), 0, 1))
    assert [k for k, _ in got] == list(range(7))
    for k, sample in got:
        raw = _raw(path, str(k))
        # y is OC20's adsorption energy (total minus references), read as stored
        assert sample.energy == pytest.approx(float(raw.y), abs=0)
        np.testing.assert_array_equal(sample.forces, raw.force.double().numpy())
        np.testing.assert_array_equal(sample.positions, raw.pos.double().numpy())
        np.testing.assert_array_equal(sample.cell, raw.cell.double().numpy()[0])
        np.testing.assert_array_equal(sample.numbers, raw.atomic_numbers.long().numpy())
        assert sample.pbc.all() and sample.index == k and sample.dataset == "oc20-s2ef-ads"


def test_newer_field_names_and_sniff(tmp_path):
    """fairchem's later writers name the labels energy / forces; an LMDB that holds
    no PyG pickles (an ASE-LMDB stores zlib JSON) is not claimed."""
    fields = _frame(5)
    data = pyg_data.Data(**fields, energy=torch.tensor([-3.25]), forces=torch.ones(5, 3))
    path = tmp_path / "new.lmdb"
    _write_lmdb(path, [data])
    [(_, sample)] = get_format("oc20-lmdb").read(path, ReadOptions(), 0, 1)
    assert sample.energy == -3.25 and (sample.forces == 1).all()
    other = tmp_path / "other.lmdb"
    db = lmdb.open(str(other), map_size=1 << 24, subdir=False)
    with db.begin(write=True) as txn:
        txn.put(b"0", zlib.compress(b'{"numbers": [1]}'))
    db.close()
    assert not get_format("oc20-lmdb").sniff(other)
    plain = tmp_path / "plain.lmdb"
    plain.write_text("not an lmdb at all, only text " * 4)
    assert not get_format("oc20-lmdb").sniff(plain)


def test_folder_of_lmdbs_and_balanced_ranks(tmp_path):
    _write_lmdb(tmp_path / "data.0000.lmdb", _s2ef(5))
    _write_lmdb(tmp_path / "data.0001.lmdb", _s2ef(4, sid0=100), length_key=False)
    fmt = get_format("oc20-lmdb")
    assert fmt.count(tmp_path, ReadOptions()) == 9
    whole = {k: s for k, s in fmt.read(tmp_path, ReadOptions(), 0, 1)}
    assert sorted(whole) == list(range(9))
    for size in (2, 3):
        seen = []
        for rank in range(size):
            part = [k for k, _ in fmt.read(tmp_path, ReadOptions(), rank, size)]
            assert part == sorted(part) and all(k % size == rank for k in part)
            seen += part
        assert sorted(seen) == list(range(9))
    # position 5 is key "0" of the second file
    raw = _raw(tmp_path / "data.0001.lmdb", "0")
    assert whole[5].energy == pytest.approx(float(raw.y), abs=0)


def test_is2re_levels(tmp_path):
    datas = []
    for k in range(3):
        fields = _frame(6)
        relaxed = fields["pos"] + 0.05
        datas.append(pyg_data.Data(**fields, pos_relaxed=relaxed, y_init=2.0 + k,
                                   y_relaxed=-0.5 - k, sid=k))
    path = tmp_path / "is2re.lmdb"
    _write_lmdb(path, datas)
    fmt = get_format("oc20-lmdb")
    assert fmt.levels(path) == ["relaxed", "initial"]
    relaxed = dict(fmt.read(path, ReadOptions(), 0, 1))  # default: relaxed
    initial = dict(fmt.read(path, ReadOptions(level="initial"), 0, 1))
    for k in range(3):
        raw = _raw(path, str(k))
        assert relaxed[k].energy == pytest.approx(float(raw.y_relaxed), abs=0)
        np.testing.assert_array_equal(relaxed[k].positions, raw.pos_relaxed.double().numpy())
        assert initial[k].energy == pytest.approx(float(raw.y_init), abs=0)
        np.testing.assert_array_equal(initial[k].positions, raw.pos.double().numpy())
        assert relaxed[k].forces is None and initial[k].forces is None
    with pytest.raises(ValueError, match="no level 'total'"):
        list(fmt.read(path, ReadOptions(level="total"), 0, 1))


def test_is2re_without_relaxed_positions_defaults_to_initial(tmp_path):
    # OC20-Dense IS2RE LMDBs hold no pos_relaxed: y_relaxed is never put on pos
    path = tmp_path / "dense.lmdb"
    _write_lmdb(path, [pyg_data.Data(**_frame(5), y_init=1.0, y_relaxed=-1.0)])
    fmt = get_format("oc20-lmdb")
    assert fmt.levels(path) == ["initial"]
    [(_, sample)] = fmt.read(path, ReadOptions(), 0, 1)
    assert sample.energy == 1.0
    with pytest.raises(ValueError, match="no level 'relaxed'"):
        list(fmt.read(path, ReadOptions(level="relaxed"), 0, 1))


def test_legacy_pyg1_pickle(tmp_path, monkeypatch):
    """PyG 1.x pickled Data with its fields in __dict__ (no _store)."""
    import torch_geometric.data.data as pyg_module

    class LegacyData:  # what PyG 1.x Data pickled as: a plain __dict__
        pass
    LegacyData.__module__, LegacyData.__qualname__ = "torch_geometric.data.data", "Data"
    fields = _frame(5)
    legacy = LegacyData()
    legacy.__dict__.update(fields, y=torch.tensor([-0.75]), force=torch.zeros(5, 3),
                           edge_index=None, __num_nodes__=None)
    monkeypatch.setattr(pyg_module, "Data", LegacyData)
    blob = pickle.dumps(legacy, protocol=-1)
    monkeypatch.undo()
    assert b"_store" not in blob
    path = tmp_path / "legacy.lmdb"
    db = lmdb.open(str(path), map_size=1 << 24, subdir=False)
    with db.begin(write=True) as txn:
        txn.put(b"0", blob)
        txn.put(b"length", pickle.dumps(1))
    db.close()
    [(_, sample)] = get_format("oc20-lmdb").read(path, ReadOptions(), 0, 1)
    assert sample.energy == -0.75
    np.testing.assert_array_equal(sample.positions, fields["pos"].double().numpy())


def test_nan_labels_are_masked(tmp_path):
    data = _s2ef(2)
    data[0].y = float("nan")
    data[1].force[0, 0] = float("nan")
    path = tmp_path / "nan.lmdb"
    _write_lmdb(path, data)
    got = dict(get_format("oc20-lmdb").read(path, ReadOptions(), 0, 1))
    assert got[0].energy is None and got[0].forces is not None
    assert got[1].forces is None and got[1].energy is not None


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    with pytest.raises(ValueError, match="refusing to unpickle posix.system|"
                                         "refusing to unpickle os.system"):
        loads_restricted(pickle.dumps(_Evil()), "evil")
    path = tmp_path / "evil.lmdb"
    db = lmdb.open(str(path), map_size=1 << 24, subdir=False)
    with db.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps(_s2ef(1)[0], protocol=-1))
        txn.put(b"1", pickle.dumps(_Evil(), protocol=-1))
    db.close()
    reader = get_format("oc20-lmdb").read(path, ReadOptions(), 0, 1)
    next(reader)
    with pytest.raises(ValueError, match=r"evil.lmdb, key '1'.*system"):
        next(reader)


def test_bad_entries_name_file_and_keys(tmp_path):
    path = tmp_path / "bad.lmdb"
    db = lmdb.open(str(path), map_size=1 << 24, subdir=False)
    with db.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps(_s2ef(1)[0], protocol=-1))
        txn.put(b"1", pickle.dumps({"pos": [1, 2, 3]}))  # a foreign pickle
        txn.put(b"2", pickle.dumps(_s2ef(1)[0], protocol=-1)[:40])  # truncated
        txn.put(b"length", pickle.dumps(4))  # one more than there is
    db.close()
    reader = get_format("oc20-lmdb")
    with pytest.raises(ValueError, match=r"bad.lmdb, key '1': holds a dict"):
        list(reader.read(path, ReadOptions(), 1, 4))
    with pytest.raises(ValueError, match=r"bad.lmdb, key '2': not a readable pickle"):
        list(reader.read(path, ReadOptions(), 2, 4))
    with pytest.raises(KeyError, match=r"no entry under the key '3'.*keys there include"):
        list(reader.read(path, ReadOptions(), 3, 4))
    # an entry without positions names the keys it has
    path2 = tmp_path / "nopos.lmdb"
    data = _s2ef(1)[0]
    del data.pos
    _write_lmdb(path2, [data])
    with pytest.raises(KeyError, match=r"no positions.*'atomic_numbers'"):
        list(reader.read(path2, ReadOptions(), 0, 1))
    # an explicit energy key that is absent
    path3 = tmp_path / "good.lmdb"
    _write_lmdb(path3, _s2ef(1))
    with pytest.raises(KeyError, match=r"looked for energy_relaxed.*'force'"):
        list(reader.read(path3, ReadOptions(keys=get_keys(energy="energy_relaxed")), 0, 1))
    # not an LMDB at all
    junk = tmp_path / "junk.lmdb"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="junk.lmdb"):
        list(reader.read(junk, ReadOptions(), 0, 1))


def get_keys(**kwargs):
    from pygfm.data.formats import LabelKeys
    return LabelKeys(**kwargs)


def test_read_needs_no_torch_geometric(tmp_path):
    path = tmp_path / "data.lmdb"
    _write_lmdb(path, _s2ef(2))
    code = ("import sys; sys.modules['torch_geometric'] = None\n"
            "from pygfm.data.formats import get_format, ReadOptions\n"
            f"got = list(get_format('oc20-lmdb').read({str(path)!r}, ReadOptions(), 0, 1))\n"
            "assert len(got) == 2 and 'torch_geometric.data' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
                         cwd=tmp_path)  # not the source tree, whose pygfm has no _C
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ------------------------------------------------------------------ extxyz + txt

def _write_extxyz(folder: Path, stem: str, nframes: int, compress: bool):
    """Frames written by ase.io (extxyz) as OC20 ships them, plus the txt sidecar."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    frames, rows = [], []
    for k in range(nframes):
        fields = _frame(6)
        atoms = Atoms(numbers=fields["atomic_numbers"].long().numpy(),
                      positions=fields["pos"].double().numpy(),
                      cell=fields["cell"].double().numpy()[0], pbc=True,
                      tags=fields["tags"].numpy())
        atoms.set_constraint(FixAtoms(indices=[0, 1]))
        energy = float(RNG.normal(-180.0, 5.0))
        atoms.calc = SinglePointCalculator(atoms, energy=energy, free_energy=energy - 0.0015,
                                           forces=RNG.normal(size=(6, 3)))
        frames.append(atoms)
        rows.append(f"random{1000 + k},frame{k},{RNG.normal(-170.0, 5.0):.8f}\n")
    xyz = folder / f"{stem}.extxyz"
    ase.io.write(xyz, frames, format="extxyz")
    text = xyz.read_text()
    if compress:
        with lzma.open(folder / f"{stem}.extxyz.xz", "wt") as handle:
            handle.write(text)
        xyz.unlink()
    (folder / f"{stem}.txt").write_text("".join(rows))
    return text, rows


def _raw_xyz(text: str):
    """(energy, forces) per frame parsed straight from the extxyz text."""
    lines, out, at = text.splitlines(), [], 0
    while at < len(lines):
        n = int(lines[at])
        comment = lines[at + 1]
        assert "move_mask" in comment and "tags" in comment
        props = re.search(r"Properties=(\S+)", comment).group(1).split(":")
        columns, start = {}, 0
        for name, _kind, width in zip(props[::3], props[1::3], props[2::3]):
            columns[name] = (start, start + int(width))
            start += int(width)
        energy = float(re.search(r"(?<![_a-z])energy=(\S+)", comment).group(1))
        body = [line.split() for line in lines[at + 2: at + 2 + n]]
        lo, hi = columns["forces"]
        out.append((energy, np.array([[float(v) for v in row[lo:hi]] for row in body])))
        at += n + 2
    return out


def test_extxyz_levels_match_raw_text(tmp_path):
    text0, rows0 = _write_extxyz(tmp_path, "0", 4, compress=True)
    text1, rows1 = _write_extxyz(tmp_path, "1", 3, compress=False)
    raw = _raw_xyz(text0) + _raw_xyz(text1)
    refs = [float(row.split(",")[2]) for row in rows0 + rows1]
    fmt = get_format("oc20-extxyz")
    assert detect(tmp_path) is fmt and fmt.count(tmp_path, ReadOptions()) == 7
    total = dict(fmt.read(tmp_path, ReadOptions(), 0, 1))
    ads = dict(fmt.read(tmp_path, ReadOptions(level="adsorption"), 0, 1))
    assert sorted(total) == list(range(7))
    for k, (energy, forces) in enumerate(raw):
        assert total[k].energy == pytest.approx(energy, abs=1e-10)  # DFT total, eV
        # the LMDB's y: total minus the sidecar's reference energy
        assert ads[k].energy == pytest.approx(energy - refs[k], abs=1e-10)
        np.testing.assert_allclose(total[k].forces, forces, atol=1e-12)
    free = dict(fmt.read(tmp_path, ReadOptions(keys=get_keys(energy="free_energy")), 0, 1))
    assert free[0].energy == pytest.approx(raw[0][0] - 0.0015, abs=1e-8)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "0.extxyz").write_text("1\nProperties=species:S:1:pos:R:3\nH 0 0 0\n")
    (plain / "0.txt").write_text("random1,frame0,-1.0\n")
    assert not fmt.sniff(plain)  # an extxyz without OC20's move_mask/tags columns
    seen = []
    for rank in range(3):
        part = [k for k, _ in fmt.read(tmp_path, ReadOptions(), rank, 3)]
        assert all(k % 3 == rank for k in part) and part == sorted(part)
        seen += part
    assert sorted(seen) == list(range(7))


def test_extxyz_truncated_and_bad_sidecar(tmp_path):
    text, _ = _write_extxyz(tmp_path, "0", 2, compress=False)
    (tmp_path / "0.extxyz").write_text(text[: len(text) - 200])
    fmt = get_format("oc20-extxyz")
    with pytest.raises(ValueError, match=r"0.extxyz, frame 1: the file ends inside"):
        list(fmt.read(tmp_path, ReadOptions(), 0, 1))
    (tmp_path / "0.extxyz").write_text(text)
    (tmp_path / "0.txt").write_text("random1,frame0\n")
    with pytest.raises(ValueError, match=r"0.txt, line 1: expected system_id"):
        list(fmt.read(tmp_path, ReadOptions(level="adsorption"), 0, 1))
    with pytest.raises(KeyError, match=r"no energy under the key 'e_dft'.*free_energy"):
        list(fmt.read(tmp_path, ReadOptions(keys=get_keys(energy="e_dft")), 0, 1))

"""ASE-LMDB and ASE database readers (pygfm/data/formats/asedb.py), on files made by
the reference writers: ase-db-backends' LMDBDatabase (through ``ase.db.connect`` of a
``.aselmdb`` name) and ase.db's SQLite and JSON backends. Expected values are
computed here from the raw file (lmdb + zlib + ASE-JSON, or ase.db) times the
constants, never from what pygfm wrote."""

from __future__ import annotations

import pickle
import tracemalloc
import zlib

import numpy as np
import pytest

ase_db = pytest.importorskip("ase.db")
lmdb = pytest.importorskip("lmdb")
pytest.importorskip("ase_db_backends")

from ase import Atoms  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.io.jsonio import decode  # noqa: E402

from pygfm.data.formats import LabelKeys, ReadOptions, Units, detect, get_format  # noqa: E402
from pygfm.data.formats import asedb  # noqa: E402

HARTREE = 27.211386245988          # eV
BOHR = 0.529177210903              # Å
KCAL_MOL = 4.184 / 96.48533212     # eV


def _crystal(rng, n=4):
    atoms = Atoms(numbers=rng.integers(1, 30, n), positions=rng.uniform(0, 4, (n, 3)),
                  cell=np.diag([4.0, 4.5, 5.0]) + rng.uniform(-0.1, 0.1, (3, 3)), pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal(-10, 2)),
                                       forces=rng.normal(size=(n, 3)),
                                       stress=rng.normal(scale=0.01, size=6))
    return atoms


def _molecule(rng, n=5):
    atoms = Atoms(numbers=rng.integers(1, 10, n), positions=rng.uniform(0, 3, (n, 3)))
    atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal(-100, 5)),
                                       forces=rng.normal(size=(n, 3)))
    return atoms


def _raw_lmdb_row(path, row_id):
    """The row dict as stored, decoded here independently of pygfm."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return decode(zlib.decompress(txn.get(str(row_id).encode())).decode())
    finally:
        env.close()


def _voigt(s):
    xx, yy, zz, yz, xz, xy = s
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


@pytest.fixture
def omat_omol(tmp_path):
    """An OMat24-like file (calculator energy/forces/stress) with OMol25-like rows
    (data charge/spin), one deleted row, written by ase-db-backends."""
    rng = np.random.default_rng(0)
    path = tmp_path / "data.0000.aselmdb"
    db = ase_db.connect(path)
    for i in range(6):
        db.write(_crystal(rng), data={"sid": f"omat-{i}"})
    for i in range(4):
        db.write(_molecule(rng), data={"charge": i - 1, "spin": 1 + i % 3, "source": "omol"})
    db.metadata = {"dataset": "toy"}
    db.delete([3])
    del db
    return path


def test_aselmdb_values_match_the_raw_file(omat_omol):
    fmt = get_format("aselmdb")
    assert detect(omat_omol) is fmt
    samples = list(fmt.read(omat_omol, ReadOptions(dataset="toy"), 0, 1))
    assert [k for k, _ in samples] == list(range(9))
    ids = [1, 2, 4, 5, 6, 7, 8, 9, 10]  # id 3 was deleted; positions stay contiguous
    for (position, sample), row_id in zip(samples, ids):
        raw = _raw_lmdb_row(omat_omol, row_id)
        np.testing.assert_array_equal(sample.numbers, raw["numbers"])
        np.testing.assert_allclose(sample.positions, raw["positions"], rtol=0, atol=0)
        np.testing.assert_allclose(sample.cell, np.asarray(raw["cell"]), rtol=0, atol=0)
        assert sample.energy == raw["energy"]
        np.testing.assert_allclose(sample.forces, raw["forces"], rtol=0, atol=0)
        if "stress" in raw:
            np.testing.assert_allclose(sample.stress, _voigt(raw["stress"]), rtol=0, atol=0)
            assert sample.pbc.all() and sample.charge is None and sample.spin is None
        else:
            assert sample.stress is None and not sample.pbc.any()
            assert sample.charge == raw["data"]["charge"] and sample.spin == raw["data"]["spin"]
        assert sample.index == position and sample.dataset == "toy"
    assert fmt.count(omat_omol, ReadOptions()) == 9
    info = fmt.inspect(omat_omol)
    assert info["num_structures"] == 9 and info["first_row"]["calculator"] == [
        "energy", "forces", "stress"] and info["metadata"] == {"dataset": "toy"}


def test_aselmdb_ranks_share_rows_and_skip_the_others(omat_omol, monkeypatch):
    built = []
    row = asedb._LmdbFile.row
    monkeypatch.setattr(asedb._LmdbFile, "row", lambda self, i: built.append(i) or row(self, i))
    fmt = get_format("aselmdb")
    seen = []
    for rank in range(4):
        built.clear()
        positions = [k for k, _ in fmt.read(omat_omol, ReadOptions(), rank, 4)]
        assert positions == sorted(positions) and all(k % 4 == rank for k in positions)
        assert len(built) == len(positions)  # the other ranks' rows are never decoded
        seen += positions
    assert sorted(seen) == list(range(9))
    with pytest.raises(ValueError, match="rank 4 of 4"):
        list(fmt.read(omat_omol, ReadOptions(), 4, 4))


def test_aselmdb_directory_runs_on_from_file_to_file(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "rattled-1000"
    folder.mkdir()
    energies = []
    for name, n in (("data.0001.aselmdb", 2), ("data.0000.aselmdb", 3)):
        db = ase_db.connect(folder / name)
        for _ in range(n):
            db.write(_crystal(rng))
        del db
    for name, n in (("data.0000.aselmdb", 3), ("data.0001.aselmdb", 2)):
        energies += [_raw_lmdb_row(folder / name, i)["energy"] for i in range(1, n + 1)]
    assert detect(folder).name == "aselmdb"
    got = list(get_format("aselmdb").read(folder, ReadOptions(), 0, 1))
    assert [k for k, _ in got] == list(range(5))
    assert [s.energy for _, s in got] == energies
    assert [k for k, _ in get_format("aselmdb").read(folder, ReadOptions(), 1, 2)] == [1, 3]


def test_aselmdb_streams_without_holding_rows(tmp_path):
    """~2k rows: memory while iterating does not grow with the rows read (a reader
    holding a list of rows or ids would)."""
    rng = np.random.default_rng(2)
    path = tmp_path / "big.aselmdb"
    with ase_db.connect(path) as db:
        for _ in range(2000):
            db.write(_crystal(rng, n=20), data={"charge": 0, "spin": 1})
    fmt = get_format("aselmdb")

    def peak(limit):
        tracemalloc.start()
        try:
            for position, sample in fmt.read(path, ReadOptions(), 0, 1):
                if position + 1 >= limit:
                    break
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(10)  # imports and caches out of the way
    small, large = peak(200), peak(2000)
    # each Sample is ~1.5 kB; holding 1800 more of them would add ~3 MB
    assert large - small < 256 * 1024, (small, large)


def test_aselmdb_memory_maps_are_released(tmp_path, monkeypatch):
    """Pages of an LMDB memory map stay resident until it is closed (a 1M-row folder
    peaked at 3.3 GB): each finished file's map is released, and a long file's map
    is renewed every _REMAP_ROWS rows, without changing what is read."""
    from pygfm.data.formats import asedb

    rng = np.random.default_rng(4)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("a.aselmdb", "b.aselmdb"):
        with ase_db.connect(folder / name) as db:
            for _ in range(25):
                db.write(_crystal(rng))
    before = [s.energy for _, s in get_format("aselmdb").read(folder, ReadOptions(), 0, 1)]
    calls = []
    real = asedb._LmdbFile.release
    monkeypatch.setattr(asedb._LmdbFile, "release",
                        lambda self: calls.append(self.path.name) or real(self))
    monkeypatch.setattr(asedb, "_REMAP_ROWS", 10)
    after = [s.energy for _, s in get_format("aselmdb").read(folder, ReadOptions(), 0, 1)]
    assert after == before and len(after) == 50
    # renewed at positions 10, 20 (file a), released when b starts, renewed at 30, 40
    assert calls == ["a.aselmdb"] * 3 + ["b.aselmdb"] * 2


def test_explicit_keys_partial_labels_nan_and_gradients(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "keys.aselmdb"
    db = ase_db.connect(path)
    raw = []
    for i in range(5):
        atoms = Atoms("H2O", positions=rng.uniform(0, 2, (3, 3)))
        data = {"dft_grad": rng.normal(size=(3, 3))}
        if i != 2:
            data["wb97_energy"] = float(rng.normal())  # partial label: row 3 lacks it
        if i == 4:
            data["wb97_energy"] = float("nan")
            data["dft_grad"][0, 0] = np.nan
        db.write(atoms, data=data)
        raw.append(data)
    del db
    options = ReadOptions(keys=LabelKeys(energy="wb97_energy", forces="dft_grad"))
    got = dict(get_format("aselmdb").read(path, options, 0, 1))
    for k in range(4):
        assert got[k].energy == (None if k == 2 else raw[k]["wb97_energy"])
        np.testing.assert_array_equal(got[k].forces, -raw[k]["dft_grad"])  # forces = -gradient
    assert got[4].energy is None and got[4].forces is None  # NaN is masked, never stored
    with pytest.raises(KeyError, match=r"absent_key.*wb97_energy"):
        list(get_format("aselmdb").read(path, ReadOptions(keys=LabelKeys(energy="absent_key")),
                                        0, 1))


def test_sqlite_schnetpack_units_from_metadata(tmp_path):
    """schnetpack's ASEAtomsData layout: properties in row.data, units in
    metadata['_property_unit_dict'], positions in metadata['_distance_unit']."""
    rng = np.random.default_rng(4)
    path = tmp_path / "md17.db"
    with ase_db.connect(path) as db:
        db.metadata = {"_distance_unit": "Ang",
                       "_property_unit_dict": {"energy": "kcal/mol", "forces": "kcal/mol/Ang"},
                       "atomrefs": {}}
        for _ in range(7):
            n = 6
            db.write(Atoms(numbers=rng.integers(1, 9, n), positions=rng.uniform(0, 3, (n, 3))),
                     data={"energy": np.array([rng.normal(-1e5, 10)]),
                           "forces": rng.normal(scale=20, size=(n, 3))})
    fmt = get_format("asedb")
    assert detect(path) is fmt
    got = list(fmt.read(path, ReadOptions(), 0, 1))
    reference = ase_db.connect(path)
    for (position, sample), row in zip(got, reference.select()):
        assert sample.energy == pytest.approx(row.data["energy"][0] * KCAL_MOL, rel=1e-14)
        np.testing.assert_allclose(sample.forces, row.data["forces"] * KCAL_MOL, rtol=1e-14)
        np.testing.assert_array_equal(sample.positions, row.positions)
    assert [k for k, _ in fmt.read(path, ReadOptions(), 2, 3)] == [2, 5]
    # --units overrides the metadata
    override = list(fmt.read(path, ReadOptions(units=Units(energy="eV")), 0, 1))
    assert override[0][1].energy == reference.get(id=1).data["energy"][0]
    assert fmt.inspect(path)["units"]["properties"]["energy"] == "kcal/mol"


def test_json_nabla2dft_layout_in_hartree_and_bohr(tmp_path):
    """nabla2DFT's energy databases: data['energy'] [1] and data['forces'] in the
    metadata's Hartree and Hartree/Ang; here also positions in Bohr."""
    rng = np.random.default_rng(5)
    path = tmp_path / "nabla.json"
    db = ase_db.connect(path)
    for _ in range(3):
        db.write(Atoms("CH4", positions=rng.uniform(0, 4, (5, 3))),
                 data={"energy": [float(rng.normal(-40, 1))], "forces": rng.normal(size=(5, 3))})
    # ASE's JSON backend stores metadata only once the file exists
    db.metadata = {"_distance_unit": "Bohr",
                   "_property_unit_dict": {"energy": "Hartree", "forces": "Hartree/Bohr"}}
    del db
    fmt = get_format("asedb")
    assert detect(path) is fmt
    got = dict(fmt.read(path, ReadOptions(), 0, 1))
    for position, row in enumerate(ase_db.connect(path).select()):
        assert got[position].energy == pytest.approx(row.data["energy"][0] * HARTREE, rel=1e-14)
        np.testing.assert_allclose(got[position].forces, row.data["forces"] * HARTREE / BOHR,
                                   rtol=1e-14)
        np.testing.assert_allclose(got[position].positions, row.positions * BOHR, rtol=1e-14)


def test_sqlite_calculator_labels_and_kvp_charge(tmp_path):
    rng = np.random.default_rng(6)
    path = tmp_path / "plain.db"
    db = ase_db.connect(path)
    for i in range(4):
        db.write(_crystal(rng), charge_state=i, spin=2)  # kvp
    db.delete([2])
    got = list(get_format("asedb").read(path, ReadOptions(), 0, 1))
    rows = list(ase_db.connect(path).select())
    assert [k for k, _ in got] == [0, 1, 2] and len(rows) == 3
    for (_, sample), row in zip(got, rows):
        assert sample.energy == row.energy and sample.spin == 2.0 and sample.charge is None
        np.testing.assert_array_equal(sample.stress, _voigt(row.stress))


def test_bad_inputs_name_the_file(tmp_path, omat_omol):
    fmt_lmdb, fmt_db = get_format("aselmdb"), get_format("asedb")
    # truncated ASE-LMDB: a message, not a SIGBUS through the memory map
    rng = np.random.default_rng(7)
    big = tmp_path / "big.aselmdb"
    with ase_db.connect(big) as db:
        for _ in range(300):
            db.write(_crystal(rng, n=30))
    cut = tmp_path / "cut.aselmdb"
    cut.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.aselmdb.*truncated"):
        list(fmt_lmdb.read(cut, ReadOptions(), 0, 1))
    # a foreign LMDB (OC20-style pickles): names the keys that exist
    foreign = tmp_path / "oc20.lmdb"
    env = lmdb.open(str(foreign), subdir=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"length", pickle.dumps(1))
        txn.put(b"0", pickle.dumps({"pos": [0.0]}))
    env.close()
    assert not fmt_lmdb.sniff(foreign)
    with pytest.raises(ValueError, match=r"oc20\.lmdb.*nextid.*length"):
        list(fmt_lmdb.read(foreign, ReadOptions(), 0, 1))
    # a row that is not zlib ASE-JSON: names the file and the row id
    env = lmdb.open(str(omat_omol), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"5", b"not zlib")
    env.close()
    with pytest.raises(ValueError, match=r"data\.0000\.aselmdb.*'5'"):
        list(fmt_lmdb.read(omat_omol, ReadOptions(), 0, 1))
    # JSON without structures, SQLite without ASE's tables, truncated SQLite
    empty = tmp_path / "other.json"
    empty.write_text('{"structures": [], "name": "x"}')
    assert not fmt_db.sniff(empty)
    with pytest.raises(ValueError, match=r"other\.json.*not an ASE database"):
        list(fmt_db.read(empty, ReadOptions(), 0, 1))
    rowless = tmp_path / "rowless.json"
    rowless.write_text('{"metadata": {}, "name": "x"}')
    with pytest.raises(ValueError, match=r"rowless\.json.*keys: \['metadata', 'name'\]"):
        list(fmt_db.read(rowless, ReadOptions(), 0, 1))
    import sqlite3
    foreign_db = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign_db)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    assert not fmt_db.sniff(foreign_db)
    with pytest.raises(ValueError, match=r"foreign\.db"):
        list(fmt_db.read(foreign_db, ReadOptions(), 0, 1))
    good = tmp_path / "good.db"
    with ase_db.connect(good) as db:
        for _ in range(200):
            db.write(_crystal(rng, n=30))
    broken = tmp_path / "broken.db"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(ValueError, match=r"broken\.db"):
        list(fmt_db.read(broken, ReadOptions(), 0, 1))
    with pytest.raises(ValueError, match=r"missing\.aselmdb"):
        list(fmt_lmdb.read(tmp_path / "missing.aselmdb", ReadOptions(), 0, 1))
    # an ASE-LMDB is not an ase.db of the 'asedb' format, and vice versa
    assert not fmt_db.sniff(omat_omol) and not fmt_lmdb.sniff(good)


def test_postgresql_urls_are_recognised_not_read():
    # reading one needs a PostgreSQL server, which these tests do not have
    assert get_format("asedb").sniff("postgresql://user@localhost:5432/ase")
    assert asedb._name(__import__("pathlib").Path("postgresql://u@h/db")) == "postgresql://u@h/db"


def test_where_splits_omol_rows_by_charge(omat_omol, tmp_path):
    """OMol25's neutral and charged parts from the same ASE-LMDB file: charges -1,
    0, 1, 2 in the rows' data, the crystals without a charge (in neither part)."""
    from pygfm.cli.data import main
    from pygfm.data import open_dataset

    for where, charges in (("charge=0", [0.0]), ("charge!=0", [-1.0, 1.0, 2.0])):
        out = tmp_path / where.replace("!", "n").replace("=", "-")
        assert main(["convert", str(omat_omol), "--dataset", "omol", "--fidelity", "x",
                     "--where", where, "-o", str(out), "--quiet"]) == 0
        assert [s.charge for s in open_dataset(out)] == charges

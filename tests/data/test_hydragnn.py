"""pygfm.data.hydragnn: reading HydraGNN's ADIOS2 dataset layout.

The files are written here by :func:`write_hydragnn`, which mimics
``AdiosWriter.save()`` of ORNL/HydraGNN (hydragnn/utils/datasets/adiosdataset.py)
on one rank through the same low-level adios2 calls, from samples shaped like
those of HydraGNN's foundation-model preprocessing scripts (see
docs/hydragnn-format.md).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

adios2 = pytest.importorskip("adios2")
ase = pytest.importorskip("ase")

from ase import Atoms
from ase.build import bulk, molecule
from ase.stress import full_3x3_to_voigt_6_stress

from pygfm.data import hydragnn
from pygfm.data.hydragnn import (
    hydragnn_splits,
    is_hydragnn_file,
    read_hydragnn,
)

ad2 = adios2.bindings


# --------------------------------------------------------------------------
# writer mimicking HydraGNN's AdiosWriter (single rank)


def write_hydragnn(path, splits, *, dataset_name=None, globals_=None,
                   override=None, attr_override=None, omit=()):
    """Write ``splits`` ({label: [ {key: array} per sample ]}) like AdiosWriter.

    ``override`` replaces the array of a variable (e.g.
    ``"trainset/pos/variable_offset"``), ``attr_override`` the value of an
    attribute, and names in ``omit`` (variables or attributes) are skipped;
    these make the broken files of the error tests.
    """
    override = override or {}
    attr_override = attr_override or {}
    path = os.fspath(path)
    adios = ad2.ADIOS()
    io = adios.DeclareIO(path)
    writer = io.Open(path, ad2.Mode.Write)

    def put(name, array):
        if name in omit:
            return
        array = np.ascontiguousarray(override.get(name, array))
        var = io.DefineVariable(name, array, list(array.shape), [0] * array.ndim,
                                list(array.shape), ad2.ConstantDims)
        writer.Put(var, array, ad2.Mode.Sync)

    attributes = {}
    total = 0
    for label, samples in splits.items():
        if not samples:
            continue  # AdiosWriter writes nothing for an empty label
        attributes[f"{label}/ndata"] = np.array(len(samples))
        total += len(samples)
        keys = list(samples[0])  # Data.keys(): insertion order
        attributes[f"{label}/keys"] = keys
        for key in sorted(keys):
            arrays = [np.asarray(sample[key]) for sample in samples]
            shapes = np.array([a.shape for a in arrays])
            varying = np.flatnonzero(shapes.min(axis=0) != shapes.max(axis=0))
            assert len(varying) < 2
            vdim = int(varying[0]) if len(varying) else 0
            put(f"{label}/{key}", np.concatenate(arrays, axis=vdim))
            attributes[f"{label}/{key}/variable_dim"] = np.array(vdim)
            counts = np.array([a.shape[vdim] for a in arrays])
            offsets = np.zeros_like(counts)
            offsets[1:] = np.cumsum(counts)[:-1]
            put(f"{label}/{key}/variable_count", counts)
            put(f"{label}/{key}/variable_offset", offsets)
    attributes["total_ndata"] = np.array(total)
    if dataset_name is not None:
        attributes["dataset_name"] = dataset_name
    attributes.update(globals_ or {})
    attributes.update(attr_override)
    for name, value in attributes.items():
        if name not in omit:
            io.DefineAttribute(name, value)
    writer.Close()
    return path


def hydragnn_sample(atoms, *, energy=None, forces=None, stress=None, charge_spin=None,
                    dtype=np.float64, cutoff=2.5):
    """A sample with the keys of HydraGNN's foundation-model scripts (omat24,
    mptrj, ani1x, omol25 ``Data`` objects, plus stress and graph_attr)."""
    pos = atoms.get_positions().astype(dtype)
    natoms = len(atoms)
    z = atoms.get_atomic_numbers().astype(dtype)[:, None]
    if atoms.pbc.any():
        cell, pbc = atoms.cell.array.astype(dtype), atoms.pbc.astype(np.int32)
    else:  # HydraGNN's placeholder for a structure without a cell
        cell, pbc = np.eye(3, dtype=dtype), np.zeros(3, dtype=np.int32)
    distance = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    src, dst = np.nonzero((distance < cutoff) & ~np.eye(natoms, dtype=bool))
    sample = {"natoms": np.array([natoms], dtype=np.int32), "pos": pos, "cell": cell,
              "pbc": pbc, "atomic_numbers": z,
              "chemical_composition": np.bincount(atoms.numbers, minlength=119)[1:, None]
              .astype(dtype)}
    if forces is not None:
        sample["x"] = np.concatenate([z, pos, forces.astype(dtype)], axis=1)
    else:
        sample["x"] = np.concatenate([z, pos], axis=1)
    if energy is not None:
        sample["energy"] = np.array([[energy]], dtype=dtype)
        sample["energy_per_atom"] = np.array([[energy / natoms]], dtype=dtype)
        sample["y"] = sample["energy"]
    if forces is not None:
        sample["forces"] = forces.astype(dtype)
    if stress is not None:
        sample["stress"] = stress.astype(dtype)
    if charge_spin is not None:
        sample["graph_attr"] = np.array(charge_spin, dtype=np.float32)
    sample["edge_index"] = np.stack([src, dst]).astype(np.int64)
    sample["edge_attr"] = distance[src, dst][:, None].astype(dtype)
    return sample


def structures(seed=0):
    """Molecules (no cell) and periodic crystals, 3 to 16 atoms."""
    rng = np.random.default_rng(seed)
    out = []
    for name in ("H2O", "CH4", "NH3", "C6H6"):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    for atoms in (bulk("Cu", "fcc", a=3.6, cubic=True), bulk("NaCl", "rocksalt", a=5.64),
                  bulk("Si", "diamond", a=5.43, cubic=True),
                  bulk("Mg", "hcp", a=3.2, c=5.2).repeat((1, 1, 2))):
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
        out.append(atoms)
    labels = []
    for atoms in out:
        labels.append({"energy": float(rng.normal(-5.0, 3.0) * len(atoms)),
                       "forces": rng.normal(size=(len(atoms), 3))})
    return out, labels


def make_dataset(tmp_path, name="mixed.bp", **kw):
    """trainset: molecules and crystals; valset: crystals; testset: molecules."""
    atoms, labels = structures()
    order = {"trainset": [0, 4, 1, 5, 2], "valset": [6, 7], "testset": [3]}
    splits, expected = {}, {}
    for label, idx in order.items():
        splits[label] = [hydragnn_sample(atoms[i], charge_spin=(0, 1), **labels[i])
                         for i in idx]
        expected[label] = [(atoms[i], labels[i]) for i in idx]
    path = write_hydragnn(tmp_path / name, splits, dataset_name="omat24",
                          globals_={"pna_deg": np.array([0, 3, 5, 2])}, **kw)
    return path, expected


def assert_same(read, atoms, labels, *, dtype=np.float64):
    """The read structure equals the original, to the stored precision."""
    cast = (lambda a: np.asarray(a, dtype=dtype).astype(np.float64))
    np.testing.assert_array_equal(read.numbers, atoms.numbers)
    assert read.positions.dtype == np.float64
    np.testing.assert_array_equal(read.positions, cast(atoms.positions))
    np.testing.assert_array_equal(read.pbc, atoms.pbc)
    if atoms.pbc.any():
        np.testing.assert_array_equal(read.cell.array, cast(atoms.cell.array))
    else:
        np.testing.assert_array_equal(read.cell.array, np.zeros((3, 3)))
    assert read.get_potential_energy() == float(cast(labels["energy"]))
    np.testing.assert_array_equal(read.get_forces(), cast(labels["forces"]))


# --------------------------------------------------------------------------
# reading


def test_roundtrip_all_splits(tmp_path):
    path, expected = make_dataset(tmp_path)
    assert hydragnn_splits(path) == {"trainset": 5, "valset": 2, "testset": 1}
    read = list(read_hydragnn(path))
    assert len(read) == 8
    flat = [(label, i, pair) for label, pairs in expected.items() for i, pair in enumerate(pairs)]
    for atoms, (label, index, (original, labels)) in zip(read, flat):
        assert atoms.info["hydragnn_split"] == label
        assert atoms.info["hydragnn_index"] == index
        assert atoms.info["dataset_name"] == "omat24"
        assert atoms.info["charge"] == 0 and atoms.info["spin"] == 1
        assert_same(atoms, original, labels)
        assert "stress" not in atoms.calc.results


def test_split_selection_and_order(tmp_path):
    atoms, labels = structures()
    samples = [hydragnn_sample(a, **lab) for a, lab in zip(atoms, labels)]
    # written in a non-canonical order, with an extra label
    path = write_hydragnn(tmp_path / "order.bp", {"testset": samples[:1], "extra": samples[1:2],
                                                  "valset": samples[2:4],
                                                  "trainset": samples[4:]})
    assert list(hydragnn_splits(path).items()) == [
        ("trainset", 4), ("valset", 2), ("testset", 1), ("extra", 1)]
    assert [a.info["hydragnn_split"] for a in read_hydragnn(path)] == \
        ["trainset"] * 4 + ["valset"] * 2 + ["testset", "extra"]
    only_val = list(read_hydragnn(path, splits="valset"))
    assert [a.info["hydragnn_index"] for a in only_val] == [0, 1]
    assert_same(only_val[1], atoms[3], labels[3])
    picked = list(read_hydragnn(path, splits=["testset", "trainset"]))
    assert [a.info["hydragnn_split"] for a in picked] == ["testset"] + ["trainset"] * 4
    assert "dataset_name" not in picked[0].info
    with pytest.raises(ValueError, match=r"split 'nope' not found.*trainset, valset"):
        read_hydragnn(path, splits=["trainset", "nope"])


def test_float32_storage_and_stress(tmp_path):
    """HydraGNN stores float32; stress is a 3x3 tensor (eV/Å^3, ASE's sign)."""
    atoms, labels = structures(seed=3)
    crystals = [(a, lab) for a, lab in zip(atoms, labels) if a.pbc.any()]
    rng = np.random.default_rng(1)
    stresses = []
    for _ in crystals:
        s = rng.normal(size=(3, 3)) * 0.01
        stresses.append(((s + s.T) / 2).astype(np.float32))
    samples = [hydragnn_sample(a, stress=s, dtype=np.float32, **lab)
               for (a, lab), s in zip(crystals, stresses)]
    path = write_hydragnn(tmp_path / "f32.bp", {"trainset": samples})
    read = list(read_hydragnn(path))
    assert len(read) == len(crystals)
    for r, (a, lab), s in zip(read, crystals, stresses):
        assert_same(r, a, lab, dtype=np.float32)
        np.testing.assert_array_equal(r.get_stress(), full_3x3_to_voigt_6_stress(
            s.astype(np.float64)))
        assert "charge" not in r.info


def test_equal_sized_samples_use_variable_dim(tmp_path):
    """With equal sizes AdiosWriter concatenates along dim 0 even for edge_index
    ([2, E] samples become [2 * n, E]); the reader follows variable_dim."""
    rng = np.random.default_rng(2)
    base = molecule("CH4")
    group = []
    for _ in range(3):
        a = base.copy()
        a.positions += rng.normal(scale=0.01, size=a.positions.shape)
        group.append((a, {"energy": float(rng.normal()), "forces": rng.normal(size=(5, 3))}))
    samples = [hydragnn_sample(a, **lab) for a, lab in group]
    assert len({s["edge_index"].shape for s in samples}) == 1
    path = write_hydragnn(tmp_path / "same.bp", {"valset": samples})
    with adios2.FileReader(path) as f:
        assert f.read_attribute("valset/edge_index/variable_dim") == 0
    for r, (a, lab) in zip(read_hydragnn(path, keys={"cell": None, "pbc": None}), group):
        assert_same(r, a, lab)


@pytest.mark.parametrize("chunk", [1, 3, 2048])
def test_variable_dim_one(tmp_path, monkeypatch, chunk):
    """edge_index [2, E] with varying E is cut along dimension 1 (read here
    through the charge_spin slot, which keeps other sizes as an array)."""
    monkeypatch.setattr(hydragnn, "_CHUNK_SAMPLES", chunk)
    atoms, labels = structures()
    samples = [hydragnn_sample(a, **lab) for a, lab in zip(atoms, labels)]
    assert len({s["edge_index"].shape[1] for s in samples}) > 1
    path = write_hydragnn(tmp_path / "edges.bp", {"trainset": samples})
    with adios2.FileReader(path) as f:
        assert f.read_attribute("trainset/edge_index/variable_dim") == 1
    read = list(read_hydragnn(path, keys={"charge_spin": "edge_index"}))
    for r, s in zip(read, samples):
        np.testing.assert_array_equal(r.info["hydragnn_graph_attr"], s["edge_index"].ravel())


def test_chunked_reads_and_read_count(tmp_path, monkeypatch):
    """Each needed array is read once per chunk, not once per sample."""
    path, _ = make_dataset(tmp_path)
    whole = list(read_hydragnn(path))
    monkeypatch.setattr(hydragnn, "_CHUNK_SAMPLES", 2)
    calls = []
    real_open = hydragnn._open

    class CountingReader:
        def __init__(self, reader):
            self._reader = reader

        def __getattr__(self, name):
            return getattr(self._reader, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._reader.close()

        def read(self, name, *args, **kwargs):
            calls.append(name)
            return self._reader.read(name, *args, **kwargs)

    monkeypatch.setattr(hydragnn, "_open", lambda p: CountingReader(real_open(p)))
    chunked = list(read_hydragnn(path, splits="trainset"))
    for a, b in zip(chunked, whole):
        assert_same(a, b, {"energy": b.get_potential_energy(), "forces": b.get_forces()})
    # 5 samples -> 3 chunks; 7 keys (atomic_numbers, pos, cell, pbc, energy,
    # forces, graph_attr), each with count + offset + data per chunk
    data_reads = [c for c in calls if not c.endswith(("variable_count", "variable_offset"))]
    assert sorted(set(data_reads)) == sorted(f"trainset/{k}" for k in (
        "atomic_numbers", "pos", "cell", "pbc", "energy", "forces", "graph_attr"))
    assert len(data_reads) == 7 * 3
    assert len(calls) == 7 * 3 * 3


def test_key_overrides(tmp_path):
    """A file with only x = [Z, pos, forces], y = energy and a cell without pbc."""
    atoms, labels = structures()
    samples = []
    for a, lab in zip(atoms, labels):
        full = hydragnn_sample(a, **lab)
        samples.append({"x": full["x"], "pos": full["pos"], "y": full["y"],
                        "cell": a.cell.array.copy()})
    path = write_hydragnn(tmp_path / "old.bp", {"trainset": samples})

    default = list(read_hydragnn(path))  # numbers from x[:,0]; y is not used
    for r, a in zip(default, atoms):
        np.testing.assert_array_equal(r.numbers, a.numbers)
        assert r.calc is None
        assert not r.pbc.any()

    read = list(read_hydragnn(path, keys={"energy": "y", "forces": "x[:,4:7]",
                                          "positions": "x[:, 1:4]", "pbc": True}))
    for r, a, lab in zip(read, atoms, labels):
        np.testing.assert_array_equal(r.positions, a.positions)
        assert r.get_potential_energy() == lab["energy"]
        np.testing.assert_array_equal(r.get_forces(), lab["forces"])
        assert r.pbc.all()
        np.testing.assert_array_equal(r.cell.array, a.cell.array)

    per_atom = list(read_hydragnn(path, keys={"energy_per_atom": "y"}))
    for r, lab in zip(per_atom, labels):
        assert r.get_potential_energy() == lab["energy"] * len(r)

    partial = list(read_hydragnn(path, keys={"pbc": [True, False, True], "cell": None}))
    assert partial[0].pbc.tolist() == [True, False, True]
    assert not partial[0].cell.array.any()


def test_key_override_errors(tmp_path):
    path, _ = make_dataset(tmp_path)
    with pytest.raises(ValueError, match="unknown quantity 'energies'"):
        read_hydragnn(path, keys={"energies": "energy"})
    with pytest.raises(ValueError, match="cannot parse 'x\\[0\\]'"):
        read_hydragnn(path, keys={"numbers": "x[0]"})
    with pytest.raises(ValueError, match="keys\\['positions'\\] cannot be None"):
        read_hydragnn(path, keys={"positions": None})
    with pytest.raises(ValueError) as err:
        read_hydragnn(path, keys={"stress": "virial"})
    message = str(err.value)
    assert str(path) in message and "split 'trainset'" in message and "'virial'" in message
    # a selection that does not fit the sample fails while reading
    with pytest.raises(ValueError, match=r"split 'trainset', key 'x', sample 0: atomic numbers "
                                         r"must have shape"):
        list(read_hydragnn(path, keys={"numbers": "x"}))
    with pytest.raises(ValueError, match=r"key 'energy', sample 0: 'energy\[:,3\]' selects "
                                         r"columns outside"):
        list(read_hydragnn(path, keys={"energy": "energy[:,3]"}))


def test_warns_on_composition_fit_residuals(tmp_path):
    """examples/multidataset/energy*_linear_regression.py subtract a composition
    fit from the stored energy and record its coefficients as an attribute."""
    atoms, labels = structures()
    samples = [hydragnn_sample(a, **lab) for a, lab in zip(atoms[:2], labels[:2])]
    path = write_hydragnn(tmp_path / "v2.bp", {"trainset": samples},
                          globals_={"energy_linear_regression_coeff": np.linspace(0, 1, 118)})
    with pytest.warns(UserWarning, match="energy_linear_regression_coeff"):
        assert len(list(read_hydragnn(path))) == 2
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(read_hydragnn(path, keys={"energy": None, "energy_per_atom": None}))


def test_non_finite_energy_forces_pass_through(tmp_path):
    atoms, _ = structures()
    lab = {"energy": float("nan"), "forces": np.full((len(atoms[0]), 3), np.inf)}
    path = write_hydragnn(tmp_path / "nan.bp", {"trainset": [hydragnn_sample(atoms[0], **lab)]})
    (r,) = read_hydragnn(path)
    assert np.isnan(r.get_potential_energy()) and np.isinf(r.get_forces()).all()


# --------------------------------------------------------------------------
# is_hydragnn_file


def test_is_hydragnn_file(tmp_path):
    path, _ = make_dataset(tmp_path)
    assert is_hydragnn_file(path)
    assert is_hydragnn_file(tmp_path / "mixed.bp")  # os.PathLike

    other = str(tmp_path / "other.bp")
    with adios2.Stream(other, "w") as stream:
        for _ in stream.steps(1):
            stream.write("temperature", np.arange(4.0), [4], [0], [4])
            stream.write_attribute("units", "K")
    assert not is_hydragnn_file(other)

    rand = tmp_path / "random.bp"
    rand.write_bytes(np.random.default_rng(0).bytes(4096))
    assert not is_hydragnn_file(rand)
    plain = tmp_path / "random.xyz"
    plain.write_bytes(b"3\n\nH 0 0 0\n")
    assert not is_hydragnn_file(plain)
    (tmp_path / "empty.bp").mkdir()
    assert not is_hydragnn_file(tmp_path / "empty.bp")
    assert not is_hydragnn_file(tmp_path / "missing.bp")
    assert not is_hydragnn_file(tmp_path)


# --------------------------------------------------------------------------
# errors


def _message(exc_info) -> str:
    return str(exc_info.value)


def test_missing_file(tmp_path):
    missing = tmp_path / "missing.bp"
    for call in (lambda: read_hydragnn(missing), lambda: hydragnn_splits(missing)):
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert str(missing) in _message(err)


def test_not_hydragnn_layout(tmp_path):
    other = str(tmp_path / "other.bp")
    with adios2.Stream(other, "w") as stream:
        for _ in stream.steps(1):
            stream.write("temperature", np.arange(4.0), [4], [0], [4])
    rand = tmp_path / "random.bp"
    rand.write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.bp").mkdir()
    for bad in (other, rand, tmp_path / "empty.bp"):
        with pytest.raises(ValueError, match="not a HydraGNN ADIOS2 dataset") as err:
            read_hydragnn(bad)
        assert str(bad) in _message(err)
        with pytest.raises(ValueError, match="not a HydraGNN ADIOS2 dataset"):
            hydragnn_splits(bad)


@pytest.mark.parametrize("omitted, quantity, tried", [
    (("pos",), "positions", "'pos'"),
    (("atomic_numbers", "x"), "numbers", "'atomic_numbers', 'x[:,0]', 'z'"),
])
def test_missing_required_key(tmp_path, omitted, quantity, tried):
    atoms, labels = structures()
    samples = []
    for a, lab in zip(atoms[:2], labels[:2]):
        s = hydragnn_sample(a, **lab)
        samples.append({k: v for k, v in s.items() if k not in omitted})
    path = write_hydragnn(tmp_path / "missing_key.bp", {"trainset": samples[:1],
                                                        "valset": samples[1:]})
    with pytest.raises(ValueError) as err:
        read_hydragnn(path)
    message = _message(err)
    assert message.startswith(f"{path}: split 'trainset': no key for the required {quantity}")
    assert f"(tried {tried})" in message


def test_missing_bookkeeping(tmp_path):
    atoms, labels = structures()
    samples = [hydragnn_sample(a, **lab) for a, lab in zip(atoms[:3], labels[:3])]
    path = write_hydragnn(tmp_path / "a.bp", {"trainset": samples},
                          omit={"trainset/forces/variable_offset"})
    with pytest.raises(ValueError) as err:
        read_hydragnn(path)
    assert _message(err) == (f"{path}: split 'trainset', key 'forces': variable "
                             "trainset/forces/variable_offset is missing")
    path = write_hydragnn(tmp_path / "b.bp", {"trainset": samples},
                          omit={"trainset/pos/variable_dim"})
    with pytest.raises(ValueError, match="key 'pos': attribute trainset/pos/variable_dim is "
                                         "missing"):
        read_hydragnn(path)


def test_ndata_mismatch(tmp_path):
    atoms, labels = structures()
    samples = [hydragnn_sample(a, **lab) for a, lab in zip(atoms[:4], labels[:4])]
    path = write_hydragnn(tmp_path / "ndata.bp", {"trainset": samples[:2], "valset": samples[2:]},
                          attr_override={"valset/ndata": np.array(3)})
    with pytest.raises(ValueError) as err:
        read_hydragnn(path)
    message = _message(err)
    assert message.startswith(f"{path}: split 'valset', key '")
    assert "has shape [2] but valset/ndata is 3" in message
    # reading only the intact split works
    assert len(list(read_hydragnn(path, splits="trainset"))) == 2


@pytest.mark.parametrize("key, change, sample", [
    ("pos", lambda offsets: offsets + np.array([0, 0, 0, 1]), 3),    # past the end
    ("forces", lambda offsets: offsets - np.array([0, 5, 0, 0]), 1),  # negative
    ("edge_index", lambda offsets: offsets + np.array([0, 0, 10 ** 6, 0]), 2),
])
def test_offsets_outside_array(tmp_path, key, change, sample):
    atoms, labels = structures()
    samples = [hydragnn_sample(a, **lab) for a, lab in zip(atoms[:4], labels[:4])]
    counts = np.array([s[key].shape[1 if key == "edge_index" else 0] for s in samples])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    path = write_hydragnn(tmp_path / "offsets.bp", {"trainset": samples},
                          override={f"trainset/{key}/variable_offset": change(offsets)})
    keys = {"positions": "pos", "forces": "forces", "energy": None}
    if key == "edge_index":
        keys["energy"] = "edge_index"  # any key read is checked
    reader = read_hydragnn(path, keys=keys)
    with pytest.raises(ValueError) as err:
        list(reader)
    message = _message(err)
    assert message.startswith(f"{path}: split 'trainset', key '{key}', sample {sample}: "
                              "variable_offset ")
    assert f"fall outside the {counts.sum()} entries of trainset/{key}" in message


def test_negative_count(tmp_path):
    atoms, labels = structures()
    samples = [hydragnn_sample(a, **lab) for a, lab in zip(atoms[:3], labels[:3])]
    path = write_hydragnn(tmp_path / "count.bp", {"testset": samples},
                          override={"testset/atomic_numbers/variable_count":
                                    np.array([3, -1, 4])})
    with pytest.raises(ValueError, match=r"split 'testset', key 'atomic_numbers', sample 1: "
                                         r"variable_offset \d+ and variable_count -1"):
        list(read_hydragnn(path))


def test_count_mismatch_between_keys(tmp_path):
    atoms, labels = structures()
    s = hydragnn_sample(atoms[0], **labels[0])
    s["forces"] = s["forces"][:-1]
    other = hydragnn_sample(atoms[1], **labels[1])
    path = write_hydragnn(tmp_path / "f.bp", {"trainset": [other, s]})
    with pytest.raises(ValueError, match=r"split 'trainset', key 'forces', sample 1: forces "
                                         r"must have shape \[3, 3\], got \[2, 3\]"):
        list(read_hydragnn(path))


def test_non_finite_positions(tmp_path):
    atoms, labels = structures()
    samples = [hydragnn_sample(a, **lab) for a, lab in zip(atoms[:3], labels[:3])]
    samples[2]["pos"] = samples[2]["pos"].copy()
    samples[2]["pos"][1, 2] = np.nan
    path = write_hydragnn(tmp_path / "nan.bp", {"trainset": samples})
    reader = read_hydragnn(path)
    assert len([next(reader), next(reader)]) == 2  # the good samples come first
    with pytest.raises(ValueError) as err:
        next(reader)
    assert _message(err) == (f"{path}: split 'trainset', key 'pos', sample 2: non-finite "
                             "position of atom 1")


@pytest.mark.parametrize("value, shown", [(6.5, "6.5"), (0.0, "0.0"), (119.0, "119.0"),
                                          (np.nan, "nan")])
def test_bad_atomic_numbers(tmp_path, value, shown):
    atoms, labels = structures()
    samples = [hydragnn_sample(a, **lab) for a, lab in zip(atoms[:2], labels[:2])]
    samples[1]["atomic_numbers"] = samples[1]["atomic_numbers"].copy()
    samples[1]["atomic_numbers"][2, 0] = value
    path = write_hydragnn(tmp_path / "z.bp", {"valset": samples})
    with pytest.raises(ValueError) as err:
        list(read_hydragnn(path))
    assert _message(err) == (f"{path}: split 'valset', key 'atomic_numbers', sample 1: "
                             f"atomic number {shown} of atom 2 is not an integer in 1..118")


def test_progress_bar(tmp_path, capsys):
    pytest.importorskip("tqdm")
    path, _ = make_dataset(tmp_path)
    assert len(list(read_hydragnn(path, progress=True))) == 8
    assert "8/8" in capsys.readouterr().err


def test_module_docs_and_atoms_type(tmp_path):
    path, _ = make_dataset(tmp_path)
    first = next(read_hydragnn(path))
    assert isinstance(first, Atoms)
    assert set(hydragnn.DEFAULT_KEYS) == {"numbers", "positions", "cell", "pbc", "energy",
                                          "energy_per_atom", "forces", "stress", "charge_spin"}


# --------------------------------------------------------------------------
# conversion to a pygfm dataset (`pygfm-data convert` on a HydraGNN file)


def test_convert_cli_reads_hydragnn_files(tmp_path):
    from pygfm.cli.data import main
    from pygfm.data import open_dataset

    path, expected = make_dataset(tmp_path)
    out = tmp_path / "converted"
    code = main(["convert", str(path), "--dataset", "omat24", "--fidelity", "PBE (VASP)",
                 "-o", str(out), "--hydragnn-splits", "trainset,testset", "--quiet"])
    assert code == 0
    dataset = open_dataset(out)
    pairs = expected["trainset"] + expected["testset"]
    assert len(dataset) == len(pairs) and dataset.labels == ["energy", "forces"]
    for k, (atoms, labels) in enumerate(pairs):
        assert_same(dataset[k].to_ase(), atoms, labels)

"""`pygfm-data convert` over the format registry (issue #16): --format, --units,
label keys, --level/--all-levels, partial labels, charge and spin; `formats`,
`inspect`, and `info`'s label coverage.

extxyz inputs are written by ASE (the format's reference writer), and expected
values are computed here from the raw numbers written, not from pygfm. Registry
formats are exercised through a test-only format (``_toy_format.py``), so that
these tests do not depend on the real readers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy_format import BOHR, HARTREE, NAME, toy_format, toy_structures, write_toy  # noqa: E402
from test_data_cli import MPIEXEC, run_command  # noqa: E402

from pygfm.cli.data import main  # noqa: E402
from pygfm.data import BatchLoader, Sample, open_dataset, write_dataset  # noqa: E402
from pygfm.data.block import SampleBlock  # noqa: E402
from pygfm.data.convert import level_slug, read_inputs  # noqa: E402
from pygfm.data.formats import ReadOptions  # noqa: E402
from pygfm.data.store import DistributedStore  # noqa: E402


def convert(*args):
    return main(["convert", *map(str, args), "--quiet"])


# ---------------------------------------------------------------- extxyz, any keys
def partial_frames():
    """Six crystals; labels under non-default keys, each missing from some frames:
    REF_energy (not frame 1), dft_forces (frames 0, 2, 4), virial (frames 3, 4)."""
    frames = []
    rng = np.random.default_rng(3)
    for k in range(6):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.positions += 0.05 * rng.normal(size=atoms.positions.shape)
        if k != 1:
            atoms.info["REF_energy"] = -3.5 * len(atoms) + 0.1 * k
        if k % 2 == 0:
            atoms.arrays["dft_forces"] = rng.normal(size=(len(atoms), 3))
        if k in (3, 4):
            virial = rng.normal(size=(3, 3))
            atoms.info["virial"] = virial + virial.T
        frames.append(atoms)
    return frames


def raw_frames(path):
    """(comment line dict of floats, per-atom column array) of each frame, parsed
    from the text ASE wrote, independent of ase.io.read and of pygfm."""
    lines = Path(path).read_text().splitlines()
    frames, i = [], 0
    while i < len(lines):
        n = int(lines[i])
        comment = lines[i + 1]
        fields = {}
        for key in ("REF_energy", "virial", "Lattice"):
            if f"{key}=" in comment:
                value = comment.split(f"{key}=")[1]
                value = value[1:].split('"')[0] if value.startswith('"') else value.split()[0]
                fields[key] = np.array(value.split(), dtype=float)
        columns = np.array([line.split()[1:] for line in lines[i + 2:i + 2 + n]], dtype=float)
        frames.append((fields, "dft_forces" in comment, columns))
        i += n + 2
    return frames


def test_extxyz_partial_labels_under_any_key_are_masked(tmp_path, capsys):
    path = tmp_path / "partial.extxyz"
    ase.io.write(path, partial_frames(), format="extxyz")
    assert convert(path, "--dataset", "cu", "--fidelity", "PBE", "--energy-key", "REF_energy",
                   "--forces-key", "dft_forces", "--stress-key", "virial",
                   "-o", tmp_path / "out") == 0
    assert "(partial: energy 5 of 6, forces 3 of 6, stress 2 of 6)" in capsys.readouterr().out
    dataset = open_dataset(tmp_path / "out")
    assert dataset.manifest["label_counts"] == {"energy": 5, "forces": 3, "stress": 2}
    for k, (fields, has_forces, columns) in enumerate(raw_frames(path)):
        sample = dataset[k]
        if "REF_energy" in fields:
            assert sample.energy == pytest.approx(fields["REF_energy"][0], abs=0, rel=1e-15)
        else:
            assert sample.energy is None
        if has_forces:  # columns: x y z fx fy fz
            np.testing.assert_allclose(sample.forces, columns[:, 3:6], rtol=1e-15)
        else:
            assert sample.forces is None
        if "virial" in fields:  # ASE's sign: stress = -virial / volume
            volume = abs(np.linalg.det(fields["Lattice"].reshape(3, 3)))
            np.testing.assert_allclose(sample.stress, -fields["virial"].reshape(3, 3) / volume,
                                       rtol=1e-12)
        else:
            assert sample.stress is None
    assert main(["info", str(tmp_path / "out")]) == 0
    assert "labels       energy 5 (83%), forces 3 (50%), stress 2 (33%)" in capsys.readouterr().out


def test_extxyz_nan_energy_is_masked_not_stored(tmp_path):
    frames = partial_frames()[:3]
    frames[0].info["REF_energy"] = float("nan")
    ase.io.write(tmp_path / "nan.extxyz", frames, format="extxyz")
    assert convert(tmp_path / "nan.extxyz", "--dataset", "cu", "--fidelity", "PBE",
                   "--energy-key", "REF_energy", "-o", tmp_path / "out") == 0
    dataset = open_dataset(tmp_path / "out")
    assert dataset[0].energy is None and dataset[2].energy is not None


@pytest.mark.parametrize("option, key, label", [("--energy-key", "DFT_E", "energy"),
                                                ("--forces-key", "F_dft", "forces"),
                                                ("--stress-key", "sigma", "stress")])
def test_key_in_no_structure_is_named_with_the_keys_there(tmp_path, capsys, option, key, label):
    path = tmp_path / "partial.extxyz"
    ase.io.write(path, partial_frames(), format="extxyz")
    assert convert(path, "--dataset", "cu", "--fidelity", "PBE", option, key,
                   "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"error: {option} {key!r}: no structure of {path} has a {label} under that key" in err
    assert "REF_energy" in err and "dft_forces" in err and "virial" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_extxyz_units_option_converts(tmp_path):
    frames = partial_frames()[:2]
    path = tmp_path / "ha.extxyz"
    ase.io.write(path, frames, format="extxyz")
    assert convert(path, "--dataset", "cu", "--fidelity", "x", "--energy-key", "REF_energy",
                   "--forces-key", "dft_forces", "--units", "energy=hartree,length=bohr",
                   "-o", tmp_path / "out") == 0
    dataset = open_dataset(tmp_path / "out")
    fields, _, columns = raw_frames(path)[0]
    assert dataset[0].energy == pytest.approx(fields["REF_energy"][0] * HARTREE, rel=1e-14)
    np.testing.assert_allclose(dataset[0].positions, columns[:, :3] * BOHR, rtol=1e-14)
    np.testing.assert_allclose(dataset[0].forces, columns[:, 3:6] * HARTREE / BOHR, rtol=1e-14)


@pytest.mark.parametrize("stress_key", [None, "virial"])
def test_virial_in_other_units_becomes_stress_in_ev_per_cubic_angstrom(tmp_path, stress_key):
    """A virial is an energy: in hartree with a cell in bohr the stress is
    -V / volume in hartree/bohr³, i.e. times HARTREE / BOHR³ in eV/Å³."""
    path = tmp_path / "ha.extxyz"
    ase.io.write(path, partial_frames()[3:5], format="extxyz")
    keys = ["--stress-key", stress_key] if stress_key else []
    assert convert(path, "--dataset", "cu", "--fidelity", "x", "--energy-key", "REF_energy",
                   *keys, "--units", "energy=hartree,length=bohr", "-o", tmp_path / "out") == 0
    dataset = open_dataset(tmp_path / "out")
    for sample, (fields, _, _) in zip(dataset, raw_frames(path)):
        volume_bohr3 = abs(np.linalg.det(fields["Lattice"].reshape(3, 3)))
        expected = -fields["virial"].reshape(3, 3) / volume_bohr3 * HARTREE / BOHR ** 3
        np.testing.assert_allclose(sample.stress, expected, rtol=1e-12)


@pytest.mark.parametrize("units, message", [
    ("energy=furlong", "unknown energy unit 'furlong'"),
    ("mass=kg", "--units: 'mass=kg' is not KEY=UNIT"),
    ("hartree", "--units: 'hartree' is not KEY=UNIT"),
])
def test_bad_units_are_named(tmp_path, capsys, units, message):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, partial_frames()[:1], format="extxyz")
    assert convert(path, "--dataset", "d", "--fidelity", "x", "--units", units,
                   "-o", tmp_path / "out") == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- charge and spin
def test_extxyz_charge_and_spin_are_stored(tmp_path, capsys):
    frames = []
    for k in range(4):
        atoms = molecule("H2O")
        atoms.info["REF_energy"] = -10.0 - k
        if k == 0:
            atoms.info.update(charge=-1, spin=2)
        if k == 1:
            atoms.info.update(charge=1, multiplicity=3)
        frames.append(atoms)
    ase.io.write(tmp_path / "mol.extxyz", frames, format="extxyz")
    assert convert(tmp_path / "mol.extxyz", "--dataset", "w", "--fidelity", "x",
                   "-o", tmp_path / "out") == 0
    dataset = open_dataset(tmp_path / "out")
    assert [(s.charge, s.spin) for s in dataset] == [(-1.0, 2.0), (1.0, 3.0), (None, None),
                                                      (None, None)]
    assert dataset.manifest["property_counts"] == {"charge": 2, "spin": 2}
    assert main(["info", str(tmp_path / "out")]) == 0
    assert "properties   charge 2 (50%), spin 2 (50%)" in capsys.readouterr().out
    atoms = dataset[1].to_ase()
    assert atoms.info["charge"] == 1.0 and atoms.info["spin"] == 3.0


@pytest.mark.parametrize("conditions, kept", [
    (["charge=0"], [0, 4]), (["charge!=0"], [1, 3]), (["charge=none"], [2, 5]),
    (["charge!=none"], [0, 1, 3, 4]), (["charge=0", "natoms>3"], [4]),
    (["spin<=1"], [0]), (["natoms<4"], [0, 1, 2, 3])])
def test_where_selects_structures_by_charge_spin_and_size(tmp_path, conditions, kept):
    """OMol25's neutral / charged parts from one file: --where keeps the file's
    order and reads charge as the file gives it (unknown is neither 0 nor not 0)."""
    charges = [0, 1, None, -1, 0, None]
    frames = []
    for k, charge in enumerate(charges):
        atoms = molecule("H2O") if k < 4 else molecule("CH4")
        atoms.info["REF_energy"] = -10.0 - k
        if charge is not None:
            atoms.info.update(charge=charge, spin=1 if k == 0 else 2)
        frames.append(atoms)
    ase.io.write(tmp_path / "mol.extxyz", frames, format="extxyz")
    args = [x for c in conditions for x in ("--where", c)]
    assert convert(tmp_path / "mol.extxyz", "--dataset", "w", "--fidelity", "x", *args,
                   "-o", tmp_path / "out") == 0
    dataset = open_dataset(tmp_path / "out")
    assert [s.energy for s in dataset] == [-10.0 - k for k in kept]
    assert all(f"[--where {c}]" in dataset.manifest["description"] for c in conditions)


@pytest.mark.parametrize("condition, message", [
    ("charge", "expected FIELD OP VALUE"), ("mass=3", "FIELD one of charge, spin, natoms"),
    ("charge<none", "compares only with = or !="), ("spin=one", "not a number")])
def test_bad_where_is_named(tmp_path, capsys, condition, message):
    ase.io.write(tmp_path / "mol.extxyz", molecule("H2O"), format="extxyz")
    assert convert(tmp_path / "mol.extxyz", "--dataset", "w", "--fidelity", "x", "--where",
                   condition, "-o", tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def charged_samples(n=7):
    rng = np.random.default_rng(1)
    return [Sample([8, 1, 1], molecule("H2O").positions + 0.02 * rng.normal(size=(3, 3)),
                   energy=-14.0 + 0.1 * k, charge=None if k % 3 == 2 else float(k % 3 - 1),
                   spin=None if k % 2 else 1.0 + k % 4) for k in range(n)]


def test_charge_spin_round_trip_write_open_loader_and_store(tmp_path):
    samples = charged_samples()
    dataset = write_dataset(tmp_path / "set", samples, name="set", fidelity="x", shard_size=3)
    assert [(s.charge, s.spin) for s in dataset] == [(s.charge, s.spin) for s in samples]
    block = dataset.read_block()
    assert block.arrays["charge"].dtype == np.float64
    np.testing.assert_array_equal(block.arrays["has_charge"],
                                  [s.charge is not None for s in samples])
    # a loader over the dataset (no DistributedStore) carries the arrays untouched
    loader = BatchLoader({"set": dataset}, atom_budget=12, shuffle=False, prefetch=0)
    seen = sum(int(batch.energy_mask.sum()) for batch in loader)
    assert seen == len(samples)
    # a single-process store keeps them too, and a block without them joins in
    store = DistributedStore.from_dataset(dataset)
    fetched = store.get_block(np.array([6, 0, 2]))
    assert [fetched.sample(k).charge for k in range(3)] == [samples[6].charge,
                                                            samples[0].charge, None]
    store.close()
    plain = SampleBlock.from_samples([Sample([1], [[0, 0, 0]])])
    assert "charge" not in plain.arrays and plain.sample(0).charge is None
    joined = SampleBlock.concatenate([plain, block])
    assert joined.sample(0).charge is None and joined.sample(1).charge == samples[0].charge


def test_nonfinite_charge_is_refused_naming_the_sample():
    with pytest.raises(ValueError, match="s, sample 4: charge is nan"):
        Sample([1], [[0, 0, 0]], charge=float("nan"), dataset="s", index=4)


# ---------------------------------------------------------------- registry formats
LEVELS = {"wB97x/6-31G(d)": {"energy": [-76.1, -76.2, None, -76.4, -76.5],
                             "gradient": [[[0.01, 0, 0], [-0.01, 0, 0], [0, 0, 0]]] * 5},
          "CCSD(T)/CBS": {"energy": [-76.3, None, -76.31, -76.32, -76.33]}}


@pytest.fixture
def toy(tmp_path):
    with toy_format():
        yield write_toy(tmp_path / "water.toy", toy_structures(5), LEVELS), toy_structures(5)


def test_formats_lists_the_registry(toy, capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "suffixes", "needs", "description"]
    row = next(line for line in out.splitlines() if line.startswith(NAME))
    assert ".toy" in row and "test-only toy file" in row
    assert any(line.startswith("ase ") for line in out.splitlines())
    assert main(["formats", "--json"]) == 0
    names = [entry["name"] for entry in json.loads(capsys.readouterr().out)]
    assert NAME in names and "hydragnn" in names


def test_inspect_shows_the_detected_format(toy, tmp_path, capsys):
    path, _ = toy
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"format: {NAME}" in out and "levels: wB97x/6-31G(d), CCSD(T)/CBS" in out
    assert "units: energy: hartree, length: bohr" in out
    assert main(["inspect", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["structures"] == 5 and result["keys"]["CCSD(T)/CBS"] == ["energy"]
    # an ase.io file: the keys of its first structures, to choose --energy-key from
    ase.io.write(tmp_path / "p.extxyz", partial_frames(), format="extxyz")
    assert main(["inspect", str(tmp_path / "p.extxyz"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "ase.io" and result["structures_read"] == 6
    assert result["info_keys (structures having it)"]["REF_energy"] == 5
    assert result["per_atom_arrays"]["dft_forces"] == 3


def assert_energies(dataset, level):
    """Energies of ``level`` in eV from the raw hartree values, None where null
    (structures without any value at the level are not in the dataset)."""
    raw = [(e, g) for e, g in zip(LEVELS[level]["energy"],
                                  LEVELS[level].get("gradient", [None] * 5)) if (e, g) != (None, None)]
    for sample, (energy, _) in zip(dataset, raw, strict=True):
        if energy is None:
            assert sample.energy is None
        else:
            assert sample.energy == pytest.approx(energy * HARTREE, rel=1e-15)


def test_one_level_is_one_dataset(toy, tmp_path):
    path, structures = toy
    assert convert(path, "--dataset", "water", "--level", "CCSD(T)/CBS",
                   "-o", tmp_path / "cc") == 0
    dataset = open_dataset(tmp_path / "cc")
    assert dataset.name == "water" and dataset.fidelity["text"] == "CCSD(T)/CBS"
    assert_energies(dataset, "CCSD(T)/CBS")
    kept = [0, 2, 3, 4]  # structure 1 has no CCSD(T) value: skipped
    assert len(dataset) == 4
    np.testing.assert_allclose(dataset[2].positions,
                               np.asarray(structures[3]["positions"]) * BOHR, rtol=1e-15)
    assert [s.charge for s in dataset] == [structures[k].get("charge") for k in kept]


def test_all_levels_give_one_dataset_each(toy, tmp_path, capsys):
    path, _ = toy
    assert convert(path, "--dataset", "water", "--all-levels", "--fidelity",
                   "wB97x/6-31G(d)=wB97x/6-31G(d) (Gaussian 09)", "-o", tmp_path / "levels") == 0
    out = capsys.readouterr().out
    made = sorted(p.name for p in (tmp_path / "levels").iterdir())
    assert made == ["water-ccsd-t-cbs", "water-wb97x-6-31g-d"]
    assert out.count("wrote ") == 2
    dft = open_dataset(tmp_path / "levels" / "water-wb97x-6-31g-d")
    assert dft.name == "water-wb97x-6-31g-d"
    assert dft.fidelity["text"] == "wB97x/6-31G(d) (Gaussian 09)"
    assert_energies(dft, "wB97x/6-31G(d)")
    # forces = -gradient, hartree/bohr -> eV/Å, computed here from the raw numbers
    np.testing.assert_allclose(dft[0].forces[0], [-0.01 * HARTREE / BOHR, 0, 0], rtol=1e-14)
    cc = open_dataset(tmp_path / "levels" / "water-ccsd-t-cbs")
    assert cc.fidelity["text"] == "CCSD(T)/CBS"  # no --fidelity for it: the level name
    assert cc.manifest["label_counts"] == {"energy": 4, "forces": 0, "stress": 0}
    assert len(cc) == 4 and len(dft) == 5


def test_level_choice_and_errors(toy, tmp_path, capsys):
    path, _ = toy
    # no --level: the reader's default level (the toy's first, as ANI-1x's wb97x_dz)
    assert convert(path, "--dataset", "w", "--fidelity", "x", "-o", tmp_path / "default") == 0
    assert_energies(open_dataset(tmp_path / "default"), "wB97x/6-31G(d)")
    assert convert(path, "--dataset", "w", "--level", "MP2", "-o", tmp_path / "o") == 2
    assert "no level 'MP2'; the toy-levels file has levels wB97x/6-31G(d), CCSD(T)/CBS" in \
        capsys.readouterr().err
    assert convert(path, "--dataset", "w", "--level", "CCSD(T)/CBS", "--fidelity", "MP2=x",
                   "-o", tmp_path / "o") == 2
    assert "--fidelity: no level 'MP2' is converted" in capsys.readouterr().err
    assert convert(path, "--dataset", "w", "--format", "nosuch", "--fidelity", "x",
                   "-o", tmp_path / "o") == 2
    assert f"--format: unknown format 'nosuch'; registry formats: " in capsys.readouterr().err


def test_positions_span_files_for_every_rank(toy, tmp_path):
    """Two files of 5: rank r of 2 must get global positions r, r+2, ... across both."""
    path, _ = toy
    second = write_toy(tmp_path / "b.toy", toy_structures(5, seed=1), LEVELS)
    def positions(level):
        options = ReadOptions(level=level)
        return {rank: [k for k, _ in read_inputs([path, second], format_name="auto",
                                                 options=options, rank=rank, size=2)]
                for rank in (0, 1)}

    assert positions("wB97x/6-31G(d)") == {0: [0, 2, 4, 6, 8], 1: [1, 3, 5, 7, 9]}
    # structure 1 of each file has no CCSD(T) value: skipped, the positions stay
    assert positions("CCSD(T)/CBS") == {0: [0, 2, 4, 8], 1: [3, 5, 7, 9]}


def test_write_dataset_pairs_may_skip_positions_not_repeat_them(tmp_path):
    samples = charged_samples(4)
    gaps = write_dataset(tmp_path / "gaps", [(0, samples[0]), (2, samples[1]), (7, samples[2])],
                         name="g", fidelity="x", shard_size=2)
    assert len(gaps) == 3 and [s.index for s in gaps] == [0, 1, 2]
    assert [s.energy for s in gaps] == [s.energy for s in samples[:3]]
    assert gaps.manifest["id_gaps"] is True
    dense = write_dataset(tmp_path / "dense", list(enumerate(samples)), name="d", fidelity="x")
    assert "id_gaps" not in dense.manifest and [s.index for s in dense] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="got input position 2 after 2; each rank takes"):
        write_dataset(tmp_path / "bad", [(0, samples[0]), (2, samples[1]), (2, samples[2])],
                      name="b", fidelity="x")
    assert not (tmp_path / "bad").exists()


def test_level_slug():
    assert level_slug("wB97x/6-31G(d)") == "wb97x-6-31g-d"
    assert level_slug("ωB97M-V/def2-TZVPD") == "b97m-v-def2-tzvpd"
    assert level_slug("ccsd(t)_cbs") == "ccsd-t-cbs" and level_slug("PBE0+MBD") == "pbe0+mbd"
    with pytest.raises(ValueError, match="gives no usable name"):
        level_slug("///")


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to python")
def test_mpi_registry_convert_equals_single_process(toy, tmp_path):
    path, _ = toy
    second = write_toy(tmp_path / "b.toy", toy_structures(4, seed=2), LEVELS)
    script = tmp_path / "convert_toy.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from _toy_format import toy_format\n"
        "from pygfm.cli.data import main\n"
        "with toy_format():\n"
        "    sys.exit(main(sys.argv[1:]))\n")
    args = ["convert", str(path), str(second), "--dataset", "w", "--all-levels",
            "--quiet", "--no-statistics", "-o"]
    done = run_command([str(MPIEXEC), "-n", "2", sys.executable, str(script), *args,
                        str(tmp_path / "mpi")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert convert(path, second, "--dataset", "w", "--all-levels", "--no-statistics",
                   "-o", tmp_path / "one") == 0
    for name in ("w-wb97x-6-31g-d", "w-ccsd-t-cbs"):
        a = open_dataset(tmp_path / "mpi" / name).read_block().arrays
        b = open_dataset(tmp_path / "one" / name).read_block().arrays
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _frames_with_duplicates(bad=(1, 4), n=6):
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.info["REF_energy"] = -14.0 - k
        if k in bad:  # an atom written twice (0.002 Å apart)
            atoms.positions[2] = atoms.positions[1] + [0.002, 0.0, 0.0]
        frames.append(atoms)
    return frames


def test_skip_overlapping_leaves_out_and_names_them(tmp_path, capsys):
    path = tmp_path / "dup.extxyz"
    ase.io.write(path, _frames_with_duplicates(), format="extxyz")
    assert convert(path, "--dataset", "cu", "--fidelity", "x", "-o", tmp_path / "stop") == 2
    assert "cu, sample 1: atoms 1 and 2 are 0.0020 Å apart" in capsys.readouterr().err
    assert not (tmp_path / "stop").exists()
    assert main(["convert", str(path), "--dataset", "cu", "--fidelity", "x",
                 "--skip-overlapping", "-o", str(tmp_path / "skip")]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 structures with overlapping atoms" in out and "sample 1" in out
    dataset = open_dataset(tmp_path / "skip")
    assert [s.energy for s in dataset] == [-14.0, -16.0, -17.0, -19.0]
    skipped = dataset.manifest["skipped"]
    assert skipped["count"] == 2 and len(skipped["first"]) == 2
    assert "sample 4: atoms 1 and 2" in skipped["first"][1]


def test_skip_overlapping_under_mpiexec_equals_one_process(tmp_path):
    path = tmp_path / "dup.extxyz"
    ase.io.write(path, _frames_with_duplicates(bad=(0, 3, 4)), format="extxyz")
    args = ["convert", str(path), "--dataset", "cu", "--fidelity", "x", "--skip-overlapping",
            "--quiet", "--no-statistics", "-o"]
    done = run_command([str(MPIEXEC), "-n", "2", sys.executable, "-m", "pygfm.cli.data",
                        *args, str(tmp_path / "mpi")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert main([*args, str(tmp_path / "one")]) == 0
    a, b = open_dataset(tmp_path / "mpi"), open_dataset(tmp_path / "one")
    assert [s.energy for s in a] == [s.energy for s in b] == [-15.0, -16.0, -19.0]
    assert a.manifest["skipped"] == b.manifest["skipped"]
    assert a.manifest["skipped"]["count"] == 3

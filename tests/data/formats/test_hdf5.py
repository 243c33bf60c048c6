"""HDF5 readers (issue #16) on files built with h5py exactly in each publisher's layout.

Layouts follow the publishers' own writers/readers: pyanitools' ``datapacker`` (ANI-1),
aiqm/ANI1x_datasets (ANI-1x), torchani's by_num_atoms grouping (ANI-2x), SPICE's
``downloader.py`` (datasets, dtypes, ``units`` attributes), the QM7-X README and the
Transition1x ``dataloader.py``. Expected values are computed here from the raw arrays
with CODATA 2018 constants, independently of pygfm's unit tables.
"""

from __future__ import annotations

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from pygfm.data.formats import ReadOptions, LabelKeys, detect, get_format  # noqa: E402
from pygfm.data.formats import hdf5  # noqa: E402

HARTREE = 27.211386245988  # eV
BOHR = 0.529177210903  # Å
RNG = np.random.default_rng(16)


def _coords(conformers, atoms, scale=1.5):
    return (RNG.normal(size=(conformers, atoms, 3)) * scale).astype(np.float32)


def _read_all(fmt, path, options=None, size=1):
    out = {}
    for rank in range(size):
        previous = -1
        for position, sample in fmt.read(path, options or ReadOptions(), rank, size):
            assert position % size == rank and position > previous
            previous = position
            out[position] = sample
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ file builders

@pytest.fixture
def ani1_file(tmp_path):
    """ANI-1 release layout, as pyanitools' datapacker stores it (gzip level 6, species
    and smiles as lists of str encoded to bytes)."""
    path = tmp_path / "ani_gdb_s01.h5"
    with h5py.File(path, "w") as f:
        molecules = {"gdb11_s01-0": ["C", "H", "H", "H", "H"], "gdb11_s01-1": ["N", "H", "H", "H"]}
        for name, species in molecules.items():
            g = f.create_group(f"gdb11_s01/{name}")
            n, c = len(species), 3
            data = {"coordinates": _coords(c, n), "energies": -40.0 + RNG.normal(size=c),
                    "species": [s.encode("utf8") for s in species],
                    "smiles": [ch.encode("utf8") for ch in "[H]C([H])([H])[H]"],
                    "coordinatesHE": _coords(1, n), "energiesHE": np.array([-39.0])}
            for key, value in data.items():
                g.create_dataset(key, data=value, compression="gzip", compression_opts=6)
    return path


ANI1X_N = {"C1H4O1": [6, 1, 1, 1, 1, 8], "C2H2": [6, 6, 1, 1]}


@pytest.fixture
def ani1x_file(tmp_path):
    """ani1x-release.h5 layout: formula groups, levels side by side, NaN where a level
    was not computed (dtypes of the data descriptor's table)."""
    path = tmp_path / "ani1x-release.h5"
    with h5py.File(path, "w") as f:
        for name, numbers in ANI1X_N.items():
            n, c = len(numbers), 4
            g = f.create_group(name)
            g["atomic_numbers"] = np.array(numbers, dtype=np.uint8)
            g["coordinates"] = _coords(c, n)
            for level in ("wb97x_dz", "wb97x_tz"):
                g[f"{level}.energy"] = -100.0 + RNG.normal(size=c)
                g[f"{level}.forces"] = RNG.normal(size=(c, n, 3)).astype(np.float32) * 0.05
            cc = -100.5 + RNG.normal(size=c)
            cc[[0, 2]] = np.nan  # CCSD(T) only on a subset
            g["ccsd(t)_cbs.energy"] = cc
            g["hf_dz.energy"] = -99.0 + RNG.normal(size=c)
            g["mp2_dz.corr_energy"] = RNG.normal(size=c)
            g["wb97x_dz.dipole"] = RNG.normal(size=(c, 3)).astype(np.float32)
            g["wb97x_dz.cm5_charges"] = RNG.normal(size=(c, n)).astype(np.float32)
        # missing values at the default level in the first group
        g = f["C1H4O1"]
        e = g["wb97x_dz.energy"][()]
        e[1] = np.nan
        g["wb97x_dz.energy"][...] = e
        forces = g["wb97x_dz.forces"][()]
        forces[1] = np.nan  # conformer 1: nothing at wb97x_dz -> skipped
        forces[3, 0, 0] = np.nan  # conformer 3: energy kept, forces masked
        g["wb97x_dz.forces"][...] = forces
    return path


@pytest.fixture
def ani2x_file(tmp_path):
    """torchani by_num_atoms grouping (ANI-2x release): species [C, N] atomic numbers."""
    path = tmp_path / "ANI-2x-wB97X-631Gd.h5"
    with h5py.File(path, "w") as f:
        for name, rows in {"003": [[8, 1, 1], [1, 6, 7]], "005": [[6, 1, 1, 1, 17]] * 3}.items():
            species = np.array(rows, dtype=np.int64)
            c, n = species.shape
            g = f.create_group(name)
            g["species"] = species
            g["coordinates"] = _coords(c, n)
            g["energies"] = -200.0 + RNG.normal(size=c)
            g["forces"] = RNG.normal(size=(c, n, 3)).astype(np.float32) * 0.05
    return path


SPICE_MOLECULES = {
    # group name -> (SMILES as SPICE stores it: mapped, explicit H; atomic numbers)
    "103915149": ("[H:3][C:1]([H:4])([H:5])[O:2][H:6]", [6, 8, 1, 1, 1, 1]),
    "[NH3+]C": ("[H:3][C:1]([H:4])([H:5])[N+:2]([H:6])([H:7])[H:8]", [6, 7, 1, 1, 1, 1, 1, 1]),
    "[Na+].[Cl-]": ("[Na+:1].[Cl-:2]", [11, 17]),
}


@pytest.fixture
def spice_file(tmp_path):
    """SPICE downloader layout (dtypes and units attributes as downloader.py writes)."""
    path = tmp_path / "SPICE-2.0.1.hdf5"
    with h5py.File(path, "w") as f:
        for name, (smiles, numbers) in SPICE_MOLECULES.items():
            n, c = len(numbers), 3
            g = f.create_group(name)
            g.create_dataset("subset", data=["SPICE PubChem Set 1 Single Points Dataset v1.3"],
                             dtype=h5py.string_dtype())
            g.create_dataset("smiles", data=[smiles], dtype=h5py.string_dtype())
            g.create_dataset("atomic_numbers", data=numbers, dtype=np.int16)
            ds = g.create_dataset("conformations", data=_coords(c, n, scale=3.0),
                                  dtype=np.float32)
            ds.attrs["units"] = "bohr"
            ds = g.create_dataset("formation_energy", data=RNG.normal(size=c), dtype=np.float64)
            ds.attrs["units"] = "hartree"
            ds = g.create_dataset("dft_total_energy", data=-300 + RNG.normal(size=c),
                                  dtype=np.float64)
            ds.attrs["units"] = "hartree"
            ds = g.create_dataset("dft_total_gradient", data=RNG.normal(size=(c, n, 3)) * 0.02,
                                  dtype=np.float32)
            ds.attrs["units"] = "hartree/bohr"
            ds = g.create_dataset("mbis_charges", data=RNG.normal(size=(c, n, 1)) * 0.1,
                                  dtype=np.float32)
            ds.attrs["units"] = "elementary_charge"
    return path


@pytest.fixture
def qm7x_file(tmp_path):
    """QM7-X README layout: /IDMOL/IDCONF, one conformer per group, eV and Å."""
    path = tmp_path / "1000.hdf5"
    with h5py.File(path, "w") as f:
        for molecule, numbers in {"1": [6, 1, 1, 1, 1], "2": [7, 1, 1, 1]}.items():
            for conf in ("Geom-m1-i1-c1-opt", "Geom-m1-i1-c1-1", "Geom-m1-i1-c1-2"):
                g = f.create_group(f"{molecule}/{conf}")
                n = len(numbers)
                g["atNUM"] = np.array(numbers, dtype=np.int64)
                g["atXYZ"] = _coords(1, n)[0].astype(np.float64)
                for key in ("ePBE0+MBD", "ePBE0", "eDFTB+MBD", "eAT", "eMBD"):
                    g[key] = np.array([-1000.0 + RNG.normal()])
                for key in ("totFOR", "pbe0FOR", "vdwFOR"):
                    g[key] = RNG.normal(size=(n, 3))
                g["hCHG"] = RNG.normal(size=n)
    return path


def _t1x_group(g, numbers, c):
    n = len(numbers)
    g["positions"] = _coords(c, n)
    g["wB97x_6-31G(d).energy"] = -5000 + RNG.normal(size=c)
    g["wB97x_6-31G(d).atomization_energy"] = RNG.normal(size=c)
    g["wB97x_6-31G(d).forces"] = RNG.normal(size=(c, n, 3)) * 0.5


@pytest.fixture
def t1x_file(tmp_path):
    """Transition1x layout: /SPLIT/FORMULA/RXN with reactant, product, transition_state."""
    path = tmp_path / "Transition1x.h5"
    with h5py.File(path, "w") as f:
        for split, rxns in {"data": ["rxn0001"], "train": ["rxn0001", "rxn0002"],
                            "val": ["rxn0003"], "test": ["rxn0004"]}.items():
            for rxn in rxns:
                numbers = [6, 6, 8, 1, 1]
                g = f.create_group(f"{split}/C2H2O/{rxn}")
                g["atomic_numbers"] = np.array(numbers)
                _t1x_group(g, numbers, 4)
                for sub in ("reactant", "product", "transition_state"):
                    s = g.create_group(sub)
                    s["atomic_numbers"] = np.array(numbers)
                    _t1x_group(s, numbers, 1)
    return path


# ------------------------------------------------------------------ tests per format

def test_detect_picks_each_layout(ani1_file, ani1x_file, ani2x_file, spice_file, qm7x_file,
                                  t1x_file, tmp_path):
    found = {p.name: detect(p).name for p in
             (ani1_file, ani1x_file, ani2x_file, spice_file, qm7x_file, t1x_file)}
    assert found == {"ani_gdb_s01.h5": "ani1", "ani1x-release.h5": "ani1x",
                     "ANI-2x-wB97X-631Gd.h5": "ani2x", "SPICE-2.0.1.hdf5": "spice",
                     "1000.hdf5": "qm7x", "Transition1x.h5": "transition1x"}
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    text = tmp_path / "not.h5"
    text.write_text("hello")
    assert detect(other) is None and detect(text) is None


def test_ani1_species_bytes_hartree(ani1_file):
    samples = _read_all(get_format("ani1"), ani1_file)
    assert sorted(samples) == list(range(6))  # HE conformers are not read
    with h5py.File(ani1_file, "r") as f:
        raw = f["gdb11_s01/gdb11_s01-1"]
        s = samples[4]
        assert s.numbers.tolist() == [7, 1, 1, 1]
        np.testing.assert_allclose(s.positions, raw["coordinates"][1].astype(np.float64))
        assert s.energy == pytest.approx(raw["energies"][1] * HARTREE, rel=1e-14)
        assert s.forces is None and s.charge == 0 and s.spin == 1
    assert get_format("ani1").count(ani1_file, ReadOptions()) == 6
    assert hdf5.fidelity(ani1_file)["text"] == "ωB97x/6-31G(d) (Gaussian 09)"


def test_ani1x_levels_nan_masked_and_skipped(ani1x_file):
    fmt = get_format("ani1x")
    assert fmt.levels(ani1x_file) == ["ccsd(t)_cbs", "hf_dz", "wb97x_dz", "wb97x_tz"]
    samples = _read_all(fmt, ani1x_file)
    # conformer 1 of the first group has nothing at wb97x_dz: skipped, position kept
    assert sorted(samples) == [0, 2, 3, 4, 5, 6, 7]
    with h5py.File(ani1x_file, "r") as f:
        g = f["C1H4O1"]
        s = samples[0]
        np.testing.assert_allclose(s.positions, g["coordinates"][0].astype(np.float64))
        assert s.energy == pytest.approx(g["wb97x_dz.energy"][0] * HARTREE, rel=1e-14)
        np.testing.assert_allclose(s.forces, g["wb97x_dz.forces"][0].astype(np.float64)
                                   * HARTREE, rtol=1e-12)
        assert samples[3].forces is None and samples[3].energy is not None  # masked
        # a separate dataset per level: CCSD(T)/CBS has energies only, on its subset
        cc = _read_all(fmt, ani1x_file, ReadOptions(level="ccsd(t)_cbs"))
        assert sorted(cc) == [1, 3, 5, 7]
        assert all(s.forces is None for s in cc.values())
        h = f["C2H2"]
        assert cc[5].energy == pytest.approx(h["ccsd(t)_cbs.energy"][1] * HARTREE, rel=1e-14)
        assert cc[5].numbers.tolist() == ANI1X_N["C2H2"]
        tz = _read_all(fmt, ani1x_file, ReadOptions(level="wb97x_tz"))
        np.testing.assert_allclose(tz[6].forces, h["wb97x_tz.forces"][2].astype(np.float64)
                                   * HARTREE, rtol=1e-12)
    assert hdf5.fidelity(ani1x_file, "wb97x_tz")["text"] == "ωB97x/def2-TZVPP (ORCA)"
    assert hdf5.fidelity(ani1x_file, "ccsd(t)_cbs")["method"] == "CCSD(T)*"
    with pytest.raises(KeyError, match=r"levels in the file: ccsd\(t\)_cbs, hf_dz"):
        list(fmt.read(ani1x_file, ReadOptions(level="b3lyp"), 0, 1))


def test_ani1x_ranks_partition_the_file(ani1x_file, monkeypatch):
    monkeypatch.setattr(hdf5, "CHUNK", 1)  # several strided reads per group
    fmt = get_format("ani1x")
    one = _read_all(fmt, ani1x_file)
    for size in (2, 3):
        split = _read_all(fmt, ani1x_file, size=size)
        assert sorted(split) == sorted(one)
        for k in one:
            np.testing.assert_array_equal(split[k].positions, one[k].positions)
            assert split[k].energy == one[k].energy


def test_ani2x_species_per_conformer(ani2x_file):
    fmt = get_format("ani2x")
    samples = _read_all(fmt, ani2x_file, size=2)
    assert sorted(samples) == list(range(5))
    with h5py.File(ani2x_file, "r") as f:
        g = f["003"]
        assert samples[1].numbers.tolist() == [1, 6, 7]
        np.testing.assert_allclose(samples[1].forces,
                                   g["forces"][1].astype(np.float64) * HARTREE, rtol=1e-12)
        assert samples[1].energy == pytest.approx(g["energies"][1] * HARTREE, rel=1e-14)
    assert hdf5.fidelity(ani2x_file)["text"] == "ωB97X/6-31G(d) (Gaussian 09)"


def test_spice_bohr_gradient_and_charges(spice_file):
    fmt = get_format("spice")
    samples = _read_all(fmt, spice_file)
    assert sorted(samples) == list(range(9))
    with h5py.File(spice_file, "r") as f:
        g = f["[NH3+]C"]
        s = samples[4]
        np.testing.assert_allclose(s.positions, g["conformations"][1].astype(np.float64)
                                   * BOHR, rtol=1e-12)
        assert s.energy == pytest.approx(g["dft_total_energy"][1] * HARTREE, rel=1e-14)
        np.testing.assert_allclose(s.forces, -g["dft_total_gradient"][1].astype(np.float64)
                                   * HARTREE / BOHR, rtol=1e-12)
    assert [samples[k].charge for k in (0, 3, 6)] == [0, 1, 0]
    assert [samples[k].spin for k in (0, 3, 6)] == [1, 1, 1]
    formation = _read_all(fmt, spice_file,
                          ReadOptions(keys=LabelKeys(energy="formation_energy")))
    with h5py.File(spice_file, "r") as f:
        assert formation[7].energy == pytest.approx(
            f["[Na+].[Cl-]/formation_energy"][1] * HARTREE, rel=1e-14)
    assert hdf5.fidelity(spice_file)["text"] == "ωB97M-D3BJ/def2-TZVPPD (Psi4)"
    with pytest.raises(KeyError, match="one level of theory"):
        list(fmt.read(spice_file, ReadOptions(level="wb97x_dz"), 0, 1))


def test_spice_units_attribute_is_obeyed(spice_file):
    with h5py.File(spice_file, "r+") as f:
        for g in f.values():
            g["conformations"][...] = g["conformations"][()] * np.float32(BOHR)
            g["conformations"].attrs["units"] = "angstrom"
            g["dft_total_gradient"].attrs["units"] = "hartree/angstrom"
        raw = f["103915149/dft_total_gradient"][0].astype(np.float64)
        xyz = f["103915149/conformations"][0].astype(np.float64)
    s = next(iter(get_format("spice").read(spice_file, ReadOptions(), 0, 1)))[1]
    np.testing.assert_allclose(s.positions, xyz, rtol=1e-12)
    np.testing.assert_allclose(s.forces, -raw * HARTREE, rtol=1e-12)


def test_smiles_charge():
    assert hdf5.smiles_charge("[Ca+2:1].[Cl-:2].[Cl-:3]") == 0
    assert hdf5.smiles_charge("[O-:1][N+:2](=[O:3])[O-:4]") == -1
    assert hdf5.smiles_charge("C-C[Fe++]") == 2


def test_qm7x_levels(qm7x_file):
    fmt = get_format("qm7x")
    assert fmt.levels(qm7x_file) == ["pbe0+mbd", "pbe0", "dftb+mbd"]
    samples = _read_all(fmt, qm7x_file, size=4)
    assert sorted(samples) == list(range(6))
    with h5py.File(qm7x_file, "r") as f:
        # h5py lists a group's members by name (-1, -2, -opt), as the publishers see them
        g = f["2/Geom-m1-i1-c1-2"]
        s = samples[4]
        assert s.numbers.tolist() == [7, 1, 1, 1]
        np.testing.assert_array_equal(s.positions, g["atXYZ"][()])
        assert s.energy == g["ePBE0+MBD"][0]
        np.testing.assert_array_equal(s.forces, g["totFOR"][()])
        dftb = _read_all(fmt, qm7x_file, ReadOptions(level="dftb+mbd"))
        assert dftb[4].energy == g["eDFTB+MBD"][0] and dftb[4].forces is None
        pbe0 = _read_all(fmt, qm7x_file, ReadOptions(level="pbe0"))
        np.testing.assert_array_equal(pbe0[4].forces, g["pbe0FOR"][()])
    assert fmt.count(qm7x_file, ReadOptions()) == 6
    assert hdf5.fidelity(qm7x_file)["text"] == "PBE0+MBD (FHI-aims, tight)"


def test_transition1x_order_and_splits(t1x_file):
    fmt = get_format("transition1x")
    samples = _read_all(fmt, t1x_file, size=3)
    # train (2 reactions), val, test; per reaction reactant, product, 4 path images
    assert sorted(samples) == list(range(4 * 6))
    with h5py.File(t1x_file, "r") as f:
        r = f["val/C2H2O/rxn0003"]
        np.testing.assert_array_equal(samples[12].positions,
                                      r["reactant/positions"][0])
        np.testing.assert_array_equal(samples[13].positions, r["product/positions"][0])
        assert samples[14].energy == r["wB97x_6-31G(d).energy"][0]
        np.testing.assert_array_equal(samples[17].forces, r["wB97x_6-31G(d).forces"][3])
    assert samples[0].charge == 0 and samples[0].spin == 1
    assert hdf5.fidelity(t1x_file)["text"] == "ωB97x/6-31G(d) (ORCA)"


# ------------------------------------------------------------------ bad inputs

def test_truncated_file_names_the_file(ani1x_file, tmp_path):
    cut = tmp_path / "cut.h5"
    data = ani1x_file.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.h5"):
        list(get_format("ani1x").read(cut, ReadOptions(), 0, 1))
    assert detect(cut) is None


def test_damaged_bytes_give_a_value_error(ani1x_file, tmp_path):
    """Bytes overwritten inside the data (not at the end): still a message naming the
    file, never h5py's traceback."""
    with h5py.File(ani1x_file, "r") as f:
        offset = f["C2H2/coordinates"].id.get_offset()
    data = bytearray(ani1x_file.read_bytes())
    bad = tmp_path / "bad.h5"
    data[offset - 2048: offset - 1024] = b"\xff" * 1024  # object headers before the data
    bad.write_bytes(bytes(data))
    try:
        samples = list(get_format("ani1x").read(bad, ReadOptions(), 0, 1))
    except (ValueError, KeyError) as error:
        assert "bad.h5" in str(error)
    else:  # the damage missed everything read; then the values must be whole
        assert all(np.isfinite(s.positions).all() for _, s in samples)


def test_absent_key_lists_the_keys(spice_file, ani1x_file):
    with h5py.File(spice_file, "r+") as f:
        del f["103915149/dft_total_energy"]
    with pytest.raises(KeyError, match=r"SPICE-2.0.1.hdf5: group /103915149 has no "
                                        r"'dft_total_energy'; its keys: atomic_numbers, "
                                        r"conformations, dft_total_gradient"):
        list(get_format("spice").read(spice_file, ReadOptions(), 0, 1))
    with pytest.raises(KeyError, match=r"no 'wb97x_dz.grad'.*its keys:"):
        list(get_format("ani1x").read(
            ani1x_file, ReadOptions(keys=LabelKeys(forces="wb97x_dz.grad")), 0, 1))


def test_inspect(ani1x_file, spice_file):
    info = get_format("ani1x").inspect(ani1x_file)
    assert info["groups"] == 2 and info["conformers"] == 8
    assert not info["forces_from_gradient"]
    assert "wb97x_dz" in info["levels"] and "wb97x_dz.energy" in info["example_keys"]
    info = get_format("spice").inspect(spice_file)
    assert info["units"] == {"energy": "hartree", "length": "bohr", "forces_length": "bohr"}
    assert info["forces_from_gradient"] and info["conformers"] == 9


def test_qm7x_inspect_and_absent_key(qm7x_file):
    info = get_format("qm7x").inspect(qm7x_file)
    assert info["conformers"] == 6 and info["example_group"] == "/1/Geom-m1-i1-c1-1"
    with h5py.File(qm7x_file, "r+") as f:
        del f["2/Geom-m1-i1-c1-opt/totFOR"]
    with pytest.raises(KeyError, match=r"1000.hdf5: group /2/Geom-m1-i1-c1-opt has no "
                                        r"'totFOR'; its keys: atNUM, atXYZ"):
        list(get_format("qm7x").read(qm7x_file, ReadOptions(), 0, 1))
    # the rank that does not own that conformer never opens it
    assert len(list(get_format("qm7x").read(qm7x_file, ReadOptions(), 0, 6))) == 1


# ------------------------------------------------------------------ real ranks

def _mpiexec() -> list[str]:
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("mpi4py")
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        found = shutil.which("mpiexec")
        if found is None:
            pytest.skip(f"no mpiexec next to {sys.executable}")
        mpiexec = Path(found)
    version = subprocess.run([str(mpiexec), "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    if "HYDRA" in version:  # MPICH: start ranks by fork (no ssh; works in containers)
        return [str(mpiexec), "-launcher", "fork"]
    if "Open MPI" in version or "OpenRTE" in version:
        return [str(mpiexec), "--oversubscribe"]
    return [str(mpiexec)]


def test_two_ranks_under_mpiexec(ani1x_file, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "mpi" / "hdf5_check.py"
    cmd = _mpiexec() + ["-n", "2", sys.executable, str(script), str(ani1x_file), "ani1x"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                              cwd=tmp_path, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} hung (killed after 120 s): {exc.stdout}{exc.stderr}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ALL OK on 2 ranks" in output, output


def test_convert_takes_the_fidelity_the_file_states(ani1x_file, spice_file, tmp_path, capsys):
    """Without --fidelity, `convert` stores the level of theory the file (ANI's level
    names, SPICE's method) states; a user's --fidelity still wins."""
    from pygfm.cli.data import main
    from pygfm.data import open_dataset

    assert main(["convert", str(ani1x_file), "--dataset", "ani", "--level", "wb97x_tz",
                 "--level", "hf_dz", "--level", "ccsd(t)_cbs", "-o", str(tmp_path / "ani"),
                 "--quiet"]) == 0
    tz = open_dataset(tmp_path / "ani" / "ani-wb97x-tz")
    assert tz.fidelity == {"code": "ORCA", "code_version": None, "method": "ωB97x",
                           "basis": "def2-TZVPP", "text": "ωB97x/def2-TZVPP (ORCA)"}
    assert open_dataset(tmp_path / "ani" / "ani-hf-dz").fidelity["text"] == "HF/cc-pVDZ (ORCA)"
    assert open_dataset(tmp_path / "ani" / "ani-ccsd-t-cbs").fidelity["basis"] == "CBS"
    assert main(["convert", str(spice_file), "--dataset", "spice", "-o",
                 str(tmp_path / "spice"), "--quiet"]) == 0
    assert open_dataset(tmp_path / "spice").fidelity["method"] == "ωB97M-D3BJ"
    assert main(["convert", str(spice_file), "--dataset", "spice", "--fidelity", "mine",
                 "-o", str(tmp_path / "mine"), "--quiet"]) == 0
    assert open_dataset(tmp_path / "mine").fidelity["text"] == "mine"
    capsys.readouterr()
    # an extxyz states no level of theory: --fidelity stays required
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.io import write

    atoms = molecule("H2O")
    atoms.calc = EMT()
    atoms.get_potential_energy()
    write(tmp_path / "w.extxyz", atoms)
    assert main(["convert", str(tmp_path / "w.extxyz"), "--dataset", "w", "-o",
                 str(tmp_path / "w")]) == 2
    assert "the input does not state it" in capsys.readouterr().err

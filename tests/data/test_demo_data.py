"""The shipped demo collection (pygfm/data/demo) and its generator
(scripts/make_demo_data.py): files and metadata agree, the labels are what the named
codes compute for the shipped positions, the values are physically sensible, and the
generator is deterministic.

The files are read through an in-memory copy: ASE seeks backwards once per frame,
which on an .xz stream means decompressing again from the start (quadratic time).
"""

from __future__ import annotations

import os

# tblite and pyscf load their OpenMP runtimes on first use: one thread is plenty for
# a few small molecules, and spinning OpenMP threads crawl on a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib
import io
import json
import lzma
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

ase_io = pytest.importorskip("ase.io")
from ase import units

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "pygfm" / "data" / "demo"
SCRIPT = REPO / "scripts" / "make_demo_data.py"
NAMES = ("metals-emt", "molecules-xtb", "molecules-dft", "molecules-b3lyp")
MOLECULES = NAMES[1:]

# Exact non-relativistic total energies of the free atoms (Hartree), for a unit check of
# the all-electron DFT energies.
ATOM_ENERGY_HA = {"H": -0.5, "C": -37.8450, "N": -54.5892, "O": -75.0673, "F": -99.7339,
                  "S": -398.110, "Cl": -460.148}


def read_xz(path: Path) -> list:
    with lzma.open(path, "rt", encoding="utf-8") as fh:
        return ase_io.read(io.StringIO(fh.read()), ":", format="extxyz")


@cache
def load(name: str, folder: Path = DEMO):
    meta = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    return meta, read_xz(folder / f"{name}.extxyz.xz")


def pick(images, n: int, seed: int, where=lambda a: True) -> list:
    idx = [i for i, a in enumerate(images) if where(a)]
    return [images[i] for i in np.random.default_rng(seed).choice(idx, size=n, replace=False)]


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", NAMES)
def test_files_match_metadata(name):
    xz = DEMO / f"{name}.extxyz.xz"
    assert xz.is_file() and (DEMO / f"{name}.json").is_file()
    meta, images = load(name)
    assert meta["name"] == name
    assert meta["file"] == xz.name
    assert meta["file_bytes"] == xz.stat().st_size
    assert meta["file_sha256"] == hashlib.sha256(xz.read_bytes()).hexdigest()
    assert meta["quick"] is False
    assert meta["units"] == {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3"}
    fid = meta["fidelity"]
    assert set(fid) >= {"code", "code_version", "method", "basis", "text"}
    assert fid["code_version"] in fid["text"]
    assert isinstance(meta["seed"], int) and meta["generation_wall_time_s"] > 0
    assert "make_demo_data.py" in meta["generator_command"]

    assert len(images) == meta["num_structures"] > 0
    assert sum(len(a) for a in images) == meta["num_atoms"]
    symbols = {s for a in images for s in a.get_chemical_symbols()}
    assert symbols == set(meta["elements"])
    assert sum(meta["counts"].values()) == len(images)
    sizes = [len(a) for a in images]
    assert meta["atoms_per_structure"]["min"] == min(sizes)
    assert meta["atoms_per_structure"]["max"] == max(sizes)

    has_stress = "stress" in meta["labels"]
    assert set(meta["labels"]) == {"energy", "forces"} | ({"stress"} if has_stress else set())
    n_stress = 0
    for a in images:
        assert np.all(np.isfinite(a.positions))
        assert np.isfinite(a.get_potential_energy())
        f = a.get_forces()
        assert f.shape == (len(a), 3) and np.all(np.isfinite(f))
        stressed = "stress" in a.calc.results
        n_stress += stressed
        if has_stress:  # exactly the fully periodic structures carry a stress
            assert stressed == bool(a.pbc.all())
        else:
            assert not stressed
        if stressed:
            s = a.get_stress()
            assert s.shape == (6,) and np.all(np.isfinite(s))
    assert n_stress == meta["num_structures_with_stress"]


def test_collection_size_and_composition():
    total = sum((DEMO / f"{n}.extxyz.xz").stat().st_size for n in NAMES)
    assert total < 20e6
    counts = {n: load(n)[0]["num_structures"] for n in NAMES}
    # imbalanced on purpose: many cheap labels, few expensive ones
    assert counts["molecules-xtb"] > counts["metals-emt"] > counts["molecules-dft"] \
        > counts["molecules-b3lyp"] >= 100
    metals, _ = load("metals-emt")
    assert set(metals["elements"]) == {"Cu", "Ni", "Al", "Au", "Pd", "Ag", "Pt"}
    for name in MOLECULES:
        meta, images = load(name)
        assert set(meta["elements"]) <= {"H", "C", "N", "O", "F", "S", "Cl"}
        assert all(not a.pbc.any() for a in images)
    for name in ("molecules-dft", "molecules-b3lyp"):
        meta, images = load(name)
        assert 3 <= min(len(a) for a in images) and max(len(a) for a in images) <= 9
        assert meta["fidelity"]["basis"] == "def2-SVP"
    _, slabs = load("metals-emt")
    assert any(tuple(a.pbc) == (True, True, False) for a in slabs)


def test_plain_ase_read_of_the_shipped_file():
    """``ase.io.read(path, ":")`` on the file itself gives the same labels."""
    name = "molecules-b3lyp"  # the smallest file: ASE's .xz reading is quadratic
    direct = ase_io.read(DEMO / f"{name}.extxyz.xz", ":")
    _, images = load(name)
    assert len(direct) == len(images)
    for a, b in zip(direct, images):
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())
        np.testing.assert_array_equal(a.positions, b.positions)


# ----------------------------------------------------------------------------- labels are real


def test_emt_labels_recompute():
    from ase.calculators.emt import EMT

    _, images = load("metals-emt")
    chosen = (pick(images, 4, 1, lambda a: a.pbc.all())
              + pick(images, 2, 2, lambda a: not a.pbc.all()))
    for ref in chosen:
        atoms = ref.copy()
        atoms.calc = EMT()
        e = atoms.get_potential_energy()
        assert abs(e - ref.get_potential_energy()) <= 1e-6 * max(1.0, abs(e))
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=0, atol=1e-5)
        if ref.pbc.all():
            np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), rtol=0, atol=1e-7)


def _xtb_calc(meta):
    tblite_ase = pytest.importorskip("tblite.ase")
    s = meta["settings"]["xtb"]
    return tblite_ase.TBLite(method=s["method"], accuracy=s["accuracy"],
                             electronic_temperature=s["electronic_temperature_K"],
                             max_iterations=s["max_iterations"], charge=s["charge"],
                             multiplicity=s["multiplicity"], verbosity=0, cache_api=False)


def test_xtb_labels_recompute():
    meta, images = load("molecules-xtb")
    assert meta["fidelity"]["method"] == "GFN2-xTB"
    for ref in pick(images, 5, 3):
        atoms = ref.copy()
        atoms.calc = _xtb_calc(meta)
        e = atoms.get_potential_energy()
        assert abs(e - ref.get_potential_energy()) <= 1e-6 * abs(e)
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=0, atol=1e-5)


def _pyscf_energy_forces(atoms, settings):
    gto = pytest.importorskip("pyscf.gto")
    from pyscf import dft, lib

    lib.num_threads(1)
    symbols = atoms.get_chemical_symbols()
    mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(symbols, atoms.positions)],
                unit="Angstrom", basis=settings["basis"], charge=0, spin=0, verbose=0)
    mf = dft.RKS(mol)
    mf.xc = settings["xc"]
    mf.grids.level = settings["grid_level"]
    mf.conv_tol = settings["conv_tol_hartree"]
    if settings["density_fit"]:
        mf = mf.density_fit(auxbasis=settings["auxbasis"])
    e = mf.kernel()
    assert mf.converged
    g = mf.nuc_grad_method().kernel()
    return e * units.Hartree, -g * units.Hartree / units.Bohr


@pytest.mark.slow
def test_dft_label_recomputes():
    """The cheapest (3-atom, fewest electrons) molecules-dft structure, from scratch."""
    meta, images = load("molecules-dft")
    settings = meta["settings"]["dft"]
    assert settings["xc"] == "PBE" and meta["fidelity"]["basis"] == "def2-SVP"
    ref = min((a for a in images if len(a) == 3), key=lambda a: (a.numbers.sum(), a.info["draw"]))
    e, f = _pyscf_energy_forces(ref, settings)
    assert abs(e - ref.get_potential_energy()) <= 1e-6
    # the shipped labels restarted from the previous frame's density: converged to 1e-9 Ha
    np.testing.assert_allclose(f, ref.get_forces(), rtol=0, atol=1e-4)

    # forces are -dE/dx in eV/Å: a central difference of the energy along them
    step = 2e-3 * ref.get_forces() / np.linalg.norm(ref.get_forces())
    plus, minus = ref.copy(), ref.copy()
    plus.positions += step
    minus.positions -= step
    de = _pyscf_energy_forces(plus, settings)[0] - _pyscf_energy_forces(minus, settings)[0]
    expected = -2.0 * np.sum(ref.get_forces() * step)
    assert expected < 0
    assert de == pytest.approx(expected, rel=2e-2)


# ----------------------------------------------------------------------------- physics


def test_molecular_energies_and_forces_plausible():
    _, images = load("molecules-xtb")
    per_atom = np.array([a.get_potential_energy() / len(a) for a in images])
    # GFN2-xTB (valence-only) energies: about -14 eV/atom (H2) to -130 eV/atom (HCl-like)
    assert per_atom.min() > -200 and per_atom.max() < -5
    for name in ("molecules-dft", "molecules-b3lyp"):
        _, dft = load(name)
        # all-electron energies sit near the sum of free-atom energies (a Hartree or Bohr
        # slip would be off by a factor of ~27 or ~2)
        excess = np.array([
            (a.get_potential_energy()
             - units.Hartree * sum(ATOM_ENERGY_HA[s] for s in a.get_chemical_symbols())) / len(a)
            for a in dft
        ])
        assert excess.min() > -8.0 and excess.max() < 8.0, name
    for name in MOLECULES:
        _, mols = load(name)
        fmax = max(np.abs(a.get_forces()).max() for a in mols)
        assert 0.5 < fmax <= 20.0, name
        # no net force on an isolated molecule (grid-based DFT: almost)
        net = max(np.abs(a.get_forces().sum(axis=0)).max() for a in mols)
        assert net < (1e-3 if name == "molecules-xtb" else 5e-2), name


def test_xtb_forces_are_minus_energy_gradient():
    meta, images = load("molecules-xtb")
    ref = pick(images, 1, 4, lambda a: 4 <= len(a) <= 10)[0]
    f = ref.get_forces()
    step = 1e-3 * f / np.linalg.norm(f)
    energies = []
    for sign in (1, -1):
        atoms = ref.copy()
        atoms.positions += sign * step
        atoms.calc = _xtb_calc(meta)
        energies.append(atoms.get_potential_energy())
    assert energies[0] - energies[1] == pytest.approx(-2.0 * np.sum(f * step), rel=1e-3)


def test_metals_physics():
    from ase.build import bulk
    from ase.calculators.emt import EMT

    meta, images = load("metals-emt")
    forces = np.concatenate([a.get_forces() for a in images])
    assert np.abs(forces).max() < 40.0
    per_atom = np.array([a.get_potential_energy() / len(a) for a in images])
    assert per_atom.min() > -1.0 and per_atom.max() < 5.0  # EMT: 0 = fcc at equilibrium

    # the shipped Cu fcc equation of state: zero forces, minimum at EMT's equilibrium,
    # stress from compressive (negative) to tensile (positive) through ~0
    eos = sorted((a for a in images if a.info.get("config_type") == "bulk_eos_fcc"
                  and set(a.get_chemical_symbols()) == {"Cu"}),
                 key=lambda a: a.info["lattice_scale"])
    assert len(eos) >= 5
    scales = np.array([a.info["lattice_scale"] for a in eos])
    e = np.array([a.get_potential_energy() / len(a) for a in eos])
    sxx = np.array([a.get_stress()[0] for a in eos])
    assert max(np.abs(a.get_forces()).max() for a in eos) < 1e-5  # positions: 8 decimals
    assert scales[np.argmin(e)] == pytest.approx(1.0)
    assert np.all(np.diff(sxx) > 0) and sxx[0] < 0 < sxx[-1]
    assert abs(sxx[np.argmin(np.abs(scales - 1.0))]) < 1e-4

    a0 = meta["settings"]["emt_fcc_lattice_constants_A"]["Cu"]
    cu = bulk("Cu", "fcc", a=a0, cubic=True).repeat(2)
    cu.calc = EMT()
    assert np.abs(cu.get_forces()).max() < 1e-8
    assert np.abs(cu.get_stress()).max() < 1e-5
    cu.positions[0] += (0.05, 0.0, 0.0)  # pulled back towards its site
    assert cu.get_forces()[0, 0] < 0


# ----------------------------------------------------------------------------- generator


@pytest.mark.slow
def test_generator_quick_is_deterministic(tmp_path):
    # two runs side by side, one in-process and one with two worker processes: the
    # same bytes are expected
    procs = [
        subprocess.Popen([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / d),
                          "--workers", str(w)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for d, w in (("a", 1), ("b", 2))
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    for name in NAMES:
        meta_a, a = load(name, tmp_path / "a")
        meta_b, b = load(name, tmp_path / "b")
        assert meta_a["quick"] is True and meta_a["num_structures"] == len(a) > 0
        assert {s for x in a for s in x.get_chemical_symbols()} == set(meta_a["elements"])
        assert [x.get_potential_energy() for x in a] == [x.get_potential_energy() for x in b]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.positions, y.positions)
            np.testing.assert_array_equal(x.get_forces(), y.get_forces())
        assert meta_a["file_sha256"] == meta_b["file_sha256"]
    # atomic writes: no temporary files left behind
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]

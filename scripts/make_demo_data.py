#!/usr/bin/env python3
"""Regenerate pygfm's multi-fidelity demo collection (``pygfm/data/demo/``).

Four small datasets with labels from real codes, deliberately of different size
and fidelity, for multi-head (one head per dataset) training and fine-tuning demos:

==================  ======  ==================================================
name                size    labels
==================  ======  ==================================================
``metals-emt``       3000   ASE EMT: energy, forces, stress (periodic only)
``molecules-xtb``    4000   GFN2-xTB (tblite): energy, forces
``molecules-dft``     300   PBE/def2-SVP (pyscf): energy, forces
``molecules-b3lyp``   150   B3LYP/def2-SVP (pyscf): energy, forces
==================  ======  ==================================================

Each dataset is written as ``<out>/<name>.extxyz.xz`` (ASE extended XYZ, xz
compressed; the labels are a SinglePointCalculator, so ``ase.io.read(path, ":")``
gives atoms whose ``get_potential_energy()``, ``get_forces()`` and, where labelled,
``get_stress()`` return them) plus ``<out>/<name>.json`` with the metadata. Units:
eV, eV/Å, eV/Å^3; stress in ASE's convention (Voigt order xx yy zz yz xz xy, as
``Atoms.get_stress()``).

Determinism: structure/draw ``i`` of dataset number ``k`` is drawn from
``numpy.random.default_rng([seed, k, i, attempt])``, so a dataset does not depend on
which others are generated in the same run (``--only``) nor on ``--workers``; a failed
draw (MD or SCF failure, broken bond, |force| > 20 eV/Å) is dropped and re-drawn with
the next ``attempt``. Every calculation is single-threaded (parallelism comes from
worker processes), which makes EMT, GFN2-xTB and pyscf labels bit-reproducible.
Positions are rounded to the 8 decimals the extxyz writer keeps *before* they are
labelled, so the shipped positions reproduce the shipped labels.

Usage::

    python scripts/make_demo_data.py                        # all four, ~20-30 min on 2 cores
    python scripts/make_demo_data.py --only metals-emt      # one of them (repeatable)
    python scripts/make_demo_data.py --quick --out /tmp/d   # a few structures each, seconds

Files are written atomically (a temporary file in the same folder, then
``os.replace``), each ``.json`` after its ``.extxyz.xz``.
"""

from __future__ import annotations

import os

# One thread per process, set before numpy/tblite/pyscf load their OpenMP/BLAS runtimes:
# small molecules gain little from threads, OpenMP sums are not bit-reproducible, and
# spinning OpenMP threads slow to a crawl on a shared machine. --workers gives parallelism.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import hashlib
import io
import json
import lzma
import math
import multiprocessing
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "pygfm" / "data" / "demo"
DEFAULT_SEED = 20240
DATASETS = ("metals-emt", "molecules-xtb", "molecules-dft", "molecules-b3lyp")
STREAM = {name: k for k, name in enumerate(DATASETS, start=1)}  # 2nd entry of every seed

UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3"}
METALS = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")
ORGANIC = ("H", "C", "N", "O", "F", "S", "Cl")
MAX_MOLECULE_ATOMS = 22  # leaves out the big s22 complexes (24-30 atoms): xTB MD cost
FMAX_LIMIT = 20.0  # eV/Å: a draw with a larger force component is re-drawn
MAX_ATTEMPTS = 20

# Sizes: full run, and --quick (seconds; used by the tests).
SIZES = {
    "metals-emt": {"full": {"n": 3000}, "quick": {"n": 12}},
    "molecules-xtb": {"full": {"n": 4000, "frames_per_draw": 8, "equil": 20, "stride": 10},
                      "quick": {"n": 8, "frames_per_draw": 4, "equil": 4, "stride": 4}},
    "molecules-dft": {"full": {"n": 300, "frames_per_draw": 3, "equil": 20, "stride": 10},
                      "quick": {"n": 2, "frames_per_draw": 2, "equil": 4, "stride": 4}},
    "molecules-b3lyp": {"full": {"n": 150, "frames_per_draw": 3, "equil": 20, "stride": 10},
                        "quick": {"n": 2, "frames_per_draw": 2, "equil": 4, "stride": 4}},
}

# GFN2-xTB (tblite's ASE calculator defaults, written out).
XTB_SETTINGS = {
    "method": "GFN2-xTB",
    "accuracy": 1.0,
    "electronic_temperature_K": 300.0,
    "max_iterations": 250,
    "charge": 0,
    "multiplicity": 1,
}
# Conformer sampling for all molecular sets: rattle, then Langevin MD on GFN2-xTB.
MD_SETTINGS = {
    "engine": "GFN2-xTB (tblite), ase.md.langevin.Langevin, FixCom",
    "rattle_sigma_A": 0.05,
    "temperature_K": [100.0, 1000.0],
    "timestep_fs": 0.5,
    "friction_per_fs": 0.02,
    "frame_0": "the rattled reference geometry (no MD)",
    "validation": "bonds of the reference (d < 1.2 x sum of covalent radii) stay < 1.5 x, other "
                  "pairs stay > 1.0 x; SCF converged; max |force| <= 20 eV/Å",
}
# pyscf DFT (both DFT sets; xc differs).
DFT_SETTINGS = {
    "basis": "def2-SVP",
    "reference": "RKS (closed-shell species only)",
    "density_fit": True,
    "auxbasis": "def2-universal-jkfit",
    "grid_level": 2,
    "conv_tol_hartree": 1e-9,
    "max_cycle": 100,
    "init_guess": "minao for a draw's first frame, the previous frame's density after",
    "charge": 0,
    "spin": 0,
    "threads": 1,
}


# ----------------------------------------------------------------------------- helpers


def rng_for(seed: int, name: str, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, STREAM[name], *key]))


def snap(x) -> np.ndarray:
    """Round to the 8 decimals ``%16.8f`` keeps, exactly as the extxyz file stores them."""
    x = np.asarray(x, dtype=float)
    return np.char.mod("%.8f", x).astype(float).reshape(x.shape)


def progress(**kw):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(file=sys.stderr, mininterval=5.0, dynamic_ncols=True, **kw)


def parallel_map(fn, tasks, workers: int, chunksize: int = 1):
    """``map(fn, tasks)`` in order, in ``workers`` spawned processes when workers > 1."""
    if workers <= 1:
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork after OpenMP has started
    with ctx.Pool(workers) as pool:
        yield from pool.imap(fn, tasks, chunksize)


def record(numbers, positions, *, energy, forces, cell=None, pbc=False, stress=None, info=None):
    """A labelled structure as plain data (cheap to send between processes)."""
    return {"numbers": np.asarray(numbers), "positions": np.asarray(positions, float),
            "cell": None if cell is None else np.asarray(cell, float), "pbc": pbc,
            "energy": float(energy), "forces": np.asarray(forces, float),
            "stress": None if stress is None else np.asarray(stress, float),
            "info": dict(info or {})}


def to_atoms(rec):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=rec["numbers"], positions=rec["positions"], cell=rec["cell"],
                  pbc=rec["pbc"])
    atoms.info.update(rec["info"])
    results = {"energy": rec["energy"], "forces": rec["forces"]}
    if rec["stress"] is not None:
        results["stress"] = rec["stress"]
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def extxyz_xz_bytes(images) -> bytes:
    import ase.io

    buf = io.StringIO()
    ase.io.write(buf, images, format="extxyz")
    return lzma.compress(buf.getvalue().encode("utf-8"), format=lzma.FORMAT_XZ, preset=9)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("ase", "numpy", "scipy", "tblite", "pyscf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------- metals (EMT)


def emt_fcc_lattice_constants() -> dict:
    """EMT's own fcc equilibrium lattice constant of each metal (Å)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers, reference_states
    from scipy.optimize import minimize_scalar

    out = {}
    for el in METALS:
        a_ref = reference_states[atomic_numbers[el]]["a"]

        def energy(a, el=el):
            atoms = bulk(el, "fcc", a=a)
            atoms.calc = EMT()
            return atoms.get_potential_energy()

        res = minimize_scalar(energy, bounds=(0.9 * a_ref, 1.1 * a_ref), method="bounded",
                              options={"xatol": 1e-7})
        out[el] = float(res.x)
    return out


def lattice_cell(lattice: str, a_fcc: float, primitive: bool = False):
    """fcc/bcc/hcp cell with the volume per atom of fcc with lattice constant ``a_fcc``."""
    from ase.build import bulk

    if lattice == "fcc":
        return bulk("Cu", "fcc", a=a_fcc, cubic=not primitive)
    if lattice == "bcc":  # a_bcc^3 / 2 = a_fcc^3 / 4
        return bulk("Cu", "bcc", a=a_fcc / 2 ** (1 / 3), cubic=not primitive)
    a_hcp = a_fcc / math.sqrt(2.0)  # ideal c/a
    return bulk("Cu", "hcp", a=a_hcp, c=a_hcp * math.sqrt(8 / 3), orthorhombic=not primitive)


def _composition(rng, n_sites: int, alloy: bool) -> list:
    if not alloy:
        return [str(rng.choice(METALS))] * n_sites
    k = int(rng.integers(2, 5))
    elements = list(rng.choice(METALS, size=k, replace=False))
    frac = rng.dirichlet(np.ones(k))
    return [str(s) for s in rng.choice(elements, size=n_sites, p=frac)]


def _strain(rng):
    mode = str(rng.choice(["none", "iso", "random"], p=[0.2, 0.4, 0.4]))
    if mode == "iso":
        return np.eye(3) * (1.0 + rng.uniform(-0.05, 0.05)), mode
    if mode == "random":  # symmetric: normal strains and shears up to ±5 %
        eps = rng.uniform(-0.05, 0.05, size=(3, 3))
        return np.eye(3) + 0.5 * (eps + eps.T), mode
    return np.eye(3), mode


def metal_random_structure(rng, a0: dict):
    """One random metal structure: (unlabelled atoms, config_type, fully periodic)."""
    from ase.build import fcc100, fcc110, fcc111

    kind = str(rng.choice(["bulk_pure", "bulk_alloy", "bulk_vacancy", "surface"],
                          p=[0.25, 0.40, 0.15, 0.20]))
    if kind == "surface":
        facet = str(rng.choice(["111", "100", "110"], p=[0.45, 0.35, 0.20]))
        nx, ny = (int(v) for v in rng.integers(2, 5, size=2))
        layers = int(rng.integers(3, 7))
        n = nx * ny * layers
        symbols = _composition(rng, n, alloy=bool(rng.random() < 0.5))
        a = float(np.mean([a0[s] for s in symbols]))
        build = {"111": fcc111, "100": fcc100, "110": fcc110}[facet]
        atoms = build("Cu", size=(nx, ny, layers), a=a, vacuum=7.0)  # pbc (T, T, F)
        atoms.set_chemical_symbols(symbols)
        atoms.positions += rng.normal(0.0, rng.uniform(0.02, 0.10), size=(n, 3))
        return atoms, f"surface_fcc{facet}", False

    lattice = str(rng.choice(["fcc", "bcc", "hcp"], p=[0.6, 0.2, 0.2]))
    primitive = bool(rng.random() < 0.08)
    n_cell = len(lattice_cell(lattice, 1.0, primitive))
    while True:
        if primitive:
            reps = rng.integers(1, 5, size=3)
        elif lattice == "bcc":
            reps = rng.choice([1, 2, 3, 4], size=3, p=[0.1, 0.3, 0.4, 0.2])
        else:
            reps = rng.choice([1, 2, 3], size=3, p=[0.2, 0.45, 0.35])
        n = n_cell * int(np.prod(reps))
        if n <= 108 and (kind != "bulk_vacancy" or n >= 12):
            break
    alloy = kind == "bulk_alloy" or (kind == "bulk_vacancy" and bool(rng.random() < 0.5))
    symbols = _composition(rng, n, alloy=alloy)
    a = float(np.mean([a0[s] for s in symbols]))  # Vegard's law on the actual composition
    atoms = lattice_cell(lattice, a, primitive).repeat(tuple(int(r) for r in reps))
    atoms.set_chemical_symbols(symbols)
    if kind == "bulk_vacancy":
        nvac = int(rng.integers(1, 4))
        del atoms[sorted(rng.choice(n, size=nvac, replace=False).tolist())]
    F, mode = _strain(rng)
    atoms.set_cell(atoms.cell.array @ F, scale_atoms=True)
    atoms.positions += rng.normal(0.0, rng.uniform(0.02, 0.15), size=atoms.positions.shape)
    return atoms, f"{kind}_{lattice}_strain-{mode}", True


def emt_label(atoms, periodic: bool, info: dict):
    from ase.calculators.emt import EMT

    atoms = atoms.copy()
    atoms.positions = snap(atoms.positions)
    atoms.calc = EMT()  # a fresh calculator: the labels depend on this structure only
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    s = atoms.get_stress(voigt=True) if periodic else None
    return record(atoms.numbers, atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc.copy(),
                  energy=e, forces=f, stress=s, info=info)


def _metal_task(task):
    seed, i, a0 = task
    atoms, config_type, periodic = metal_random_structure(rng_for(seed, "metals-emt", i), a0)
    return emt_label(atoms, periodic, {"config_type": config_type})


def make_metals(seed: int, quick: bool, workers: int) -> dict:
    name = "metals-emt"
    n_total = SIZES[name]["quick" if quick else "full"]["n"]
    a0 = emt_fcc_lattice_constants()
    records = []
    # 1) equations of state: perfect pure lattices around EMT's equilibrium (zero forces).
    for el in ("Cu",) if quick else METALS:
        for lat in ("fcc",) if quick else ("fcc", "bcc", "hcp"):
            for s in np.linspace(-0.04, 0.04, 3 if quick else 9):
                atoms = lattice_cell(lat, a0[el] * (1.0 + s))
                atoms.set_chemical_symbols([el] * len(atoms))
                records.append(emt_label(atoms, True, {"config_type": f"bulk_eos_{lat}",
                                                       "lattice_scale": round(1.0 + float(s), 6)}))
    # 2) random structures.
    tasks = [(seed, i, a0) for i in range(n_total - len(records))]
    bar = progress(total=len(tasks), desc=name, unit="struct")
    for rec in parallel_map(_metal_task, tasks, workers, chunksize=16):
        records.append(rec)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    ase_v = versions()["ase"]
    return {
        "records": records,
        "description": (
            "Cu/Ni/Al/Au/Pd/Ag/Pt: fcc/bcc/hcp bulk of pure metals and random substitutional "
            "alloys (1-108 atoms), isotropic or random strain with shear up to ±5 %, rattled "
            "0.02-0.15 Å, vacancies; perfect-lattice equations of state around EMT's "
            "equilibrium; rattled fcc(111)/(100)/(110) slabs with vacuum (pbc T,T,F; no "
            "stress). Labelled with ASE's EMT."
        ),
        "fidelity": {"code": "ase", "code_version": ase_v,
                     "method": "EMT (effective medium theory; ASE's implementation and parameters)",
                     "basis": None, "text": f"EMT (ase {ase_v})"},
        "labels": ["energy", "forces", "stress"],
        "settings": {"emt_fcc_lattice_constants_A": {k: round(v, 6) for k, v in a0.items()},
                     "stress_labelled_for": "fully periodic structures (pbc T,T,T) only"},
        "stats": {},
    }


# ----------------------------------------------------------------------------- molecules


def molecule_catalog(max_atoms: int = MAX_MOLECULE_ATOMS, min_atoms: int = 2) -> list:
    """Closed-shell neutral molecules of H,C,N,O,F,S,Cl: [(source, Atoms)], fixed order."""
    from ase.build import molecule
    from ase.collections import g2, s22

    cands = [(f"g2:{n}", g2[n]) for n in g2.names]
    cands += [(f"ase.build:{n}", molecule(n)) for n in ("C7NH5", "biphenyl", "BDA")]
    cands += [(f"s22:{n}", s22[n]) for n in s22.names]
    out = []
    for src, atoms in cands:
        if not set(atoms.get_chemical_symbols()) <= set(ORGANIC):
            continue
        if not min_atoms <= len(atoms) <= max_atoms:
            continue
        magmom = abs(float(atoms.get_initial_magnetic_moments().sum()))
        if int(atoms.numbers.sum()) % 2 or magmom > 1e-6:
            continue  # open shell (radicals, triplets): left out of every molecular set
        out.append((src, atoms))
    return out


def xtb_calculator():
    from tblite.ase import TBLite

    s = XTB_SETTINGS
    return TBLite(method=s["method"], accuracy=s["accuracy"],
                  electronic_temperature=s["electronic_temperature_K"],
                  max_iterations=s["max_iterations"], charge=s["charge"],
                  multiplicity=s["multiplicity"], verbosity=0,
                  cache_api=False)  # no restart from the previous structure's wavefunction


def xtb_single_point(numbers, positions):
    """GFN2-xTB energy (eV) and forces (eV/Å) of a molecule; None if the SCF fails."""
    from ase import Atoms
    from ase.calculators.calculator import CalculationFailed

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = xtb_calculator()
    try:
        return atoms.get_potential_energy(), atoms.get_forces()
    except CalculationFailed:
        return None


def pyscf_single_point(numbers, positions, xc: str, settings=None, dm0=None):
    """pyscf energy (eV), forces (eV/Å) and density matrix; None if the SCF fails."""
    from ase import units
    from ase.data import chemical_symbols
    from pyscf import dft, gto, lib

    s = DFT_SETTINGS if settings is None else settings
    lib.num_threads(s["threads"])
    mol = gto.M(atom=[(chemical_symbols[int(z)], tuple(float(c) for c in p))
                      for z, p in zip(numbers, positions)],
                unit="Angstrom", basis=s["basis"], charge=s["charge"], spin=s["spin"], verbose=0)
    mf = dft.RKS(mol)
    mf.xc = xc
    mf.grids.level = s["grid_level"]
    mf.conv_tol = s["conv_tol_hartree"]
    mf.max_cycle = s["max_cycle"]
    if s["density_fit"]:
        mf = mf.density_fit(auxbasis=s["auxbasis"])
    e = mf.kernel(dm0=dm0)
    if not mf.converged or not np.isfinite(e):
        return None
    grad = mf.nuc_grad_method().kernel()  # dE/dR in Hartree/Bohr
    energy = float(e) * units.Hartree
    forces = -np.asarray(grad) * (units.Hartree / units.Bohr)
    return energy, forces, mf.make_rdm1()


def is_physical(numbers, ref_positions, positions) -> bool:
    """Same covalent bonds as the reference geometry and no new close contacts."""
    from ase.data import covalent_radii

    r = covalent_radii[numbers]
    rsum = r[:, None] + r[None, :]
    d_ref = np.linalg.norm(ref_positions[:, None] - ref_positions[None], axis=-1)
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    off = ~np.eye(len(numbers), dtype=bool)
    bonded = (d_ref < 1.2 * rsum) & off
    if np.any(d[bonded] > 1.5 * rsum[bonded]):
        return False  # a bond broke
    if np.any(d[~bonded & off] < 1.0 * rsum[~bonded & off]):
        return False  # atoms that were not bonded came too close
    return bool(np.all(np.isfinite(positions)))


def sample_conformers(numbers, ref_positions, rng, n_frames: int, equil: int, stride: int):
    """Rattled start plus frames of a short Langevin MD on GFN2-xTB (snapped positions).

    Returns ``(list of positions, temperature)``, or None when the MD breaks down.
    """
    from ase import Atoms, units
    from ase.calculators.calculator import CalculationFailed
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    try:  # ase >= 3.29
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # pragma: no cover
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        def thermalize_momenta(atoms, temperature_K, rng=None):
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

    md = MD_SETTINGS
    pos = ref_positions - ref_positions.mean(0)
    pos = snap(pos + rng.normal(0.0, md["rattle_sigma_A"], pos.shape))
    atoms = Atoms(numbers=numbers, positions=pos)
    temperature = float(rng.uniform(*md["temperature_K"]))
    frames = [atoms.positions.copy()]
    if n_frames == 1:
        return frames, temperature
    atoms.calc = xtb_calculator()
    thermalize_momenta(atoms, temperature, rng=rng)
    Stationary(atoms)
    if len(atoms) > 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, timestep=md["timestep_fs"] * units.fs, temperature_K=temperature,
                   friction=md["friction_per_fs"] / units.fs, rng=rng, fixcm=False)
    try:
        dyn.run(equil)
        frames.append(snap(atoms.positions))
        for _ in range(n_frames - 2):
            dyn.run(stride)
            frames.append(snap(atoms.positions))
    except CalculationFailed:
        return None
    return frames, temperature


def label_frames(numbers, frames, labeller):
    """[(energy, forces)] for the frames of one draw, or None if any calculation fails."""
    out, dm = [], None
    for pos in frames:
        if labeller[0] == "xtb":
            res = xtb_single_point(numbers, pos)
        else:  # ("pyscf", xc): restart from the previous frame's density
            res = pyscf_single_point(numbers, pos, labeller[1], dm0=dm)
            if res is not None:
                dm = res[2]
                res = res[:2]
        if res is None:
            return None
        out.append(res)
    return out


def _molecule_draw_task(task):
    """One draw (species, conformers, labels), re-drawn until it passes every check."""
    name, seed, j, src, numbers, ref_positions, n_frames, equil, stride, labeller = task
    rejected = 0
    for attempt in range(MAX_ATTEMPTS):
        rng = rng_for(seed, name, j, attempt)
        sampled = sample_conformers(numbers, ref_positions, rng, n_frames, equil, stride)
        if sampled is not None and all(is_physical(numbers, ref_positions, p) for p in sampled[0]):
            frames, temperature = sampled
            labels = label_frames(numbers, frames, labeller)
            if labels is not None and all(
                np.isfinite(e) and np.all(np.isfinite(f)) and np.abs(f).max() <= FMAX_LIMIT
                for e, f in labels
            ):
                return [
                    record(numbers, pos, energy=e, forces=f, info={
                        "source": src, "draw": j, "frame": t, "attempt": attempt,
                        "md_temperature_K": round(temperature, 3)})
                    for t, (pos, (e, f)) in enumerate(zip(frames, labels))
                ], rejected
        rejected += 1
    print(f"warning: {name}: gave up on draw {j} ({src}) after {MAX_ATTEMPTS} attempts",
          file=sys.stderr)
    return [], rejected


def draw_molecules(name: str, seed: int, quick: bool, workers: int, species: list, labeller,
                   order: str):
    cfg = SIZES[name]["quick" if quick else "full"]
    n_target, fpd = cfg["n"], cfg["frames_per_draw"]
    n_species = len(species)
    tasks = []
    for j in range(math.ceil(n_target / fpd)):
        if order == "round-robin":
            k = j % n_species
        else:  # a fresh random permutation of the species for every pass over them
            perm = rng_for(seed, name, 10**6 + j // n_species).permutation(n_species)
            k = int(perm[j % n_species])
        src, ref = species[k]
        tasks.append((name, seed, j, src, ref.numbers.copy(), ref.positions.copy(),
                      min(fpd, n_target - j * fpd), cfg["equil"], cfg["stride"], labeller))
    records, rejected = [], 0
    bar = progress(total=n_target, desc=name, unit="struct")
    for recs, rej in parallel_map(_molecule_draw_task, tasks, workers):
        records.extend(recs)
        rejected += rej
        if bar is not None:
            bar.update(len(recs))
    if bar is not None:
        bar.close()
    sampling = {**MD_SETTINGS, "frames_per_draw": fpd, "equilibration_steps": cfg["equil"],
                "stride_steps": cfg["stride"], "species_order": order,
                "species": [s for s, _ in species]}
    return records, rejected, sampling


def make_xtb(seed: int, quick: bool, workers: int) -> dict:
    name = "molecules-xtb"
    species = molecule_catalog()
    if quick:
        species = [s for s in species if len(s[1]) <= 5][:2]
    records, rejected, sampling = draw_molecules(name, seed, quick, workers, species,
                                                 ("xtb",), "round-robin")
    v = versions().get("tblite", "?")
    return {
        "records": records,
        "description": (
            f"Conformers of {len(species)} closed-shell neutral molecules (H,C,N,O,F,S,Cl; 2-"
            f"{MAX_MOLECULE_ATOMS} atoms) from ase.collections.g2, ase.build.molecule and "
            "ase.collections.s22: rattled reference geometries and frames of short Langevin MD "
            "(100-1000 K) on GFN2-xTB, labelled with GFN2-xTB."
        ),
        "fidelity": {"code": "tblite", "code_version": v, "method": "GFN2-xTB", "basis": None,
                     "text": f"GFN2-xTB (tblite {v})"},
        "labels": ["energy", "forces"],
        "settings": {"xtb": XTB_SETTINGS, "sampling": sampling},
        "stats": {"rejected_draws": rejected},
    }


def make_dft(seed: int, quick: bool, workers: int, name: str, xc: str) -> dict:
    species = molecule_catalog(max_atoms=9, min_atoms=3)
    if quick:  # the cheapest species only: seconds
        species = [s for s in species if s[0] == "g2:H2O"]
    records, rejected, sampling = draw_molecules(name, seed, quick, workers, species,
                                                 ("pyscf", xc), "shuffled")
    v = versions().get("pyscf", "?")
    s = DFT_SETTINGS
    method = (f"{xc}, RKS, density fitting (RI-J{'K' if xc.upper() == 'B3LYP' else ''}, "
              f"{s['auxbasis']}), pyscf grid level {s['grid_level']}")
    if xc.upper() == "B3LYP":
        method += "; pyscf's B3LYP = VWN-RPA (VWN3) local correlation, as in Gaussian"
    return {
        "records": records,
        "description": (
            f"Conformers of {len(species)} closed-shell neutral molecules with 3-9 atoms "
            "(H,C,N,O,F,S,Cl; g2 and s22), sampled like molecules-xtb but from their own seed "
            f"(rattle + short GFN2-xTB Langevin MD), labelled with {xc}/def2-SVP in pyscf."
        ),
        "fidelity": {"code": "pyscf", "code_version": v, "method": method, "basis": "def2-SVP",
                     "text": f"{xc}/def2-SVP (pyscf {v}, density fitting)"},
        "labels": ["energy", "forces"],
        "settings": {"dft": {**s, "xc": xc}, "xtb_for_sampling": XTB_SETTINGS,
                     "sampling": sampling},
        "stats": {"rejected_draws": rejected},
    }


# ----------------------------------------------------------------------------- driver

BUILDERS = {
    "metals-emt": make_metals,
    "molecules-xtb": make_xtb,
    "molecules-dft": lambda seed, quick, workers: make_dft(seed, quick, workers,
                                                           "molecules-dft", "PBE"),
    "molecules-b3lyp": lambda seed, quick, workers: make_dft(seed, quick, workers,
                                                             "molecules-b3lyp", "B3LYP"),
}


def generate(name: str, out: Path, seed: int, quick: bool, workers: int) -> dict:
    from ase.data import chemical_symbols

    t0 = time.perf_counter()
    res = BUILDERS[name](seed, quick, workers)
    images = [to_atoms(r) for r in res["records"]]
    wall = time.perf_counter() - t0
    data = extxyz_xz_bytes(images)
    xz_path = out / f"{name}.extxyz.xz"
    atomic_write(xz_path, data)

    numbers = np.concatenate([a.numbers for a in images])
    sizes = np.array([len(a) for a in images])
    counts: dict = {}
    for a in images:
        key = a.info.get("config_type") or a.info.get("source")
        counts[key] = counts.get(key, 0) + 1
    cmd = f"python scripts/make_demo_data.py --only {name} --seed {seed}"
    cmd += " --quick" if quick else ""
    meta = {
        "name": name,
        "description": res["description"],
        "fidelity": res["fidelity"],
        "units": dict(UNITS),
        "labels": res["labels"],
        "num_structures": len(images),
        "num_structures_with_stress": sum(r["stress"] is not None for r in res["records"]),
        "num_atoms": int(sizes.sum()),
        "atoms_per_structure": {"min": int(sizes.min()), "max": int(sizes.max()),
                                "mean": round(float(sizes.mean()), 2)},
        "elements": [chemical_symbols[z] for z in sorted(set(numbers.tolist()))],
        "counts": dict(sorted(counts.items())),
        "seed": seed,
        "seed_scheme": f"numpy.random.default_rng([seed, {STREAM[name]}, index, attempt])",
        "quick": quick,
        "generation_wall_time_s": round(wall, 1),
        "generation_workers": workers,
        "generator_command": cmd,
        "file": xz_path.name,
        "file_bytes": len(data),
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "settings": res["settings"],
        "stats": res["stats"],
        "software": versions(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    atomic_write(out / f"{name}.json",
                 (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"{name}: {len(images)} structures, {int(sizes.sum())} atoms, "
          f"{len(data) / 1e6:.2f} MB, {wall:.1f} s", flush=True)
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="output folder (default: pygfm/data/demo in this checkout)")
    p.add_argument("--only", action="append", choices=DATASETS, metavar="NAME",
                   help=f"generate only this dataset; repeatable ({', '.join(DATASETS)})")
    p.add_argument("--quick", action="store_true", help="a few structures per dataset (tests)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="base seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes, one thread each; the output does not depend on it "
                        "(default: %(default)s)")
    args = p.parse_args(argv)

    names = [n for n in DATASETS if not args.only or n in args.only]
    t0 = time.perf_counter()
    summary = [generate(n, args.out, args.seed, args.quick, args.workers) for n in names]
    print(f"\n{'dataset':<18}{'structs':>8}{'atoms':>9}{'MB':>7}{'s':>8}")
    for m in summary:
        print(f"{m['name']:<18}{m['num_structures']:>8}{m['num_atoms']:>9}"
              f"{m['file_bytes'] / 1e6:>7.2f}{m['generation_wall_time_s']:>8.1f}")
    print(f"total {time.perf_counter() - t0:.1f} s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

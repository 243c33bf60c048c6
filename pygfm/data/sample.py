"""One labelled structure (:class:`Sample`) and how labels are taken from ASE.

Units everywhere: positions and cell in Å, energy in eV, forces in eV/Å, stress in
eV/Å³ as a [3, 3] tensor with ASE's sign (positive in tension). A missing label is
``None``; a label that is present must be finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LABELS", "Sample", "labels_from_ase", "stress_from_virial", "MAX_ATOMIC_NUMBER"]

LABELS = ("energy", "forces", "stress")
MAX_ATOMIC_NUMBER = 118

# Where labels are looked for when a structure has no calculator results, in order.
ENERGY_KEYS = ("energy", "REF_energy", "total_energy", "Energy")
FORCES_KEYS = ("forces", "REF_forces", "force")
STRESS_KEYS = ("stress", "REF_stress")
VIRIAL_KEYS = ("virial", "REF_virial")
# Total charge and spin multiplicity (2S+1) in atoms.info: fairchem's OMol25
# ASE-LMDB/extxyz files use "charge" and "spin" (the multiplicity); "multiplicity"
# is accepted as a clearer spelling of the same number.
CHARGE_KEYS = ("charge", "total_charge")
SPIN_KEYS = ("spin", "multiplicity", "spin_multiplicity")


def _where(name: str | None, index: int | None) -> str:
    parts = [p for p in (name, None if index is None else f"sample {index}") if p]
    return ", ".join(parts) or "structure"


def _stress_tensor(value, where: str) -> np.ndarray:
    """ASE's Voigt [6] (xx, yy, zz, yz, xz, xy) or a [3, 3] tensor -> [3, 3]."""
    stress = np.asarray(value, dtype=np.float64)
    if stress.shape == (6,):
        xx, yy, zz, yz, xz, xy = stress
        stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    elif stress.shape == (9,):
        stress = stress.reshape(3, 3)
    if stress.shape != (3, 3):
        raise ValueError(f"{where}: stress has shape {tuple(np.shape(value))}; "
                         "expected [6] (Voigt) or [3, 3]")
    return stress


def labels_from_ase(atoms, *, energy_key: str | None = None, forces_key: str | None = None,
                    stress_key: str | None = None, where: str = "structure",
                    missing: str = "raise") -> dict:
    """Energy, forces and stress of an ``ase.Atoms`` (each None when absent).

    Taken from the attached calculator's results first, then from ``atoms.info`` /
    ``atoms.arrays`` under the usual names (``energy``, ``REF_energy``, ...; a
    ``virial`` V becomes stress -V / volume). An explicit ``*_key`` is looked up
    in info/arrays only; the labels without one still come from the calculator
    first (ase.io puts an extxyz's ``forces`` column there). A stress key naming a
    virial (``virial``, ``REF_virial``: eV) is converted to stress -V / volume, ASE's
    sign. ``missing="raise"``: an explicit key absent from this structure is a
    KeyError naming the keys there; ``"mask"``: that label is None, and so is a
    label holding NaN (partial labels in a converted file: the caller checks that
    the key exists somewhere).
    """
    if missing not in ("raise", "mask"):
        raise ValueError(f"missing: {missing!r} is not 'raise' or 'mask'")
    results: dict[str, Any] = {}
    calc = getattr(atoms, "calc", None)
    if calc is not None:
        results = dict(getattr(calc, "results", {}) or {})

    def lookup(explicit, names, store, label):
        if explicit is not None:
            if explicit not in store and missing == "mask":
                return None
            if explicit not in store:
                raise KeyError(f"{where}: no {label} under the key {explicit!r} "
                               f"(available: {sorted(store)})")
            return store[explicit]
        for name in names:
            if name in store:
                return store[name]
        return None

    # an explicit key overrides the calculator for its label only
    energy = None if energy_key is not None else results.get("energy",
                                                             results.get("free_energy"))
    if energy is None:
        energy = lookup(energy_key, ENERGY_KEYS, atoms.info, "energy")
    forces = None if forces_key is not None else results.get("forces")
    if forces is None:
        forces = lookup(forces_key, FORCES_KEYS, atoms.arrays, "forces")
    stress = None if stress_key is not None else results.get("stress")
    virial = None
    if stress_key is not None and "virial" in stress_key.lower():
        virial = lookup(stress_key, (), atoms.info, "virial")
    elif stress is None:
        stress = lookup(stress_key, STRESS_KEYS, atoms.info, "stress")
    if stress is None and stress_key is None:
        virial = lookup(None, VIRIAL_KEYS, atoms.info, "virial")
    if virial is not None:
        volume = abs(np.linalg.det(atoms.get_cell().array))
        if volume <= 0:
            raise ValueError(f"{where}: a virial is given but the cell has no volume")
        stress = -_stress_tensor(virial, where) / volume
    if missing == "mask":  # NaN marks a missing value in many files: mask it, never store it
        energy, forces, stress = (None if value is None or not np.isfinite(
            np.asarray(value, dtype=np.float64)).all() else value
            for value in (energy, forces, stress))
    return {
        "energy": None if energy is None else float(np.asarray(energy).reshape(())),
        "forces": None if forces is None else np.asarray(forces, dtype=np.float64),
        "stress": None if stress is None else _stress_tensor(stress, where),
    }


def stress_from_virial(atoms, stress_key: str | None = None) -> bool:
    """Whether :func:`labels_from_ase` takes this structure's stress from a virial
    (an energy, so that a file in other units rescales it as energy / length³, not
    as a stress)."""
    if stress_key is not None:
        return "virial" in stress_key.lower()
    calc = getattr(atoms, "calc", None)
    if calc is not None and (getattr(calc, "results", None) or {}).get("stress") is not None:
        return False
    if any(key in atoms.info for key in STRESS_KEYS):
        return False
    return any(key in atoms.info for key in VIRIAL_KEYS)


@dataclass
class Sample:
    """A structure and its labels, as numpy arrays.

    numbers [n] int64; positions [n, 3] Å; cell [3, 3] Å (rows are cell vectors,
    zeros for a molecule); pbc [3] bool; energy eV or None; forces [n, 3] eV/Å or
    None; stress [3, 3] eV/Å³ or None. ``dataset`` names the dataset it came from
    and ``index`` is its position there (both optional). ``charge`` (total, in
    elementary charges) and ``spin`` (the spin multiplicity 2S+1, as OMol25 and
    fairchem's ASE-LMDB files store it) are None where unknown.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    dataset: str | None = None
    index: int | None = None
    charge: float | None = None
    spin: float | None = None

    def __post_init__(self):
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.cell = np.asarray(self.cell, dtype=np.float64)
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.stress is not None:
            self.stress = _stress_tensor(self.stress, self.where)
        if self.energy is not None:
            self.energy = float(self.energy)
        for name in ("charge", "spin"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, float(np.asarray(value, dtype=np.float64).reshape(())))
        self.validate()

    @property
    def where(self) -> str:
        return _where(self.dataset, self.index)

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels this sample has, in LABELS order."""
        return tuple(name for name in LABELS if getattr(self, name) is not None)

    def validate(self) -> None:
        """Raise ValueError, naming the sample, on anything a model could not use."""
        where, n = self.where, self.num_atoms
        if n == 0:
            raise ValueError(f"{where}: the structure has no atoms")
        if self.positions.shape != (n, 3):
            raise ValueError(f"{where}: positions have shape {self.positions.shape}; "
                             f"expected [{n}, 3] for {n} atoms")
        if self.cell.shape != (3, 3):
            raise ValueError(f"{where}: cell has shape {self.cell.shape}; expected [3, 3]")
        bad = (self.numbers < 1) | (self.numbers > MAX_ATOMIC_NUMBER)
        if bad.any():
            atom = int(np.argmax(bad))
            raise ValueError(f"{where}: atom {atom} has atomic number {int(self.numbers[atom])}, "
                             f"not an element (1..{MAX_ATOMIC_NUMBER})")
        for name, value in (("positions", self.positions), ("cell", self.cell)):
            if not np.isfinite(value).all():
                raise ValueError(f"{where}: {name} contain NaN or inf")
        if self.energy is not None and not np.isfinite(self.energy):
            raise ValueError(f"{where}: energy is {self.energy}")
        if self.forces is not None:
            if self.forces.shape != (n, 3):
                raise ValueError(f"{where}: forces have shape {self.forces.shape}; "
                                 f"expected [{n}, 3] for {n} atoms")
            if not np.isfinite(self.forces).all():
                raise ValueError(f"{where}: forces contain NaN or inf")
        if self.stress is not None and not np.isfinite(self.stress).all():
            raise ValueError(f"{where}: stress contains NaN or inf")
        for name in ("charge", "spin"):
            if getattr(self, name) is not None and not np.isfinite(getattr(self, name)):
                raise ValueError(f"{where}: {name} is {getattr(self, name)}")
        if self.pbc.any():
            periodic = self.cell[self.pbc]
            if np.linalg.matrix_rank(periodic) < periodic.shape[0]:
                raise ValueError(f"{where}: the cell vectors of the periodic directions "
                                 f"{np.flatnonzero(self.pbc).tolist()} are degenerate")

    def check_overlap(self) -> None:
        """Raise ValueError, naming the sample and the atom pair, when two atoms
        (periodic images included) are closer than
        :data:`~pygfm.data.overlap.MIN_DISTANCE`. Writers call it once per sample
        (up to ~1 ms for a 100-atom periodic cell); reading a sample back does not
        repeat it, and the model refuses such a batch anyway."""
        from .overlap import describe_pair, sample_overlap
        pair = sample_overlap(self.positions, self.cell, self.pbc)
        if pair is not None:
            raise ValueError(f"{self.where}: {describe_pair(*pair)}")

    @classmethod
    def from_ase(cls, atoms, *, dataset: str | None = None, index: int | None = None,
                 labels: bool = True, energy_key: str | None = None,
                 forces_key: str | None = None, stress_key: str | None = None,
                 missing: str = "raise") -> "Sample":
        """A Sample from an ``ase.Atoms`` with its labels (see :func:`labels_from_ase`;
        ``missing``: what an explicit key absent here does). ``charge`` and ``spin``
        come from ``atoms.info`` (:data:`CHARGE_KEYS`, :data:`SPIN_KEYS`; spin is the
        multiplicity 2S+1, fairchem's convention), None where absent or NaN."""
        where = _where(dataset, index)
        if not hasattr(atoms, "get_positions"):
            raise TypeError(f"{where} is a {type(atoms).__name__}, not an ase.Atoms")
        found = (labels_from_ase(atoms, energy_key=energy_key, forces_key=forces_key,
                                 stress_key=stress_key, where=where, missing=missing)
                 if labels else {})
        for name, keys in (("charge", CHARGE_KEYS), ("spin", SPIN_KEYS)):
            value = next((atoms.info[key] for key in keys if key in atoms.info), None)
            if value is not None and np.isfinite(np.asarray(value, dtype=np.float64)).all():
                found[name] = value
        return cls(numbers=atoms.get_atomic_numbers(), positions=atoms.get_positions(),
                   cell=atoms.get_cell().array, pbc=atoms.get_pbc(), dataset=dataset,
                   index=index, **found)

    def to_ase(self):
        """``ase.Atoms`` with the labels attached as a SinglePointCalculator (stress
        in ASE's Voigt order); ``info`` carries ``dataset``, ``index``, ``charge`` and
        ``spin``."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell,
                      pbc=self.pbc)
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces.copy()
        if self.stress is not None:
            s = self.stress
            results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        if self.dataset is not None:
            atoms.info["dataset"] = self.dataset
        if self.index is not None:
            atoms.info["index"] = self.index
        if self.charge is not None:
            atoms.info["charge"] = self.charge
        if self.spin is not None:
            atoms.info["spin"] = self.spin
        return atoms

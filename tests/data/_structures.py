"""Random labelled structures for the data-layer tests (a plain module, no fixtures).

* :func:`random_atoms`: a molecule (no cell), a bulk crystal (triclinic, pbc TTT) or
  a slab (pbc TTF, with a vacuum or a zero third cell vector); atoms on a jittered
  grid so that no two overlap.
* :func:`emt_label`: real EMT labels (ase.calculators.emt) for a chosen subset of
  energy / forces / stress, attached as a SinglePointCalculator as ase.io would.
* :func:`mixed_structures`: a list mixing the kinds and label subsets.
* :func:`assert_same_sample`: bitwise equality of two :class:`pygfm.data.Sample`.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

# elements EMT knows
EMT_ELEMENTS = (1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79)
KINDS = ("molecule", "bulk", "slab")
SPACING = 2.3


def _grid_points(rng, n: int) -> tuple[np.ndarray, int]:
    """n distinct points of an m^3 grid (integer coordinates) and m."""
    m = int(np.ceil(n ** (1 / 3)))
    chosen = rng.choice(m ** 3, size=n, replace=False)
    return np.stack(np.unravel_index(chosen, (m, m, m)), axis=1).astype(float), m


def random_atoms(rng: np.random.Generator, kind: str, max_atoms: int = 8,
                 elements=EMT_ELEMENTS) -> Atoms:
    n = int(rng.integers(1, max_atoms + 1))
    numbers = rng.choice(elements, size=n)
    points, m = _grid_points(rng, n)
    jitter = rng.uniform(-0.1, 0.1, size=(n, 3))
    if kind == "molecule":
        return Atoms(numbers=numbers, positions=points * SPACING + jitter)
    length = m * SPACING
    if kind == "bulk":
        cell = np.diag([length] * 3) + rng.uniform(-0.3, 0.3, size=(3, 3)) * (1 - np.eye(3))
        fractional = (points + 0.5) / m
        return Atoms(numbers=numbers, positions=fractional @ cell + jitter, cell=cell, pbc=True)
    if kind == "slab":
        cell = np.diag([length, length, length + 8.0])
        cell[1, 0] = rng.uniform(-0.5, 0.5)
        if rng.random() < 0.5:
            cell[2] = 0.0  # no third vector at all: allowed, the direction is not periodic
        positions = (points + 0.5) * SPACING + jitter
        return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=(True, True, False))
    raise ValueError(kind)


def emt_label(atoms: Atoms, which=("energy", "forces", "stress")) -> Atoms:
    """Attach the EMT labels named in ``which`` (and only those) to ``atoms``."""
    atoms.calc = EMT()
    results = {}
    if "energy" in which:
        results["energy"] = atoms.get_potential_energy()
    if "forces" in which:
        results["forces"] = atoms.get_forces()
    if "stress" in which:
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return atoms


# label subsets cycled over: everything, energy only, forces only, nothing, energy+forces
LABEL_SETS = (("energy", "forces", "stress"), ("energy",), ("forces",), (),
              ("energy", "forces"))


def mixed_structures(n: int, seed: int, max_atoms: int = 8) -> list[Atoms]:
    """n structures of every kind with EMT labels of every subset (stress only for
    bulk crystals: it needs a volume)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        atoms = random_atoms(rng, kind, max_atoms)
        which = LABEL_SETS[k % len(LABEL_SETS)]
        if kind != "bulk":
            which = tuple(label for label in which if label != "stress")
        out.append(emt_label(atoms, which))
    return out


def assert_same_sample(got, expected, *, index=None, dataset=None) -> None:
    """Every array bitwise equal (values and shapes), labels present in both or neither."""
    assert got.numbers.dtype == np.int64
    np.testing.assert_array_equal(got.numbers, expected.numbers)
    for name in ("positions", "cell"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == np.float64 and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name
    np.testing.assert_array_equal(got.pbc, expected.pbc)
    assert got.labels == expected.labels
    if expected.energy is not None:
        assert got.energy == expected.energy  # exact
    for name in ("forces", "stress"):
        b = getattr(expected, name)
        if b is not None:
            a = getattr(got, name)
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), name
    if index is not None:
        assert got.index == index
    if dataset is not None:
        assert got.dataset == dataset

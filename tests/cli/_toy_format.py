"""A test-only registry Format (``toy-levels``) for the convert plumbing, so that the
CLI is tested without depending on the real readers.

A toy file is a first line ``PYGFM-TOY`` and then one JSON object: ``structures``
(each ``numbers`` and ``positions`` in bohr, optional ``charge``/``spin``) and
``levels``: ``{level: {"energy": [hartree or null per structure], "gradient":
[hartree/bohr per structure or null]}}``, the way an HDF5 dataset holds several
levels of theory side by side. A structure with no value at the level read is
skipped (its position is not yielded), as the ANI-1x reader does.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from pygfm.data import Sample
from pygfm.data.formats import FORMATS, Format, Units, register

MAGIC = "PYGFM-TOY"
NAME = "toy-levels"
HARTREE, BOHR = 27.211386245988, 0.529177210903  # CODATA 2018, as ase.units


def write_toy(path: Path, structures: list, levels: dict) -> Path:
    path.write_text(MAGIC + "\n" + json.dumps({"structures": structures, "levels": levels}))
    return path


def _load(path: Path) -> dict:
    text = Path(path).read_text()
    if not text.startswith(MAGIC + "\n"):
        raise ValueError(f"{path}: not a toy file")
    return json.loads(text[len(MAGIC) + 1:])


def _sniff(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC.encode()


def _inspect(path: Path) -> dict:
    content = _load(path)
    return {"structures": len(content["structures"]),
            "keys": {level: sorted(values) for level, values in content["levels"].items()},
            "units": {"energy": "hartree", "length": "bohr"}}


def _read(path: Path, options, rank: int, size: int):
    content = _load(path)
    levels = content["levels"]
    level = options.level or next(iter(levels))
    if level not in levels:
        raise KeyError(f"{path}: no level {level!r}; levels: {sorted(levels)}")
    units = options.units or Units(energy="hartree", length="bohr")
    energy_key = options.keys.energy or "energy"
    for k, structure in enumerate(content["structures"]):
        if k % size != rank:
            continue
        energy = levels[level][energy_key][k]
        gradient = levels[level].get("gradient", [None] * (k + 1))[k]
        if energy is None and gradient is None:
            continue  # nothing at this level: skipped, its position kept (as ANI-1x's reader)
        yield k, Sample(
            numbers=structure["numbers"],
            positions=np.asarray(structure["positions"]) * units.length_factor,
            energy=None if energy is None else energy * units.energy_factor,
            forces=None if gradient is None else -np.asarray(gradient) * units.forces_factor,
            charge=structure.get("charge"), spin=structure.get("spin"))


TOY = Format(name=NAME, description="test-only toy file with levels of theory",
             suffixes=(".toy",), sniff=_sniff, inspect=_inspect, read=_read,
             levels=lambda path: list(_load(path)["levels"]),
             count=lambda path, options: len(_load(path)["structures"]))


@contextlib.contextmanager
def toy_format():
    """The toy format registered for the duration of a test (unregistered after)."""
    register(TOY)
    try:
        yield TOY
    finally:
        FORMATS.pop(NAME, None)


def toy_structures(n: int, seed: int = 0) -> list:
    """Water-like molecules (bohr) with a charge and spin on some."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        positions = np.array([[0.0, 0.0, 0.0], [1.8, 0.0, 0.0], [-0.45, 1.75, 0.0]])
        structure = {"numbers": [8, 1, 1],
                     "positions": (positions + 0.05 * rng.normal(size=(3, 3))).tolist()}
        if k % 2 == 0:
            structure["charge"], structure["spin"] = float(k % 3 - 1), 1.0 + k % 2 * 2
        out.append(structure)
    return out

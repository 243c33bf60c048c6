"""Screening inputs: where candidate structures come from.

Every input is cut into numbered chunks of ``chunk`` structures; chunk k holds
structures k*chunk .. (k+1)*chunk - 1 and can be produced on its own, so ranks
take disjoint chunks without talking to each other and a resumed run skips the
chunks it finished. Specs:

* ``random:N[,seed=S][,min_atoms=2][,max_atoms=500][,box=10][,elements=H.C.N.O]``:
  the SC26 benchmark generator as HydraGNN defines it: N structures, each with
  a number of atoms uniform in [min_atoms, max_atoms], atomic numbers uniform
  in 1..94 (or over ``elements``), positions uniform in a ``box`` Å cube, not
  periodic. Chunk k depends only on (seed, chunk size, k), not on N: structure
  j is the same in every run with the same seed and chunk size (a resumed run
  must keep its chunk size; the driver checks).
* ``substitutions:TEMPLATE:EL1.EL2...[,sites=SYMBOL]``: every decoration of
  the template cell's sites (all sites, or those holding SYMBOL) by the given
  elements: len(elements)^sites structures, enumerated lazily in a fixed
  order (structure k writes k in base len(elements), one digit per site).
  TEMPLATE is a file ase.io reads, or ``bulk-SYMBOL-CRYSTAL-A[-REPEAT]`` (e.g.
  ``bulk-Cu-fcc-3.6-2`` : ase.build.bulk(Cu, fcc, a=3.6, cubic) repeated 2x2x2).
* a pygfm dataset directory (random access), or
* any file ``ase.io`` reads (read once, in order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ScreenInput", "open_input", "InputError", "SC26_CUTOFF", "SC26_MAX_NEIGHBORS"]

SC26_CUTOFF = 5.0
SC26_MAX_NEIGHBORS = 20
MAX_STRUCTURES = 2**62  # an input's structures are numbered in int64


class InputError(ValueError):
    """A malformed spec or an unreadable input; the message names it."""


@dataclass
class Structures:
    """Structures of one chunk as arrays: numbers [N], positions [N, 3] (Å),
    counts [B], cell [B, 3, 3], pbc [B, 3], ids [B] (global structure numbers)."""

    numbers: np.ndarray
    positions: np.ndarray
    counts: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.counts)


def _options(spec: str, text: str, allowed: dict) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        if "=" not in item:
            raise InputError(f"{spec}: option {item!r} is not key=value")
        key, value = item.split("=", 1)
        if key not in allowed:
            raise InputError(f"{spec}: unknown option {key!r}; known: {', '.join(allowed)}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise InputError(f"{spec}: option {key}={value!r} is not valid") from None
    return out


def _elements(spec: str, text: str) -> np.ndarray:
    from ase.data import atomic_numbers

    symbols = [s for s in text.replace(",", ".").split(".") if s]
    if not symbols:
        raise InputError(f"{spec}: no elements given")
    unknown = [s for s in symbols if s not in atomic_numbers or s == "X"]
    if unknown:
        raise InputError(f"{spec}: unknown element {unknown[0]!r}")
    return np.array([atomic_numbers[s] for s in symbols], dtype=np.int64)


class ScreenInput:
    """Base: ``len(self)`` structures (or None when unknown), ``chunk(k)``."""

    max_neighbors: int | None = None

    def __init__(self, spec: str, chunk_size: int):
        self.spec, self.chunk_size = spec, int(chunk_size)

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def num_chunks(self) -> int:
        return max(1, math.ceil(len(self) / self.chunk_size)) if len(self) else 0

    def chunk(self, k: int) -> Structures:
        raise NotImplementedError


class RandomInput(ScreenInput):
    max_neighbors = SC26_MAX_NEIGHBORS

    def __init__(self, spec: str, chunk_size: int):
        super().__init__(spec, chunk_size)
        head, _, rest = spec[len("random:"):].partition(",")
        try:
            value = float(head)
            self.count = int(value)
        except (ValueError, OverflowError):  # not a number, nan, inf
            raise InputError(f"{spec}: expected random:N (a number of structures), "
                             f"got {head!r}") from None
        if self.count != value:
            raise InputError(f"{spec}: N must be a whole number, got {head!r}")
        if self.count < 1:
            raise InputError(f"{spec}: N must be >= 1")
        if self.count > MAX_STRUCTURES:  # structure ids and counts are int64
            raise InputError(f"{spec}: N = {head} is more than 2^62 structures, the most "
                             "pygfm-screen can number")
        options = _options(spec, rest, {"seed": int, "min_atoms": int, "max_atoms": int,
                                        "box": float, "elements": str})
        self.seed = options.get("seed", 0)
        self.min_atoms = options.get("min_atoms", 2)
        self.max_atoms = options.get("max_atoms", 500)
        self.box = options.get("box", 10.0)
        if not 1 <= self.min_atoms <= self.max_atoms:
            raise InputError(f"{spec}: need 1 <= min_atoms <= max_atoms")
        if not 0 < self.box < math.inf:
            raise InputError(f"{spec}: box must be > 0 (and finite)")
        if self.seed < 0:
            raise InputError(f"{spec}: seed must be >= 0")
        self.elements = _elements(spec, options["elements"]) if "elements" in options \
            else np.arange(1, 95, dtype=np.int64)

    def __len__(self) -> int:
        return self.count

    def chunk(self, k: int) -> Structures:
        start = k * self.chunk_size
        stop = min(start + self.chunk_size, self.count)
        # one stream per quantity: the B structures of a last, short chunk are
        # then the first B of the full chunk (random:10 starts like random:1000)
        counts = np.random.default_rng([self.seed, k, 0]).integers(
            self.min_atoms, self.max_atoms + 1, stop - start)
        total = int(counts.sum())
        numbers = self.elements[np.random.default_rng([self.seed, k, 1]).integers(
            0, len(self.elements), total)]
        positions = np.random.default_rng([self.seed, k, 2]).uniform(0.0, self.box, (total, 3))
        B = stop - start
        return Structures(numbers, positions, counts, np.zeros((B, 3, 3)),
                          np.zeros((B, 3), dtype=bool), np.arange(start, stop))


def _template(spec: str, text: str):
    atoms = _read_template(spec, text)
    if not len(atoms):
        raise InputError(f"{spec}: template {text!r} has no atoms")
    return atoms


def _read_template(spec: str, text: str):
    import ase.io
    from ase.build import bulk

    if text.startswith("bulk-"):
        parts = text.split("-")
        if len(parts) not in (4, 5):
            raise InputError(f"{spec}: template {text!r} is not bulk-SYMBOL-CRYSTAL-A[-REPEAT]")
        try:
            atoms = bulk(parts[1], parts[2], a=float(parts[3]), cubic=True)
            if len(parts) == 5:
                atoms = atoms.repeat(int(parts[4]))
        except Exception as error:  # noqa: BLE001 - ase raises several kinds
            raise InputError(f"{spec}: cannot build template {text!r}: {error}") from None
        return atoms
    path = Path(text)
    if not path.is_file():
        raise InputError(f"{spec}: template {text} is not a file (nor bulk-...)")
    try:
        return ase.io.read(path, parallel=False)  # every rank reads (no MPI broadcast)
    except Exception as error:  # noqa: BLE001
        raise InputError(f"{spec}: cannot read template {path}: {error}") from None


class SubstitutionInput(ScreenInput):
    def __init__(self, spec: str, chunk_size: int):
        super().__init__(spec, chunk_size)
        body = spec[len("substitutions:"):]
        template, sep, rest = body.partition(":")
        if not sep:
            raise InputError(f"{spec}: expected substitutions:TEMPLATE:EL1.EL2[,sites=X]")
        elements, _, options = rest.partition(",")
        self.template = _template(spec, template)
        self.choices = _elements(spec, elements)
        options = _options(spec, options, {"sites": str})
        symbols = np.array(self.template.get_chemical_symbols())
        if "sites" in options:
            self.sites = np.flatnonzero(symbols == options["sites"])
            if not len(self.sites):
                raise InputError(f"{spec}: the template has no {options['sites']!r} sites")
        else:
            self.sites = np.arange(len(symbols))
        self.count = len(self.choices) ** len(self.sites)
        if self.count > MAX_STRUCTURES:
            raise InputError(f"{spec}: {len(self.choices)}^{len(self.sites)} decorations are "
                             "too many to number")

    def __len__(self) -> int:
        return int(self.count)

    def chunk(self, k: int) -> Structures:
        start = k * self.chunk_size
        stop = min(start + self.chunk_size, self.count)
        ids = np.arange(start, stop, dtype=np.int64)
        base = len(self.choices)
        digits = np.empty((len(ids), len(self.sites)), dtype=np.int64)
        rest = ids.copy()
        for s in range(len(self.sites)):
            digits[:, s] = rest % base
            rest //= base
        n = len(self.template)
        numbers = np.tile(self.template.numbers, (len(ids), 1))
        numbers[:, self.sites] = self.choices[digits]
        B = len(ids)
        return Structures(numbers.reshape(-1), np.tile(self.template.positions, (B, 1)),
                          np.full(B, n), np.tile(np.asarray(self.template.cell)[None], (B, 1, 1)),
                          np.tile(self.template.pbc[None], (B, 1)), ids)


class DatasetInput(ScreenInput):
    def __init__(self, spec: str, chunk_size: int):
        super().__init__(spec, chunk_size)
        from ..data import DatasetError, open_dataset
        try:
            self.dataset = open_dataset(spec)
        except (DatasetError, FileNotFoundError, ValueError) as error:
            raise InputError(f"{spec}: {error}") from None

    def __len__(self) -> int:
        return len(self.dataset)

    def chunk(self, k: int) -> Structures:
        start = k * self.chunk_size
        stop = min(start + self.chunk_size, len(self.dataset))
        block = self.dataset.read_block(start, stop)
        a = block.arrays
        return Structures(a["numbers"].astype(np.int64), a["positions"], a["atom_count"],
                          a["cell"], a["pbc"].astype(bool),
                          np.arange(start, stop))


class AseFileInput(ScreenInput):
    """Any file ase.io reads; read once, kept as arrays (fine up to millions of
    atoms; convert bigger collections to a pygfm dataset first)."""

    def __init__(self, spec: str, chunk_size: int):
        super().__init__(spec, chunk_size)
        from ..data.ase_input import iread_structures
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"{spec}: no such file, dataset or generator spec (random:..., "
                             "substitutions:...)")
        try:
            structures = list(iread_structures(path))
        except Exception as error:  # noqa: BLE001 - ase raises many kinds
            raise InputError(f"{spec}: cannot read structures ({type(error).__name__}: "
                             f"{error})") from None
        if not structures:
            raise InputError(f"{spec}: holds no structures")
        self.numbers = [s.numbers.astype(np.int64) for s in structures]
        self.positions = [np.asarray(s.positions, dtype=np.float64) for s in structures]
        self.cells = np.stack([np.asarray(s.cell, dtype=np.float64) for s in structures])
        self.pbcs = np.stack([np.asarray(s.pbc, dtype=bool) for s in structures])

    def __len__(self) -> int:
        return len(self.numbers)

    def chunk(self, k: int) -> Structures:
        start = k * self.chunk_size
        stop = min(start + self.chunk_size, len(self))
        sl = slice(start, stop)
        return Structures(np.concatenate(self.numbers[sl]), np.concatenate(self.positions[sl]),
                          np.array([len(n) for n in self.numbers[sl]]), self.cells[sl],
                          self.pbcs[sl], np.arange(start, stop))


def open_input(spec: str, chunk_size: int = 4096) -> ScreenInput:
    """The input a spec names (see the module doc)."""
    if not isinstance(spec, str) or not spec:
        raise InputError("--input: give a spec (random:N, substitutions:..., a dataset "
                         "directory or a structure file)")
    if spec.startswith("random:"):
        return RandomInput(spec, chunk_size)
    if spec.startswith("substitutions:"):
        return SubstitutionInput(spec, chunk_size)
    path = Path(spec)
    if path.is_dir():
        return DatasetInput(spec, chunk_size)
    return AseFileInput(spec, chunk_size)

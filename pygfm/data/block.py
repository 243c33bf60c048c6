"""SampleBlock: many samples stored column-wise, the unit that is written, read,
held in memory and shipped between ranks.

Per-atom arrays are concatenated over samples; sample k owns atoms
``atom_offset[k] : atom_offset[k] + atom_count[k]``. Labels a sample lacks are
zero with ``has_<label>[k] = 0``; a label no sample has is left out.

====================  ==========  =========  ===========================
array                 shape       dtype      meaning
====================  ==========  =========  ===========================
numbers               [A]         uint8      atomic numbers
positions             [A, 3]      float64    Å
forces                [A, 3]      float64    eV/Å (if any sample has forces)
atom_offset           [S]         int64      first atom of each sample
atom_count            [S]         int64      atoms of each sample
cell                  [S, 3, 3]   float64    Å, rows are cell vectors
pbc                   [S, 3]      uint8      periodic directions
sample_id             [S]         int64      index of the sample in its dataset
energy, has_energy    [S]         f64, u8    eV
has_forces            [S]         uint8
stress, has_stress    [S, 3, 3]   f64, u8    eV/Å³, ASE sign
charge, has_charge    [S]         f64, u8    total charge, elementary charges
spin, has_spin        [S]         f64, u8    spin multiplicity 2S+1
====================  ==========  =========  ===========================

``charge`` and ``spin`` are optional per-sample properties stored like labels
(zero with ``has_*`` 0 where unknown, left out when no sample has one): blocks and
shards written before they existed simply lack them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .sample import LABELS, MAX_ATOMIC_NUMBER, Sample

__all__ = ["SampleBlock", "PER_ATOM", "PER_SAMPLE", "PROPERTIES", "MASKED"]

# Per-sample properties that are inputs, not training targets: kept apart from
# LABELS so that losses and statistics never see them as labels.
PROPERTIES = ("charge", "spin")
# Everything stored as value + has_<name> mask.
MASKED = LABELS + PROPERTIES

PER_ATOM = ("numbers", "positions", "forces")
PER_SAMPLE = ("atom_offset", "atom_count", "cell", "pbc", "sample_id", "energy", "has_energy",
              "has_forces", "stress", "has_stress", "charge", "has_charge", "spin", "has_spin")
DTYPES = {"numbers": np.uint8, "positions": np.float64, "forces": np.float64,
          "atom_offset": np.int64, "atom_count": np.int64, "cell": np.float64,
          "pbc": np.uint8, "sample_id": np.int64, "energy": np.float64,
          "has_energy": np.uint8, "has_forces": np.uint8, "stress": np.float64,
          "has_stress": np.uint8, "charge": np.float64, "has_charge": np.uint8,
          "spin": np.float64, "has_spin": np.uint8}
TRAILING = {"positions": (3,), "forces": (3,), "cell": (3, 3), "pbc": (3,), "stress": (3, 3)}
REQUIRED = ("numbers", "positions", "atom_offset", "atom_count", "cell", "pbc", "sample_id")


@dataclass
class SampleBlock:
    """Column-wise samples: ``arrays`` maps the names above to numpy arrays."""

    arrays: dict[str, np.ndarray]
    dataset: str | None = None

    def __len__(self) -> int:
        return int(self.arrays["atom_count"].shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.arrays["numbers"].shape[0])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(name for name in LABELS if f"has_{name}" in self.arrays)

    @classmethod
    def from_samples(cls, samples: Iterable[Sample], dataset: str | None = None,
                     first_id: int = 0) -> "SampleBlock":
        """Pack samples; ``sample_id`` is each sample's ``index`` or, where that is
        None, ``first_id`` plus its position here."""
        samples = list(samples)
        counts = np.array([s.num_atoms for s in samples], dtype=np.int64)
        offsets = np.zeros(len(samples), dtype=np.int64)
        if len(samples) > 1:
            np.cumsum(counts[:-1], out=offsets[1:])
        present = {name for s in samples for name in s.labels}

        def stack(values, name, per_atom):
            if values:
                return np.ascontiguousarray(
                    np.concatenate(values) if per_atom else np.stack(values), dtype=DTYPES[name])
            return np.zeros((0,) + TRAILING.get(name, ()), dtype=DTYPES[name])

        arrays = {
            "numbers": stack([s.numbers for s in samples], "numbers", True),
            "positions": stack([s.positions for s in samples], "positions", True),
            "atom_offset": offsets,
            "atom_count": counts,
            "cell": stack([s.cell for s in samples], "cell", False),
            "pbc": stack([s.pbc for s in samples], "pbc", False),
            "sample_id": np.array([first_id + k if s.index is None else s.index
                                   for k, s in enumerate(samples)], dtype=np.int64),
        }
        if "energy" in present:
            arrays["energy"] = np.array([0.0 if s.energy is None else s.energy for s in samples])
            arrays["has_energy"] = np.array([s.energy is not None for s in samples], np.uint8)
        if "forces" in present:
            arrays["forces"] = stack([np.zeros((s.num_atoms, 3)) if s.forces is None
                                      else s.forces for s in samples], "forces", True)
            arrays["has_forces"] = np.array([s.forces is not None for s in samples], np.uint8)
        if "stress" in present:
            arrays["stress"] = stack([np.zeros((3, 3)) if s.stress is None else s.stress
                                      for s in samples], "stress", False)
            arrays["has_stress"] = np.array([s.stress is not None for s in samples], np.uint8)
        for name in PROPERTIES:
            values = [getattr(s, name) for s in samples]
            if any(v is not None for v in values):
                arrays[name] = np.array([0.0 if v is None else v for v in values], np.float64)
                arrays[f"has_{name}"] = np.array([v is not None for v in values], np.uint8)
        return cls(arrays, dataset)

    def sample(self, k: int) -> Sample:
        """Sample k of this block (a copy)."""
        a = self.arrays
        if not -len(self) <= k < len(self):
            raise IndexError(f"sample {k} of a block of {len(self)}")
        k %= len(self)
        start = int(a["atom_offset"][k])
        atoms = slice(start, start + int(a["atom_count"][k]))
        return Sample(
            numbers=a["numbers"][atoms].astype(np.int64),
            positions=a["positions"][atoms].copy(),
            cell=a["cell"][k].copy(),
            pbc=a["pbc"][k].astype(bool),
            energy=float(a["energy"][k]) if a.get("has_energy", np.zeros(k + 1))[k] else None,
            forces=a["forces"][atoms].copy() if a.get("has_forces", np.zeros(k + 1))[k] else None,
            stress=a["stress"][k].copy() if a.get("has_stress", np.zeros(k + 1))[k] else None,
            dataset=self.dataset,
            index=int(a["sample_id"][k]),
            charge=float(a["charge"][k]) if a.get("has_charge", np.zeros(k + 1))[k] else None,
            spin=float(a["spin"][k]) if a.get("has_spin", np.zeros(k + 1))[k] else None,
        )

    def select(self, indices: Sequence[int] | np.ndarray) -> "SampleBlock":
        """A new block holding samples ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        a = self.arrays
        counts = a["atom_count"][indices]
        offsets = np.zeros(len(indices), dtype=np.int64)
        if len(indices) > 1:
            np.cumsum(counts[:-1], out=offsets[1:])
        atom_rows = _ranges(a["atom_offset"][indices], counts)
        out = {}
        for name, value in a.items():
            if name in PER_ATOM:
                out[name] = value[atom_rows]
            elif name == "atom_offset":
                out[name] = offsets
            else:
                out[name] = value[indices]
        return SampleBlock(out, self.dataset)

    @classmethod
    def concatenate(cls, blocks: Sequence["SampleBlock"]) -> "SampleBlock":
        """Blocks of the same dataset joined in order (labels missing in some
        blocks become masked)."""
        if not blocks:
            raise ValueError("SampleBlock.concatenate: no blocks given")
        names = set().union(*(b.arrays for b in blocks))
        out = {}
        for name in names:
            parts = []
            for block in blocks:
                value = block.arrays.get(name)
                if value is None:  # a label this block lacks: zeros, masked
                    rows = block.num_atoms if name in PER_ATOM else len(block)
                    value = np.zeros((rows,) + TRAILING.get(name, ()), dtype=DTYPES[name])
                parts.append(value)
            out[name] = np.concatenate(parts)
        starts = np.cumsum([0] + [b.num_atoms for b in blocks[:-1]])
        out["atom_offset"] = np.concatenate(
            [b.arrays["atom_offset"] + s for b, s in zip(blocks, starts)])
        return cls(out, blocks[0].dataset)

    def check(self, where: str) -> None:
        """Raise ValueError naming ``where`` if the arrays are not a consistent block
        (shapes, dtypes, offsets, atomic numbers, non-finite values)."""
        a = self.arrays
        for name in REQUIRED:
            if name not in a:
                raise ValueError(f"{where}: the array {name!r} is missing")
        for name, value in a.items():
            if name not in DTYPES:
                continue
            rows = self.num_atoms if name in PER_ATOM else len(self)
            expected = (rows,) + TRAILING.get(name, ())
            if value.shape != expected:
                raise ValueError(f"{where}: {name!r} has shape {list(value.shape)}; expected "
                                 f"{list(expected)}")
            if value.dtype != DTYPES[name]:
                raise ValueError(f"{where}: {name!r} is {value.dtype}; expected "
                                 f"{np.dtype(DTYPES[name])}")
        offsets, counts = a["atom_offset"], a["atom_count"]
        if (counts < 1).any():
            k = int(np.argmax(counts < 1))
            raise ValueError(f"{where}: sample {int(a['sample_id'][k])} has {int(counts[k])} atoms")
        ends = offsets + counts
        if len(self) and ((offsets < 0).any() or ends.max() > self.num_atoms):
            k = int(np.argmax((offsets < 0) | (ends > self.num_atoms)))
            raise ValueError(f"{where}: sample {int(a['sample_id'][k])} claims atoms "
                             f"{int(offsets[k])}:{int(ends[k])} of {self.num_atoms}")
        bad = (a["numbers"] < 1) | (a["numbers"] > MAX_ATOMIC_NUMBER)
        if bad.any():
            raise ValueError(f"{where}: atomic number {int(a['numbers'][np.argmax(bad)])} "
                             f"is not an element")
        for name in ("positions", "cell", "energy", "forces", "stress") + PROPERTIES:
            if name in a and not np.isfinite(a[name]).all():
                raise ValueError(f"{where}: {name!r} contains NaN or inf")


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for each (s, c), without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    block_starts = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return block_starts + np.arange(total, dtype=np.int64)

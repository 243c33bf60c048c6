"""Per-row status of a screening: which structures the model cannot describe.

One bad structure must not end a billion-structure run, so the driver writes a
``status`` per row instead of raising: ``ok``, or the problems joined by "; ":

* ``overlapping atoms I-J at D A``: two atoms (or an atom and its periodic
  image, I = J) closer than :data:`~pygfm.data.overlap.MIN_DISTANCE`; the
  structure is left out of the model's batch and all its energies are NaN;
* ``unseen elements Xx, Yy for head H``: head H was not trained on them (its
  reference energies for them are 0, so its energy is off by whole atomic
  energies); that head's columns are NaN, and the ``auto`` blend and the
  forces use the other heads only (NaN when no head saw every element).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import AtomicBatch
from ..data.overlap import closest_pairs, thin_cells
from ..data.sample import MAX_ATOMIC_NUMBER
from ..ops import edge_vectors
from .inputs import Structures

__all__ = ["unseen_elements", "thin_cell_rows", "overlapping_structures", "select",
           "subset", "status_column"]


def unseen_elements(structures: Structures, known: np.ndarray, heads, problems) -> np.ndarray:
    """[B, H] bool: structure b holds elements head h was not trained on.

    known [H, 119] bool (the model's ``head_elements`` rows; an all-False row,
    unknown, flags nothing). Appends the status text to ``problems[b]``."""
    from ase.data import chemical_symbols

    B = len(structures)
    owner = np.repeat(np.arange(B), structures.counts)
    present = np.zeros((B, MAX_ATOMIC_NUMBER + 1), dtype=bool)
    present[owner, structures.numbers] = True
    missing = present[:, None, :] & ~known[None] & known.any(axis=1)[None, :, None]
    unseen = missing.any(axis=2)
    for b, h in zip(*np.nonzero(unseen)):
        symbols = ", ".join(chemical_symbols[z] for z in np.flatnonzero(missing[b, h]))
        plural = "s" if missing[b, h].sum() > 1 else ""
        problems[b].append(f"unseen element{plural} {symbols} for head {heads[h]}")
    return unseen


def thin_cell_rows(structures: Structures, problems) -> np.ndarray:
    """Rows (sorted) whose cell is not thinner than MIN_DISTANCE along a periodic
    axis; the others get their status (their neighbor lists would hold millions
    of images)."""
    thin = thin_cells(structures.cell, structures.pbc)
    for b, (axis, height) in thin.items():
        problems[b].append(f"overlapping atoms 0-0 at {height:.4f} A (the cell is "
                           f"{height:.4f} A thick along periodic axis {axis})")
    return np.array([b for b in range(len(structures)) if b not in thin], dtype=np.int64)


def overlapping_structures(batch: AtomicBatch, rows: np.ndarray, problems) -> list[int]:
    """Structures of ``batch`` (with its neighbor list) holding overlapping atoms;
    their status goes to ``problems[rows[b]]``."""
    pairs = batch.neighbors
    _, lengths = edge_vectors(batch.positions, pairs.edge_index, pairs.shifts, batch.cell,
                              batch.ptr)
    found = closest_pairs(pairs.edge_index, lengths, batch.ptr)
    for b, (i, j, distance) in found.items():
        problems[rows[b]].append(f"overlapping atoms {i}-{j} at {distance:.4f} A")
    return sorted(found)


def select(batch: AtomicBatch, keep) -> AtomicBatch:
    """Structures ``keep`` (batch indices, in order) of a batch, without labels or
    neighbor list."""
    ptr = batch.ptr.cpu()
    keep = torch.as_tensor(list(keep), dtype=torch.int64)
    counts = ptr[1:][keep] - ptr[:-1][keep]
    atoms = torch.cat([torch.arange(int(ptr[b]), int(ptr[b + 1])) for b in keep.tolist()])
    device = batch.positions.device
    atoms, keep = atoms.to(device), keep.to(device)
    return AtomicBatch(positions=batch.positions[atoms], numbers=batch.numbers[atoms],
                       cell=batch.cell[keep], pbc=batch.pbc[keep],
                       ptr=torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(device))


def subset(structures: Structures, rows: np.ndarray) -> Structures:
    """Structures ``rows`` of a chunk, in order."""
    offsets = np.concatenate(([0], np.cumsum(structures.counts)))
    atoms = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in rows]) \
        if len(rows) else np.zeros(0, dtype=np.int64)
    return Structures(structures.numbers[atoms], structures.positions[atoms],
                      structures.counts[rows], structures.cell[rows], structures.pbc[rows],
                      structures.ids[rows])


def status_column(problems) -> np.ndarray:
    """[B] str: "ok" or the problems joined by "; "."""
    return np.array(["; ".join(p) if p else "ok" for p in problems], dtype=str)

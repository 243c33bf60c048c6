"""AtomicBatch: many structures as flat tensors, the input of every pygfm model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from ..ops.reference import segment_ids

__all__ = ["AtomicBatch"]


@dataclass(frozen=True)
class AtomicBatch:
    """A batch of B structures with N atoms in all.

    positions [N, 3] (Å); numbers [N] int64 atomic numbers; cell [B, 3, 3]
    (rows are the cell vectors, Å; zeros for a molecule); pbc [B, 3] bool;
    ptr [B + 1] int64: structure b owns atoms ptr[b]:ptr[b+1].
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    ptr: torch.Tensor

    @property
    def num_structures(self) -> int:
        return self.ptr.shape[0] - 1

    @property
    def num_atoms(self) -> int:
        return self.positions.shape[0]

    def structure_index(self) -> torch.Tensor:
        """[N] int64: the structure of every atom."""
        return segment_ids(self.ptr, self.num_atoms)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "AtomicBatch":
        """Move to ``device``; ``dtype`` changes positions and cell only."""
        return replace(
            self,
            positions=self.positions.to(device=device, dtype=dtype),
            numbers=self.numbers.to(device),
            cell=self.cell.to(device=device, dtype=dtype),
            pbc=self.pbc.to(device),
            ptr=self.ptr.to(device),
        )

    @classmethod
    def from_atoms(cls, atoms_list: Sequence, dtype: torch.dtype = torch.float64,
                   device=None) -> "AtomicBatch":
        """Batch ASE ``Atoms`` objects (positions in Å). Fails, naming the
        structure, on NaN/inf positions or cell, or an empty list."""
        if len(atoms_list) == 0:
            raise ValueError("AtomicBatch.from_atoms: no structures given")
        positions, numbers, cells, pbcs, counts = [], [], [], [], [0]
        for index, atoms in enumerate(atoms_list):
            if not hasattr(atoms, "get_positions"):
                raise TypeError(f"AtomicBatch.from_atoms: structure {index} is a "
                                f"{type(atoms).__name__}, not an ase.Atoms")
            pos = np.asarray(atoms.get_positions(), dtype=np.float64)
            cell = np.asarray(atoms.get_cell().array, dtype=np.float64)
            if not np.isfinite(pos).all():
                raise ValueError(f"AtomicBatch.from_atoms: structure {index} has "
                                 "non-finite positions")
            if not np.isfinite(cell).all():
                raise ValueError(f"AtomicBatch.from_atoms: structure {index} has a "
                                 "non-finite cell")
            positions.append(pos)
            numbers.append(np.asarray(atoms.get_atomic_numbers(), dtype=np.int64))
            cells.append(cell)
            pbcs.append(np.asarray(atoms.get_pbc(), dtype=bool))
            counts.append(len(atoms))
        return cls(
            positions=torch.as_tensor(np.concatenate(positions), dtype=dtype, device=device),
            numbers=torch.as_tensor(np.concatenate(numbers), device=device),
            cell=torch.as_tensor(np.stack(cells), dtype=dtype, device=device),
            pbc=torch.as_tensor(np.stack(pbcs), device=device),
            ptr=torch.as_tensor(np.cumsum(counts), dtype=torch.long, device=device),
        )

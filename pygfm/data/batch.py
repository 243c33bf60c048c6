"""AtomicBatch: many structures as flat tensors, the input of every pygfm model."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch

from ..ops.reference import segment_ids
from .overlap import OverlapError, thin_cells
from .sample import MAX_ATOMIC_NUMBER

__all__ = ["AtomicBatch", "collate", "from_ase"]

# float fields follow the geometry dtype; the rest keep theirs
_FLOAT_FIELDS = ("positions", "cell", "energy", "forces", "stress")


@dataclass(frozen=True)
class AtomicBatch:
    """A batch of B structures with N atoms in all.

    positions [N, 3] (Å); numbers [N] int64 atomic numbers; cell [B, 3, 3]
    (rows are the cell vectors, Å; zeros for a molecule); pbc [B, 3] bool;
    ptr [B + 1] int64: structure b owns atoms ptr[b]:ptr[b+1].

    Optional, filled by :func:`collate` and :func:`from_ase` (None otherwise):
    dataset [B] int64 (index into the caller's list of dataset names);
    sample_id [B] int64 (position of each structure in its dataset);
    energy [B] eV, forces [N, 3] eV/Å, stress [B, 3, 3] eV/Å³ (ASE sign), each
    with a mask [B] bool that is False where the structure lacks that label
    (the value is zero there).
    neighbors: a :class:`~pygfm.ops.NeighborList` of this batch at
    ``neighbor_cutoff`` Å, when a loader built one (models reuse it when their
    cutoff is not larger).
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    ptr: torch.Tensor
    dataset: torch.Tensor | None = None
    sample_id: torch.Tensor | None = None
    energy: torch.Tensor | None = None
    energy_mask: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    forces_mask: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    stress_mask: torch.Tensor | None = None
    neighbors: tuple | None = None
    neighbor_cutoff: float | None = None

    @property
    def num_structures(self) -> int:
        return self.ptr.shape[0] - 1

    @property
    def num_atoms(self) -> int:
        return self.positions.shape[0]

    def structure_index(self) -> torch.Tensor:
        """[N] int64: the structure of every atom."""
        return segment_ids(self.ptr, self.num_atoms)

    def to(self, device=None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "AtomicBatch":
        """Move to ``device``; ``dtype`` changes the float fields (geometry and
        labels) only."""
        return self._map(lambda name, value: value.to(
            device=device, dtype=dtype if name in _FLOAT_FIELDS else None,
            non_blocking=non_blocking))

    def pin_memory(self) -> "AtomicBatch":
        """Page-locked copies of every tensor (for asynchronous copies to a GPU)."""
        return self._map(lambda name, value: value.pin_memory())

    def _map(self, function) -> "AtomicBatch":
        changed = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, torch.Tensor):
                changed[item.name] = function(item.name, value)
            elif item.name == "neighbors" and value is not None:
                changed[item.name] = type(value)(*(function(item.name, t) for t in value))
        return replace(self, **changed)

    def to_ase(self, dataset_names: Sequence[str] | None = None) -> list:
        """One ``ase.Atoms`` per structure, labels attached as a SinglePointCalculator
        (masked labels left out); ``info["dataset"]`` from ``dataset_names``."""
        from .sample import Sample

        cpu = self.to("cpu")
        ptr = cpu.ptr.tolist()
        out = []
        for b in range(self.num_structures):
            atoms = slice(ptr[b], ptr[b + 1])

            def label(name, rows):
                value, mask = getattr(cpu, name), getattr(cpu, f"{name}_mask")
                if value is None or not bool(mask[b]):
                    return None
                return value[rows].double().numpy()

            dataset = None
            if cpu.dataset is not None and dataset_names is not None:
                dataset = dataset_names[int(cpu.dataset[b])]
            sample = Sample(
                numbers=cpu.numbers[atoms].numpy(), positions=cpu.positions[atoms].double().numpy(),
                cell=cpu.cell[b].double().numpy(), pbc=cpu.pbc[b].numpy(),
                energy=None if (e := label("energy", b)) is None else float(e),
                forces=label("forces", atoms), stress=label("stress", b), dataset=dataset,
                index=None if cpu.sample_id is None else int(cpu.sample_id[b]))
            out.append(sample.to_ase())
        return out

    @classmethod
    def from_atoms(cls, atoms_list: Sequence, dtype: torch.dtype = torch.float64,
                   device=None) -> "AtomicBatch":
        """Batch ASE ``Atoms`` objects (positions in Å), without labels, for
        prediction. Fails, naming the structure, on NaN/inf positions or cell,
        atomic numbers outside 1..118, a cell thinner than
        :data:`~pygfm.data.overlap.MIN_DISTANCE` along a periodic axis
        (:class:`~pygfm.data.overlap.OverlapError`), or an empty list. Unlike :func:`from_ase` (training data, via
        :class:`~pygfm.data.Sample`) it accepts a structure with no atoms, whose
        predicted energy is 0."""
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
            z = np.asarray(atoms.get_atomic_numbers(), dtype=np.int64)
            bad = (z < 1) | (z > MAX_ATOMIC_NUMBER)
            if bad.any():
                atom = int(np.argmax(bad))
                raise ValueError(f"AtomicBatch.from_atoms: structure {index}, atom {atom} has "
                                 f"atomic number {int(z[atom])}, not an element "
                                 f"(1..{MAX_ATOMIC_NUMBER})")
            thin = thin_cells(cell[None], np.asarray(atoms.get_pbc(), dtype=bool)[None])
            if thin:  # refused before a neighbor list of millions of images is tried
                raise OverlapError(index, (0, 0), thin[0][1],
                                   atoms.get_chemical_formula())
            positions.append(pos)
            numbers.append(z)
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


def collate(blocks, dataset: Sequence[int] | int | None = None,
            dtype: torch.dtype = torch.float64, device=None) -> AtomicBatch:
    """Build an AtomicBatch with labels from samples.

    ``blocks``: a :class:`~pygfm.data.SampleBlock`, a list of them, or a list of
    :class:`~pygfm.data.Sample`. ``dataset``: the dataset index of every block
    (one int per block, or one for all); it fills ``batch.dataset``. Labels a
    structure lacks are zero and masked. ``dtype`` is the float type of
    geometry and labels.
    """
    from .block import SampleBlock
    from .sample import Sample

    if isinstance(blocks, SampleBlock):
        blocks = [blocks]
    blocks = list(blocks)
    if blocks and isinstance(blocks[0], Sample):
        blocks = [SampleBlock.from_samples(blocks)]
    if not blocks or sum(len(b) for b in blocks) == 0:
        raise ValueError("collate: no structures given")
    if isinstance(dataset, (int, np.integer)) or dataset is None:
        dataset_of_block = [0 if dataset is None else int(dataset)] * len(blocks)
    else:
        dataset_of_block = [int(d) for d in dataset]
        if len(dataset_of_block) != len(blocks):
            raise ValueError(f"collate: {len(dataset_of_block)} dataset indices for "
                             f"{len(blocks)} blocks")
    joined = SampleBlock.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    a = joined.arrays
    structures = len(joined)

    def tensor(value, float_type=False):
        return torch.as_tensor(np.ascontiguousarray(value), dtype=dtype if float_type else None,
                               device=device)

    def label(name, per_atom):
        if f"has_{name}" not in a:
            rows = joined.num_atoms if per_atom else structures
            shape = (rows,) + {"energy": (), "forces": (3,), "stress": (3, 3)}[name]
            return (torch.zeros(shape, dtype=dtype, device=device),
                    torch.zeros(structures, dtype=torch.bool, device=device))
        return tensor(a[name], True), tensor(a[f"has_{name}"].astype(bool))

    counts = a["atom_count"]
    energy, energy_mask = label("energy", False)
    forces, forces_mask = label("forces", True)
    stress, stress_mask = label("stress", False)
    return AtomicBatch(
        positions=tensor(a["positions"], True),
        numbers=tensor(a["numbers"].astype(np.int64)),
        cell=tensor(a["cell"], True),
        pbc=tensor(a["pbc"].astype(bool)),
        ptr=tensor(np.concatenate(([0], np.cumsum(counts))).astype(np.int64)),
        dataset=tensor(np.repeat(np.array(dataset_of_block, dtype=np.int64),
                                 [len(b) for b in blocks])),
        sample_id=tensor(a["sample_id"].astype(np.int64)),
        energy=energy, energy_mask=energy_mask, forces=forces, forces_mask=forces_mask,
        stress=stress, stress_mask=stress_mask,
    )


def from_ase(atoms_list: Sequence, dataset: int = 0, dtype: torch.dtype = torch.float64,
             device=None, **label_keys) -> AtomicBatch:
    """Batch ASE ``Atoms`` with their labels (energy, forces, stress from the
    calculator or info/arrays; see :func:`pygfm.data.labels_from_ase`).
    ``dataset`` is the dataset index given to every structure. Fails, naming the
    structure, on bad input."""
    from .sample import Sample

    if len(atoms_list) == 0:
        raise ValueError("from_ase: no structures given")
    samples = [Sample.from_ase(atoms, index=k, **label_keys) for k, atoms in enumerate(atoms_list)]
    return collate(samples, dataset=dataset, dtype=dtype, device=device)

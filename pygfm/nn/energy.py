"""Energy models: a PaiNN trunk and an atomwise head; forces and stress by autograd."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data import AtomicBatch
from ..data.overlap import OverlapError
from ..ops import NeighborList, segment_sum
from .conservative import conservative
from .mlp import MLP
from .painn import PaiNN

__all__ = ["EnergyModel"]


class EnergyModel(nn.Module):
    """E = sum over atoms of (head(s_i) * scale + shift + atom_energy[Z_i]) (eV).

    ``aggregation="mean"`` divides by the atom count (an intensive target).
    Forces F = -dE/dx (eV/Å) and stress sigma = (1/V) dE/d(strain) (eV/Å^3, the
    ASE convention) come from autograd through the edge vectors, so they are
    exactly consistent with the energy.

    Every pygfm energy model offers :meth:`predict` on ASE structures.
    """

    def __init__(self, representation: PaiNN, head: nn.Module | None = None,
                 aggregation: str = "sum", scale: float = 1.0, shift: float = 0.0,
                 atom_energies: torch.Tensor | None = None,
                 extensive_offsets: bool | None = None):
        super().__init__()
        if aggregation not in ("sum", "mean"):
            raise ValueError(f"EnergyModel: aggregation must be 'sum' or 'mean', "
                             f"got {aggregation!r}")
        self.representation = representation
        F_ = representation.n_features
        self.head = head if head is not None else MLP([F_, max(F_ // 2, 1), 1])
        self.aggregation = aggregation
        self.extensive_offsets = aggregation == "sum" if extensive_offsets is None \
            else bool(extensive_offsets)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("shift", torch.tensor(float(shift)))
        if atom_energies is None:
            atom_energies = torch.zeros(representation.max_z)
        self.register_buffer("atom_energies", torch.as_tensor(atom_energies).clone())

    _OFFSETS = ("scale", "shift", "atom_energies")

    def _apply(self, fn, recurse=True):
        # A cast to BF16/FP16 must not round the energy offsets (per-element
        # reference energies reach -1000s of eV): they stay FP32 or better.
        before = {name: getattr(self, name) for name in self._OFFSETS}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            if new.dtype in (torch.bfloat16, torch.float16):
                dtype = old.dtype if old.dtype in (torch.float32, torch.float64) \
                    else torch.float32
                setattr(self, name, old.to(device=new.device, dtype=dtype))
        return self

    @property
    def cutoff(self) -> float:
        return self.representation.cutoff

    def forward(self, batch: AtomicBatch, forces: bool = True, stress: bool = False,
                neighbors: NeighborList | None = None) -> dict:
        """``{"energy": [B], "forces": [N, 3], "stress": [B, 3, 3]}`` (as asked).

        ``neighbors``: a list from :func:`pygfm.ops.neighbor_list` for this
        batch at this model's cutoff (or larger: longer pairs add nothing), to
        reuse between calls; by default ``batch.neighbors`` when its cutoff is
        large enough, else it is built here.

        In training mode the graph is kept, so losses on forces and stress can
        be differentiated with respect to the weights. Stress divides by the
        cell volume: it is not finite for a structure without a 3D cell.
        """
        def energy_of(vectors, graph):
            s, _ = self.representation(batch.numbers, vectors, graph)
            atomic = self.head(s).squeeze(-1).to(self.scale.dtype) * self.scale
            offsets = segment_sum(self.shift + self.atom_energies[batch.numbers], batch.ptr)
            energy = segment_sum(atomic, batch.ptr)
            counts = (batch.ptr[1:] - batch.ptr[:-1]).clamp(min=1)
            if self.aggregation == "mean":
                energy = energy / counts
            return energy + (offsets if self.extensive_offsets else offsets / counts)

        return conservative(batch, self.cutoff, energy_of, forces=forces, stress=stress,
                            neighbors=neighbors, create_graph=self.training)

    @torch.no_grad()
    def predict(self, atoms_list: Sequence, max_atoms: int = 4096) -> dict:
        """Energies, forces and (for fully periodic structures) stress of ASE Atoms.

        Returns ``{"energy": np.ndarray [B] (eV), "forces": list of [n_i, 3]
        arrays (eV/Å), "stress": np.ndarray [B, 3, 3] (eV/Å^3; NaN for
        structures that are not periodic along all three axes)}``. Structures
        are evaluated in chunks of at most ``max_atoms`` atoms (a larger
        structure gets a chunk of its own). Two atoms closer than
        :data:`~pygfm.data.overlap.MIN_DISTANCE` raise
        :class:`~pygfm.data.overlap.OverlapError` naming the structure (its
        index in ``atoms_list``), the pair and the distance.
        """
        if len(atoms_list) == 0:
            return {"energy": np.zeros(0), "forces": [], "stress": np.zeros((0, 3, 3))}
        was_training = self.training
        self.eval()
        parameter = next(self.parameters())
        energies, forces, stresses = [], [], []
        try:
            for start, chunk in _chunks(atoms_list, max_atoms, offsets=True):
                geometry = torch.promote_types(parameter.dtype, torch.float32)
                with _listed(start):
                    batch = AtomicBatch.from_atoms(chunk, dtype=geometry,
                                                   device=parameter.device)
                    periodic = batch.pbc.all(dim=1)
                    out = self.forward(batch, forces=True, stress=bool(periodic.any()))
                energies.append(out["energy"].detach().double().cpu().numpy())
                counts = (batch.ptr[1:] - batch.ptr[:-1]).tolist()
                forces.extend(f.numpy() for f in
                              out["forces"].detach().double().cpu().split(counts))
                stress = np.full((batch.num_structures, 3, 3), np.nan)
                if "stress" in out:
                    values = out["stress"].detach().double().cpu().numpy()
                    stress[periodic.cpu().numpy()] = values[periodic.cpu().numpy()]
                stresses.append(stress)
        finally:
            self.train(was_training)
        return {"energy": np.concatenate(energies), "forces": forces,
                "stress": np.concatenate(stresses)}


def _chunks(atoms_list: Sequence, max_atoms: int, offsets: bool = False):
    """Lists of at most ``max_atoms`` atoms; with ``offsets``, (index of the
    chunk's first structure, chunk) pairs."""
    chunk, atoms, start = [], 0, 0
    for structure in atoms_list:
        if chunk and atoms + len(structure) > max_atoms:
            yield (start, chunk) if offsets else chunk
            start += len(chunk)
            chunk, atoms = [], 0
        chunk.append(structure)
        atoms += len(structure)
    if chunk:
        yield (start, chunk) if offsets else chunk


@contextmanager
def _listed(start: int):
    """An OverlapError of a chunk names the structure by its index in the list."""
    try:
        yield
    except OverlapError as error:
        raise error.renamed(structure=start + error.structure) from None

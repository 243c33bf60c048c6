"""Energies with forces and stress by autograd, for any model that maps a batch's
edge vectors to energies: the geometry and differentiation every pygfm energy
model shares."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data import AtomicBatch
from ..data.overlap import MIN_DISTANCE, OverlapError, closest_pairs
from ..ops import MessageGraph, NeighborList, edge_vectors, message_graph, neighbor_list
from ..ops._checks import tracing

__all__ = ["blended", "conservative"]


def conservative(batch: AtomicBatch, cutoff: float,
                 energy_fn: Callable[[torch.Tensor, MessageGraph], torch.Tensor], *,
                 forces: bool = True, stress: bool = False,
                 neighbors: NeighborList | None = None, create_graph: bool = False) -> dict:
    """Run ``energy_fn(vectors [E, 3], graph) -> energy`` ([B] or [B, H], eV) on the
    batch's pairs within ``cutoff`` and differentiate it.

    Returns ``{"energy", "forces", "stress"}`` as asked: forces -dE/dx [N, 3]
    (eV/Å; [H, N, 3] for a [B, H] energy) and stress (1/V) dE/d(strain)
    [B, 3, 3] (eV/Å³, ASE's sign; [H, B, 3, 3]). ``neighbors`` defaults to
    ``batch.neighbors`` when its cutoff is large enough, else a list is built.
    ``create_graph`` keeps the graph so a loss on forces/stress can be
    differentiated with respect to the weights.

    Raises :class:`~pygfm.data.overlap.OverlapError` (a ValueError naming the
    structure, its formula, the atom pair and the distance) when two atoms are
    closer than :data:`~pygfm.data.overlap.MIN_DISTANCE`, where the energy
    would be NaN. The test reads the edge lengths computed here anyway, and
    the host learns its result only at the end (no extra device sync).
    """
    positions, cell = batch.positions, batch.cell
    inputs = []
    with torch.enable_grad():
        if forces:
            positions = positions.detach().requires_grad_(True)
            inputs.append(positions)
        if stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            inputs.append(strain)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            positions = positions + torch.einsum(
                "na,nab->nb", positions, symmetric[batch.structure_index()])
            cell = cell + cell @ symmetric
        if neighbors is None and batch.neighbors is not None \
                and batch.neighbor_cutoff is not None and batch.neighbor_cutoff >= cutoff:
            neighbors = batch.neighbors
        pairs = neighbors if neighbors is not None else neighbor_list(
            positions.detach(), cutoff, batch.cell, batch.pbc, batch.ptr)
        vectors, lengths = edge_vectors(positions, pairs.edge_index, pairs.shifts, cell,
                                        batch.ptr)
        too_close = None if tracing() else (lengths.detach() < MIN_DISTANCE).any()
        energy = energy_fn(vectors, message_graph(pairs.edge_index, batch.num_atoms))
        result = {"energy": energy}
        if not inputs:
            _check_overlaps(too_close, batch, pairs, lengths)
            return result
        columns = [energy] if energy.dim() == 1 else list(energy.unbind(1))
        # a batch without atoms (or pairs that reach nothing) has an energy that
        # does not depend on the inputs: its derivatives are zero
        gradients = [torch.autograd.grad(column.sum(), inputs, create_graph=create_graph,
                                         retain_graph=create_graph or k + 1 < len(columns),
                                         allow_unused=True)
                     if column.requires_grad else (None,) * len(inputs)
                     for k, column in enumerate(columns)]
        gradients = [tuple(torch.zeros_like(x) if g is None else g
                           for g, x in zip(grads, inputs)) for grads in gradients]
        if stress:
            volume = torch.linalg.det(batch.cell).abs()
            # a structure without a 3D cell has no volume: its entry is dE/d(strain)
            # (callers mask it; dividing by 0 would poison the backward pass)
            volume = torch.where(volume > 0, volume, torch.ones_like(volume))[:, None, None]
        per_column = []
        for grads in gradients:
            out = {}
            if forces:
                out["forces"] = -grads[0]
            if stress:
                out["stress"] = grads[-1] / volume
            per_column.append(out)
        for key in per_column[0]:
            values = [column[key] for column in per_column]
            result[key] = values[0] if energy.dim() == 1 else torch.stack(values)
    _check_overlaps(too_close, batch, pairs, lengths)
    return result


def _check_overlaps(too_close, batch: AtomicBatch, pairs: NeighborList, lengths) -> None:
    """Raise OverlapError for the first structure with a pair below MIN_DISTANCE."""
    if too_close is None or not bool(too_close):
        return
    from ase.symbols import Symbols

    found = closest_pairs(pairs.edge_index, lengths, batch.ptr)
    b = min(found)
    first, second, distance = found[b]
    ptr = batch.ptr.tolist()
    formula = Symbols(batch.numbers[ptr[b]:ptr[b + 1]].cpu().numpy()).get_chemical_formula()
    raise OverlapError(b, (first, second), distance, formula)


def blended(energy_fn: Callable[[torch.Tensor, MessageGraph], torch.Tensor],
            weights: torch.Tensor, kept: dict):
    """``energy_fn`` ([B, H]) turned into the blend sum_h w[b, h] E[b, h] ([B]), so
    that one backward pass gives the blend's forces and stress; the unblended
    energy is left in ``kept["energy"]``."""
    weights = weights.detach()

    def energy_of(vectors, graph):
        energy = energy_fn(vectors, graph)
        kept["energy"] = energy
        return (energy * weights.to(energy.dtype)).sum(dim=1)
    return energy_of

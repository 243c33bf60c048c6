"""Neighbor lists: the pairs within a cutoff, for batches of periodic or open structures.

``neighbor_list`` validates its input, builds a cell grid per structure (in
float64, here) and calls the kernel ``torch.ops.pygfm.neighbor_list``
(csrc/ops/neighbor_list.cpp, algorithm in csrc/kernels/neighbor_list.h).
``edge_vectors`` turns the result into differentiable vectors and lengths.

Conventions (those of ASE's ``neighbor_list('ijS', atoms, cutoff)``, which the
tests compare against): pair (i, j, S) means atom j, shifted by the integer
cell shift S, lies within ``cutoff`` (strictly) of atom i:
``r_ij = x_j - x_i + S @ cell``; S is 0 along non-periodic axes; an atom is
never its own neighbor with S = 0 unless ``self_interaction``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._extension import _C
from ._checks import as_index, check_ptr, tracing
from .reference import segment_ids

__all__ = ["NeighborList", "neighbor_list", "edge_vectors"]

_ops = torch.ops.pygfm

# Periodic images are packed in 10 bits a component inside the CPU kernel.
_MAX_IMAGES = 511
# Bytes of memory a pair costs while it is being found and stored (CPU).
_BYTES_PER_PAIR = 96
# Open structures up to this many atoms are searched pair by pair (one bin).
_BRUTE_FORCE_ATOMS = 32


class NeighborList(NamedTuple):
    """Pairs within the cutoff, receiver-sorted.

    edge_index: int64 [2, E]; row 0 the receiver/center i, row 1 the sender/neighbor j
        (global atom indices over the batch).
    shifts: int64 [E, 3]; cell shift S with r_ij = x_j - x_i + S @ cell[structure of i].
    row_ptr: int64 [N + 1]; receiver i's pairs are edges row_ptr[i]:row_ptr[i+1],
        ordered by (j, S).
    """

    edge_index: torch.Tensor
    shifts: torch.Tensor
    row_ptr: torch.Tensor


def _structure_of(ptr: torch.Tensor, atom: int) -> int:
    return int(torch.searchsorted(ptr, torch.tensor(atom, device=ptr.device), right=True)) - 1


def _check_positions(positions) -> None:
    op = "neighbor_list"
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"{op}: positions must be a torch.Tensor, got {type(positions).__name__}")
    if not positions.dtype.is_floating_point:
        raise TypeError(f"{op}: positions must be floating point (Å), got dtype {positions.dtype}")
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"{op}: positions must have shape [N, 3], got {tuple(positions.shape)}")


def _check_cutoff(cutoff) -> float:
    if isinstance(cutoff, torch.Tensor) and cutoff.numel() == 1:
        cutoff = cutoff.item()
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)):
        raise TypeError(f"neighbor_list: cutoff must be a number (Å), got {type(cutoff).__name__}")
    if not math.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"neighbor_list: cutoff must be positive and finite, got {cutoff}")
    return float(cutoff)


def _batch_cell(cell, positions, structures: int) -> torch.Tensor:
    op = "neighbor_list"
    if cell is None:
        return torch.zeros(structures, 3, 3, dtype=torch.float64, device=positions.device)
    if not isinstance(cell, torch.Tensor):
        cell = torch.as_tensor(cell, dtype=positions.dtype, device=positions.device)
    if cell.device != positions.device:
        raise ValueError(f"{op}: cell is on {cell.device} but positions are on {positions.device}")
    if cell.dtype != positions.dtype:
        raise TypeError(f"{op}: cell has dtype {cell.dtype} but positions have {positions.dtype}")
    if cell.shape == (3, 3):
        cell = cell.expand(structures, 3, 3)
    if cell.shape != (structures, 3, 3):
        raise ValueError(
            f"{op}: cell must have shape [3, 3] or [B, 3, 3] with B = {structures} structures, "
            f"got {tuple(cell.shape)}"
        )
    return cell.detach().to(torch.float64)


def _batch_pbc(pbc, cell_given: bool, structures: int, device) -> torch.Tensor:
    if pbc is None:
        return torch.full((structures, 3), cell_given, dtype=torch.bool, device=device)
    pbc = torch.as_tensor(pbc, device=device)
    if pbc.dtype != torch.bool:
        raise TypeError(f"neighbor_list: pbc must be booleans, got dtype {pbc.dtype}")
    if pbc.dim() == 0:
        pbc = pbc.expand(3)
    if pbc.shape == (3,):
        pbc = pbc.expand(structures, 3)
    if pbc.shape != (structures, 3):
        raise ValueError(
            f"neighbor_list: pbc must have shape [3] or [B, 3] with B = {structures}, "
            f"got {tuple(pbc.shape)}"
        )
    return pbc.contiguous()


def _complete_cell(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Replace the rows of non-periodic axes by unit vectors orthogonal to the periodic rows.

    Shifts along non-periodic axes are always 0, so those rows only shape the
    search grid; making them orthonormal avoids singular cells (molecules with
    no cell, slabs without a vacuum vector).
    """
    completed = cell.clone()
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device)
    for pattern in range(8):
        periodic = [bool(pattern >> a & 1) for a in range(3)]
        mask = (pbc == torch.tensor(periodic, device=pbc.device)).all(dim=1)
        count = sum(periodic)
        if count == 3 or not bool(mask.any()):
            continue
        rows = cell[mask]
        axes = [a for a in range(3) if periodic[a]]
        free = [a for a in range(3) if not periodic[a]]
        if count == 0:
            new_rows = [eye.expand(rows.shape[0], 3, 3)[:, a] for a in range(3)]
        elif count == 1:
            direction = torch.nn.functional.normalize(rows[:, axes[0]], dim=1)
            # the Cartesian axis least aligned with the periodic direction
            helper = eye[direction.abs().argmin(dim=1)]
            first = torch.nn.functional.normalize(
                helper - (helper * direction).sum(1, keepdim=True) * direction, dim=1
            )
            new_rows = [first, torch.linalg.cross(direction, first)]
        else:
            new_rows = [
                torch.nn.functional.normalize(
                    torch.linalg.cross(rows[:, axes[0]], rows[:, axes[1]]), dim=1
                )
            ]
        for axis, row in zip(free, new_rows):
            rows[:, axis] = row
        completed[mask] = rows
    return completed


def _first_bad_structure(values: torch.Tensor, per_structure_ptr: torch.Tensor | None):
    """Index of the first structure holding a non-finite value, or None."""
    bad = ~torch.isfinite(values).flatten(1).all(dim=1)
    if not bool(bad.any()):
        return None
    first = int(torch.nonzero(bad)[0, 0])
    return first if per_structure_ptr is None else _structure_of(per_structure_ptr, first)


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    # the setting neighbor_memory_mb, else MemAvailable (the same budget the op checks)
    return int(_C.neighbor_memory_budget())


def neighbor_list(
    positions: torch.Tensor,
    cutoff: float,
    cell: torch.Tensor | None = None,
    pbc: torch.Tensor | None = None,
    ptr: torch.Tensor | None = None,
    *,
    self_interaction: bool = False,
    max_neighbors: int | None = None,
) -> NeighborList:
    """All pairs closer than ``cutoff`` (Å), for one structure or a batch.

    Args:
        positions: [N, 3] Cartesian positions (Å); any float dtype (the search
            runs in float64). Atoms may lie outside the cell.
        cutoff: pair cutoff radius (Å), > 0; pairs at distance < cutoff are kept.
        cell: [3, 3] or [B, 3, 3], rows are lattice vectors (Å); None for
            molecules. Same dtype and device as positions.
        pbc: [3] or [B, 3] booleans; default: periodic on all axes if a cell is
            given, else on none.
        ptr: [B + 1] structure boundaries: structure b owns atoms
            ptr[b]:ptr[b+1]; None means one structure.
        self_interaction: also return (i, i, S=0).
        max_neighbors: keep only the nearest this many pairs per receiver (ties
            by sender, then shift).

    Returns:
        NeighborList(edge_index [2, E], shifts [E, 3], row_ptr [N + 1]), sorted
        by receiver, then sender, then shift; the same for the same input on
        every run and device.

    Raises:
        TypeError, ValueError naming the problem (and the structure) for NaN or
        infinite positions or cells, a singular cell along a periodic axis, a
        bad cutoff, inconsistent ptr, mismatched dtypes or devices, and for a
        cutoff and cell that would produce more pairs than fit in memory.
    """
    op = "neighbor_list"
    _check_positions(positions)
    cutoff = _check_cutoff(cutoff)
    if max_neighbors is not None:
        if isinstance(max_neighbors, bool) or not isinstance(max_neighbors, int):
            raise TypeError(f"{op}: max_neighbors must be an int or None")
        if max_neighbors < 0:
            raise ValueError(f"{op}: max_neighbors must be >= 0, got {max_neighbors}")
    device = positions.device
    num_atoms = positions.shape[0]
    if ptr is None:
        ptr = torch.tensor([0, num_atoms], dtype=torch.long, device=device)
    else:
        ptr = as_index(op, "ptr", ptr, device)
        check_ptr(op, ptr, num_atoms)
    structures = ptr.numel() - 1
    x = positions.detach().to(torch.float64).contiguous()
    cell64 = _batch_cell(cell, positions, structures)
    pbc = _batch_pbc(pbc, cell is not None, structures, device)
    checks = not tracing()

    # The per-structure geometry (cell, determinant, inverse, heights, bins) is
    # small: off the CPU it is computed on the CPU from one copy of cell, pbc and
    # ptr (one host sync instead of one per check), with the same float64 ops as
    # for CPU input, so every device gets the same grid bits. Traced, it stays
    # on the device (no data-dependent host copies in a graph).
    on_host = checks and device.type != "cpu"
    if on_host:
        cell_h, pbc_h, ptr_h, first_bad_atom = _to_host(x, cell64, pbc, ptr)
        if first_bad_atom < num_atoms:
            raise ValueError(
                f"{op}: positions of structure {_structure_of(ptr_h, first_bad_atom)} hold NaN "
                f"or infinite values"
            )
    else:
        cell_h, pbc_h, ptr_h = cell64, pbc, ptr
        if checks:
            bad = _first_bad_structure(x, ptr)
            if bad is not None:
                raise ValueError(f"{op}: positions of structure {bad} hold NaN or infinite values")
    if checks:
        bad = _first_bad_structure(cell_h, None)
        if bad is not None:
            raise ValueError(f"{op}: the cell of structure {bad} holds NaN or infinite values")

    grid_cell = _complete_cell(cell_h, pbc_h)
    determinant = torch.linalg.det(grid_cell)
    # height of the cell along axis a: the distance between the lattice planes
    # spanned by the two other vectors, 1 / |column a of inv(cell)|.
    singular = determinant.abs() <= 1e-12 * grid_cell.norm(dim=(1, 2)).pow(3).clamp(min=1e-300)
    if checks and bool(singular.any()):
        bad = int(torch.nonzero(singular)[0, 0])
        raise ValueError(
            f"{op}: the cell of structure {bad} is singular along its periodic axes "
            f"(pbc {pbc_h[bad].tolist()}, cell {cell_h[bad].tolist()})"
        )
    inv_cell = torch.linalg.inv(grid_cell)
    height = 1.0 / inv_cell.norm(dim=1)  # [B, 3]
    thin = (height < 1e-6) & pbc_h
    if checks and bool(thin.any()):
        bad, axis = (int(v) for v in torch.nonzero(thin)[0])
        raise ValueError(
            f"{op}: the cell of structure {bad} is degenerate: its height along periodic "
            f"axis {axis} is {float(height[bad, axis]):.3g} Å"
        )
    if on_host:
        # one copy to the device; [0] and [1] of a contiguous stack are contiguous
        grid_cell_d, inv_cell_d = torch.stack([grid_cell, inv_cell]).to(device)
    else:
        grid_cell_d, inv_cell_d = grid_cell, inv_cell

    reach = cutoff / height  # the cutoff in fractional units, per axis
    # open structures have the identity as grid cell: their fractional
    # coordinates are the positions (the common case of molecule batches)
    if checks and bool(pbc_h.all()):
        # every axis periodic: the grid spans the cell, low and high go unused
        low = high = torch.zeros_like(reach)
    else:
        if tracing() or bool(pbc_h.any()):
            frac = torch.einsum("nc,nca->na", x, inv_cell_d[segment_ids(ptr, num_atoms)])
        else:
            frac = x
        low, high = _fractional_bounds(frac, ptr, structures, num_atoms)
        if on_host:
            low, high = torch.stack([low, high]).cpu()
    extent = torch.where(pbc_h, torch.ones_like(low), high - low)
    origin = torch.where(pbc_h, torch.zeros_like(low), low)
    bins = torch.clamp(torch.floor(extent / reach), min=1)  # bins >= the cutoff's reach
    # sparse structures: at most ~2 bins per atom
    atoms = ptr_h.diff().to(torch.float64)
    too_many = bins.prod(dim=1) / torch.clamp(2 * atoms, min=8)
    bins = torch.where(
        too_many[:, None] > 1,
        torch.clamp(torch.floor(bins / too_many[:, None].pow(1 / 3)), min=1),
        bins,
    )
    # small open structures: one bin, i.e. all pairs (measured faster for
    # molecules than visiting 27 mostly empty bins per atom)
    brute_force = (atoms <= _BRUTE_FORCE_ATOMS) & ~pbc_h.any(dim=1)
    bins = torch.where(brute_force[:, None], torch.ones_like(bins), bins)
    width = torch.where(pbc_h, 1.0 / bins, torch.maximum(extent / bins, reach))
    search = torch.clamp(torch.ceil(reach / width * (1 + 1e-9)), min=1)

    if checks:
        _check_pair_budget(op, pbc_h, grid_cell, determinant, extent, reach, atoms, search,
                           cutoff, max_neighbors, device)
    if on_host:  # one copy to the device (bins and search are exact integers in float64)
        origin, width, bins, search = torch.stack([origin, width, bins, search]).to(device)
    bins, search = bins.long(), search.long()
    edge_index, shifts, row_ptr = _ops.neighbor_list(
        x, ptr, grid_cell_d, inv_cell_d, pbc, origin, width, bins, search, cutoff,
        bool(self_interaction), -1 if max_neighbors is None else int(max_neighbors),
    )
    return NeighborList(edge_index, shifts, row_ptr)


def _to_host(x, cell64, pbc, ptr):
    """(cell [B, 3, 3], pbc [B, 3], ptr [B + 1], first atom with a non-finite position or N)
    on the CPU, in one device-to-host copy (float64 holds the integers exactly)."""
    num_atoms, structures = x.shape[0], ptr.numel() - 1
    if num_atoms:
        atom = torch.arange(num_atoms, device=x.device)
        first_bad = torch.where(torch.isfinite(x).all(dim=1), num_atoms, atom).amin()
    else:
        first_bad = torch.zeros((), dtype=torch.long, device=x.device)
    packed = torch.cat([
        cell64.reshape(-1), pbc.reshape(-1).to(torch.float64), ptr.to(torch.float64),
        first_bad.reshape(1).to(torch.float64),
    ]).cpu()
    cell_h = packed[:9 * structures].view(structures, 3, 3)
    pbc_h = packed[9 * structures:12 * structures].view(structures, 3) != 0
    ptr_h = packed[12 * structures:13 * structures + 1].long()
    return cell_h, pbc_h, ptr_h, int(packed[-1])


def _fractional_bounds(frac: torch.Tensor, ptr: torch.Tensor, structures: int, num_atoms: int):
    """Per-structure min and max of the fractional coordinates -> (low, high) [B, 3].

    Empty structures give 0. On the CPU, the segment ops (one pass over rows);
    elsewhere parallel reductions (the GPU segment kernels run one thread per
    structure and axis, 3 threads for one structure): amin/amax for a single
    structure, else the scatter ops over the structure index, which follow the
    segment ops' conventions exactly. Minima and maxima are exact, so all give
    the same values; amin/amax may only pick -0.0 for +0.0 (or the reverse),
    which changes no bin: origin enters as floor((f - origin) / width) and
    extent = high - low only through floor(extent / reach) and max(., reach).
    """
    if frac.device.type == "cpu":
        # ptr is already validated: the raw ops skip a second check
        return (torch.ops.pygfm.segment_min(frac, ptr)[0],
                torch.ops.pygfm.segment_max(frac, ptr)[0])
    if structures == 1 and num_atoms > 0:
        return frac.amin(dim=0, keepdim=True), frac.amax(dim=0, keepdim=True)
    structure = segment_ids(ptr, num_atoms)
    return (torch.ops.pygfm.scatter_min(frac, structure, structures)[0],
            torch.ops.pygfm.scatter_max(frac, structure, structures)[0])


def _check_pair_budget(op, pbc, grid_cell, determinant, extent, reach, atoms, search, cutoff,
                       max_neighbors, device):
    """Refuse, before allocating, a search that would not fit in memory."""
    if bool((search > _MAX_IMAGES).any()):
        bad = int(torch.nonzero((search > _MAX_IMAGES).any(dim=1))[0, 0])
        raise ValueError(
            f"{op}: the cutoff {cutoff} Å reaches more than {_MAX_IMAGES} periodic images of "
            f"the cell of structure {bad}: far too many pairs"
        )
    # Volume the atoms occupy: the cell along periodic axes, their extent (at
    # least the cutoff) along the others (rows there are unit vectors).
    volume = determinant.abs() * torch.where(pbc, torch.ones_like(extent),
                                             torch.maximum(extent, reach)).prod(dim=1)
    sphere = 4.0 / 3.0 * math.pi * cutoff**3
    per_atom = atoms / volume * sphere
    per_atom = torch.where(pbc.any(dim=1), per_atom, torch.minimum(per_atom, atoms))
    expected = float((atoms * per_atom).sum())
    if max_neighbors is not None and device.type == "cpu":
        expected = min(expected, float(atoms.sum()) * max_neighbors)
    needed = expected * _BYTES_PER_PAIR
    available = _available_bytes(device)
    if needed > available:
        raise ValueError(
            f"{op}: about {expected:.3g} pairs expected ({needed / 2**30:.1f} GiB), more than "
            f"the {available / 2**30:.1f} GiB of memory available; lower the cutoff or split "
            f"the batch"
        )


def edge_vectors(
    positions: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor,
    cell: torch.Tensor | None = None,
    ptr: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors r_ij = x_j - x_i + S @ cell [E, 3] and lengths |r_ij| [E] (Å).

    Differentiable in ``positions`` and ``cell`` (forces and stress flow through
    here). ``cell`` is [3, 3] or [B, 3, 3]; ``ptr`` [B + 1] maps atoms to
    structures when B > 1. BF16 positions give FP32 vectors (geometry stays at
    least FP32).
    """
    dtype = torch.promote_types(positions.dtype, torch.float32)
    receiver, sender = edge_index[0], edge_index[1]
    vectors = positions[sender].to(dtype) - positions[receiver].to(dtype)
    if cell is not None and shifts.numel() > 0:
        cell = cell.to(dtype)
        offsets = shifts.to(dtype)
        if cell.dim() == 2 or cell.shape[0] == 1:
            vectors = vectors + offsets @ cell.reshape(3, 3)
        else:
            if ptr is None:
                raise ValueError("edge_vectors: a batched cell [B, 3, 3] needs ptr [B + 1]")
            structure = segment_ids(ptr, positions.shape[0])
            vectors = vectors + torch.einsum("ek,ekc->ec", offsets, cell[structure[receiver]])
    return vectors, vectors.norm(dim=1)


@torch.library.register_fake("pygfm::neighbor_list")
def _(positions, ptr, cell, inv_cell, pbc, origin, width, bins, search, cutoff,
      self_interaction, max_neighbors):
    pairs = torch.library.get_ctx().new_dynamic_size()
    long = dict(dtype=torch.long, device=positions.device)
    return (
        torch.empty(2, pairs, **long),
        torch.empty(pairs, 3, **long),
        torch.empty(positions.shape[0] + 1, **long),
    )

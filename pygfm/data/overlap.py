"""Overlapping atoms: pairs closer than :data:`MIN_DISTANCE`, which no model can describe.

PaiNN uses the unit vector r_ij / |r_ij| of every pair; at distance 0 it is 0/0
and the energy, forces and every later training step become NaN. The check
reuses the edge lengths a model computes anyway (:func:`closest_pairs`), so it
costs one comparison per edge; Sample validation (``pygfm-data convert``) runs
its own tiny-cutoff neighbor list (:func:`sample_overlap`).

Why 0.01 Å: it is 50 times below the shortest distance between two nuclei in
any real structure (0.74 Å in H2; compressed hydrogen stays above 0.5 Å), so a
pair below it is a duplicated atom (a site written twice, an atom and its
wrapped copy), never chemistry; and it is 100 times above the float32 noise of
coordinates (~1e-5 Å for positions of ~100 Å), below which r / |r| is noise.
A larger value would flag real inputs of the SC26 screening benchmark
(uniformly random positions): 15% of its structures hold a pair below 0.1 Å,
0.4% below 0.03 Å, none of 4,096 below 0.01 Å.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MIN_DISTANCE", "OverlapError", "closest_pairs", "thin_cells", "sample_overlap",
           "describe_pair"]

MIN_DISTANCE = 0.01  # Å


def describe_pair(first: int, second: int, distance: float) -> str:
    """'atoms 3 and 7 are 0.0000 Å apart ...' (atom indices within the structure)."""
    if first == second:
        what = f"atom {first} is {distance:.4f} Å from its own periodic image"
    else:
        what = f"atoms {first} and {second} are {distance:.4f} Å apart"
    return (f"{what}, closer than {MIN_DISTANCE} Å (overlapping atoms: the model is "
            "undefined there)")


class OverlapError(ValueError):
    """A structure with two atoms (or an atom and its image) closer than MIN_DISTANCE.

    ``structure``: its index in the batch or list; ``atoms``: (i, j) within the
    structure; ``distance`` in Å; ``formula``: its chemical formula.
    """

    def __init__(self, structure: int, atoms: tuple[int, int], distance: float,
                 formula: str = "", where: str | None = None):
        self.structure, self.atoms = int(structure), (int(atoms[0]), int(atoms[1]))
        self.distance, self.formula = float(distance), formula
        where = where or f"structure {self.structure}" + (f" ({formula})" if formula else "")
        super().__init__(f"{where}: {describe_pair(*self.atoms, self.distance)}")

    def renamed(self, structure: int | None = None, where: str | None = None) -> "OverlapError":
        """The same overlap under another index (a list offset) or description."""
        return OverlapError(self.structure if structure is None else structure, self.atoms,
                            self.distance, self.formula, where)


def closest_pairs(edge_index: torch.Tensor, lengths: torch.Tensor, ptr: torch.Tensor,
                  threshold: float = MIN_DISTANCE) -> dict[int, tuple[int, int, float]]:
    """{structure b: (i, j, distance Å)} for every structure with a pair closer than
    ``threshold``: its closest such pair, i and j counted within the structure.

    edge_index [2, E] (global atom indices), lengths [E] (Å), ptr [B + 1].
    One host copy of the few close edges; empty dict when there are none.
    """
    close = torch.nonzero(lengths.detach() < threshold).reshape(-1)
    if close.numel() == 0:
        return {}
    pairs = edge_index[:, close].cpu()
    distance = lengths.detach()[close].double().cpu()
    ptr = ptr.cpu()
    owner = torch.searchsorted(ptr, pairs[0], right=True) - 1
    found: dict[int, tuple[int, int, float]] = {}
    for k in torch.argsort(distance, stable=True).tolist():  # closest pair first
        b = int(owner[k])
        if b not in found:
            start = int(ptr[b])
            found[b] = (int(pairs[0, k]) - start, int(pairs[1, k]) - start, float(distance[k]))
    return found


def thin_cells(cell: np.ndarray, pbc: np.ndarray) -> dict[int, tuple[int, float]]:
    """{structure b: (axis, height Å)} for cells thinner than MIN_DISTANCE along a
    periodic axis: every atom then lies within that height of its own image (for a
    reduced cell), and a neighbor list at a model's cutoff would hold millions of
    images. cell [B, 3, 3] (rows are lattice vectors), pbc [B, 3]."""
    cell = np.asarray(cell, dtype=np.float64).reshape(-1, 3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
    found = {}
    for b in np.flatnonzero(pbc.any(axis=1)):
        rows = cell[b]
        for axis in np.flatnonzero(pbc[b]):
            # distance between the lattice planes spanned by the other two vectors
            others = rows[[a for a in range(3) if a != axis]]
            normal = np.cross(others[0], others[1])
            norm = np.linalg.norm(normal)
            height = abs(rows[axis] @ normal) / norm if norm > 0 \
                else np.linalg.norm(rows[axis])
            if height < MIN_DISTANCE:
                found[int(b)] = (int(axis), float(height))
                break
    return found


def _completed_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """[3, 3]: the periodic rows of ``cell``, the others replaced by unit vectors
    orthogonal to every row before them (they only make the matrix invertible)."""
    rows = [cell[a] if pbc[a] else None for a in range(3)]
    for a in range(3):
        if rows[a] is None:
            known = [r for r in rows if r is not None]
            candidates = np.eye(3) - sum((np.outer(np.eye(3) @ r, r) / (r @ r)
                                          for r in _orthogonal(known)), np.zeros((3, 3)))
            best = candidates[np.argmax(np.linalg.norm(candidates, axis=1))]
            rows[a] = best / np.linalg.norm(best)
    return np.stack(rows)


def _orthogonal(vectors):
    """Gram-Schmidt: an orthogonal set spanning ``vectors``."""
    out = []
    for v in vectors:
        for u in out:
            v = v - (v @ u) / (u @ u) * u
        if np.linalg.norm(v) > 1e-12:
            out.append(v)
    return out


_BRUTE_FORCE_ATOMS = 96  # up to this many atoms (and images) all pairs are measured


def _close_pairs(x: np.ndarray) -> np.ndarray:
    """[K, 2] index pairs (i < j) of the points ``x`` closer than MIN_DISTANCE."""
    if len(x) < 2:
        return np.empty((0, 2), dtype=np.int64)
    if len(x) <= _BRUTE_FORCE_ATOMS:
        diff = x[:, None, :] - x[None, :, :]
        close = np.einsum("ijk,ijk->ij", diff, diff) < MIN_DISTANCE ** 2
        i, j = np.nonzero(np.triu(close, k=1))
        return np.stack([i, j], axis=1)
    from scipy.spatial import cKDTree

    return cKDTree(x).query_pairs(MIN_DISTANCE, output_type="ndarray")


def _shifts(pbc: np.ndarray) -> np.ndarray:
    steps = [(-1, 0, 1) if periodic else (0,) for periodic in pbc]
    shifts = np.array(np.meshgrid(*steps)).reshape(3, -1).T
    return shifts[shifts.any(axis=1)]


def sample_overlap(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray):
    """(i, j, distance Å) of the closest pair below MIN_DISTANCE in one structure
    (periodic images included), or None. positions [n, 3], cell [3, 3], pbc [3].

    ``pygfm-data convert`` checks every sample, so this is kept to ~10-30 µs for
    a structure of tens of atoms (all pairs measured at once in numpy; a
    k-d tree above 96 points). Atoms are wrapped into the cell, so a pair within
    MIN_DISTANCE, less than one cell height, lies at a shift S in {-1, 0, 1}^3,
    and only atoms within MIN_DISTANCE of a periodic face (almost never any) get
    images.
    """
    positions = np.asarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    x, owner = positions, np.arange(len(positions))
    if pbc.any():
        cell = np.asarray(cell, dtype=np.float64)
        if pbc.all():  # the common case, without the general cell completion
            basis = cell
            inverse = np.linalg.inv(basis)
            # the height of the cell along axis a is 1 / |column a of the inverse|
            heights = 1.0 / np.linalg.norm(inverse, axis=0)
            if heights.min() < MIN_DISTANCE:
                return 0, 0, float(heights.min())
        else:
            thin = thin_cells(cell[None], pbc[None])
            if thin:
                return 0, 0, thin[0][1]
            basis = _completed_cell(cell, pbc)
            inverse = np.linalg.inv(basis)
        frac = positions @ inverse
        frac[:, pbc] -= np.floor(frac[:, pbc])
        x = frac @ basis
        # images that can come within MIN_DISTANCE of an atom: those of atoms
        # within reach (in fractional units) of a periodic face
        reach = MIN_DISTANCE * np.linalg.norm(inverse, axis=0)
        low, high = (frac < reach) & pbc, (frac > 1 - reach) & pbc
        border = np.flatnonzero((low | high).any(axis=1))
        if border.size:
            images, owners = [x], [owner]
            for shift in _shifts(pbc):
                near = np.all(np.where(shift == 1, low[border], True)
                              & np.where(shift == -1, high[border], True), axis=1)
                if near.any():
                    images.append(x[border[near]] + shift @ basis)
                    owners.append(border[near])
            x, owner = np.concatenate(images), np.concatenate(owners)
    pairs = _close_pairs(x)
    if len(pairs) == 0:
        return None
    n = len(positions)
    # an atom and its own image is a pair only when the image is not the atom itself
    pairs = pairs[(pairs.min(axis=1) < n) & ~((pairs[:, 0] < n) & (pairs[:, 1] < n)
                                               & (owner[pairs[:, 0]] == owner[pairs[:, 1]]))]
    if len(pairs) == 0:
        return None
    distance = np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1)
    k = int(np.argmin(distance))
    i, j = sorted((int(owner[pairs[k, 0]]), int(owner[pairs[k, 1]])))
    return i, j, float(distance[k])

"""Per-dataset normalization statistics: per-element reference energies fitted by
least squares, the energy scale left after them, and force and stress scales.

A model predicts E = Σ_atoms (scale · ε_i + e_ref[Z_i]); fitting e_ref first leaves
a residual of order 0.1 eV/atom instead of several eV/atom, so one set of heads
can train on datasets whose absolute energies differ by whole reference states.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .block import SampleBlock
from .sample import MAX_ATOMIC_NUMBER

__all__ = ["compute_statistics", "reference_energies"]


def _blocks(source, chunk: int) -> Iterable[SampleBlock]:
    if isinstance(source, SampleBlock):
        yield source
    elif hasattr(source, "read_block"):
        for start in range(0, len(source), chunk):
            yield source.read_block(start, min(start + chunk, len(source)))
    else:
        yield from source


def _composition(block: SampleBlock) -> np.ndarray:
    """[S, 119] atom counts per element."""
    a = block.arrays
    owner = np.repeat(np.arange(len(block)), a["atom_count"])
    counts = np.zeros((len(block), MAX_ATOMIC_NUMBER + 1))
    np.add.at(counts, (owner, a["numbers"].astype(np.int64)), 1.0)
    return counts


def reference_energies(normal_matrix: np.ndarray, moment: np.ndarray,
                       present: np.ndarray) -> tuple[np.ndarray, int]:
    """Least-squares e_ref over the elements in ``present`` from AᵀA and Aᵀb.

    Returns ([119] e_ref with zeros for absent elements, rank of the fit).
    Where compositions cannot tell elements apart (e.g. only H2O), the fit has
    a lower rank and the minimum-norm solution (in eV) is taken.
    """
    columns = np.flatnonzero(present)
    reference = np.zeros(MAX_ATOMIC_NUMBER + 1)
    if len(columns) == 0:
        return reference, 0
    normal = normal_matrix[np.ix_(columns, columns)]
    # scale columns so that the rank test compares like with like
    norm = np.sqrt(np.diag(normal))
    scaled = normal / np.outer(norm, norm)
    values, vectors = np.linalg.eigh(scaled)
    keep = values > 1e-10 * max(values.max(), 0.0)
    solution = vectors[:, keep] @ ((vectors[:, keep].T @ (moment[columns] / norm))
                                   / values[keep]) / norm
    # the scaled pseudo-inverse is minimum-norm in scaled units; remove the part of the
    # solution along the null space of AᵀA so that it is minimum-norm in eV
    null = vectors[:, ~keep] / norm[:, None]
    if null.shape[1]:
        solution -= null @ np.linalg.lstsq(null, solution, rcond=None)[0]
    reference[columns] = solution
    return reference, int(keep.sum())


def compute_statistics(source, chunk: int = 8192) -> dict:
    """Statistics of a dataset (or a SampleBlock, or an iterable of blocks).

    Returns a JSON-ready dict: counts; ``elements``; ``reference_energies``
    {symbol: eV} fitted on the samples with energies; ``energy_scale`` (eV/atom,
    the RMS of the per-atom residual after the references); ``energy_per_atom``
    mean/std before the fit; ``force_rms`` (eV/Å, over force components);
    ``stress_rms`` (eV/Å³); atoms per sample.
    """
    from ase.data import chemical_symbols

    normal = np.zeros((MAX_ATOMIC_NUMBER + 1,) * 2)
    moment = np.zeros(MAX_ATOMIC_NUMBER + 1)
    present = np.zeros(MAX_ATOMIC_NUMBER + 1, dtype=bool)
    samples = atoms = with_energy = 0
    per_atom_sum = per_atom_sq = 0.0
    force_sq = force_components = stress_sq = stress_components = 0.0
    atom_min, atom_max = np.inf, 0
    if not (hasattr(source, "read_block") or isinstance(source, SampleBlock)):
        source = list(source)  # an iterable of blocks: kept for the second pass
    for block in _blocks(source, chunk):
        a = block.arrays
        counts = a["atom_count"]
        samples += len(block)
        atoms += int(counts.sum())
        if len(block):
            atom_min, atom_max = min(atom_min, int(counts.min())), max(atom_max, int(counts.max()))
        present[np.unique(a["numbers"])] = True
        if "has_energy" in a:
            mask = a["has_energy"].astype(bool)
            composition = _composition(block)[mask]
            energy = a["energy"][mask]
            normal += composition.T @ composition
            moment += composition.T @ energy
            with_energy += int(mask.sum())
            per_atom = energy / counts[mask]
            per_atom_sum += float(per_atom.sum())
            per_atom_sq += float((per_atom ** 2).sum())
        if "has_forces" in a:
            atom_mask = np.repeat(a["has_forces"].astype(bool), counts)
            force_sq += float((a["forces"][atom_mask] ** 2).sum())
            force_components += 3 * int(atom_mask.sum())
        if "has_stress" in a:
            mask = a["has_stress"].astype(bool)
            stress_sq += float((a["stress"][mask] ** 2).sum())
            stress_components += 9 * int(mask.sum())

    fitted = np.zeros(MAX_ATOMIC_NUMBER + 1, dtype=bool)
    fitted[np.flatnonzero(np.diag(normal) > 0)] = True
    reference, rank = reference_energies(normal, moment, fitted)
    residual_sq = 0.0
    if with_energy:
        for block in _blocks(source, chunk):
            a = block.arrays
            if "has_energy" not in a:
                continue
            mask = a["has_energy"].astype(bool)
            predicted = _composition(block)[mask] @ reference
            residual = (a["energy"][mask] - predicted) / a["atom_count"][mask]
            residual_sq += float((residual ** 2).sum())

    def rms(total, count):
        return float(np.sqrt(total / count)) if count else None

    mean = per_atom_sum / with_energy if with_energy else None
    return {
        "num_samples": samples, "num_atoms": atoms,
        "atoms_per_sample": {"min": int(atom_min) if samples else None,
                             "max": int(atom_max) if samples else None,
                             "mean": atoms / samples if samples else None},
        "elements": [chemical_symbols[z] for z in np.flatnonzero(present)],
        "samples_with_energy": with_energy,
        "reference_energies": {chemical_symbols[z]: float(reference[z])
                               for z in np.flatnonzero(fitted)},
        "reference_fit_rank": rank, "reference_fit_elements": int(fitted.sum()),
        "energy_per_atom": {"mean": mean,
                            "std": float(np.sqrt(max(per_atom_sq / with_energy - mean ** 2, 0.0)))
                            if with_energy else None},
        "energy_scale": rms(residual_sq, with_energy),
        "force_rms": rms(force_sq, force_components),
        "stress_rms": rms(stress_sq, stress_components),
        "units": {"energy": "eV", "energy_scale": "eV/atom", "force_rms": "eV/Å",
                  "stress_rms": "eV/Å^3"},
    }

"""Normalization statistics (pygfm/data/statistics.py) against hand computations:
per-element reference energies by least squares, energy scale, force and stress RMS."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.data import chemical_symbols

from pygfm.data import Sample, SampleBlock, write_dataset
from pygfm.data.statistics import compute_statistics, reference_energies

TRUE_REFERENCES = {1: -13.6, 6: -1029.8, 8: -2040.5, 29: -45000.25}


def synthetic(n=200, seed=0, noise=0.0, elements=tuple(TRUE_REFERENCES), forces=True,
              energy_every=1):
    """Samples with random compositions and energies Σ e_Z + noise; forces random."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        count = int(rng.integers(1, 12))
        numbers = rng.choice(elements, size=count)
        energy = sum(TRUE_REFERENCES.get(int(z), 0.0) for z in numbers)
        energy += noise * rng.normal()
        out.append(Sample(numbers=numbers, positions=rng.normal(size=(count, 3)) * 3,
                          energy=energy if k % energy_every == 0 else None,
                          forces=rng.normal(size=(count, 3)) if forces and k % 3 else None,
                          stress=rng.normal(size=(3, 3)) if k % 4 == 0 else None))
    return out


def composition(samples, elements):
    return np.array([[np.sum(s.numbers == z) for z in elements] for s in samples], float)


def test_exact_references_are_recovered():
    samples = synthetic()
    stats = compute_statistics(SampleBlock.from_samples(samples))
    refs = stats["reference_energies"]
    assert list(refs) == ["H", "C", "O", "Cu"]  # by atomic number
    for z, value in TRUE_REFERENCES.items():
        assert refs[chemical_symbols[z]] == pytest.approx(value, abs=1e-8)
    assert stats["reference_fit_rank"] == stats["reference_fit_elements"] == 4
    assert stats["energy_scale"] < 1e-9


@pytest.mark.parametrize("noise", [1e-3, 0.05])
def test_references_with_noise_match_least_squares(noise):
    samples = synthetic(n=400, seed=1, noise=noise)
    stats = compute_statistics(SampleBlock.from_samples(samples))
    elements = sorted(TRUE_REFERENCES)
    A = composition(samples, elements)
    E = np.array([s.energy for s in samples])
    solution = np.linalg.lstsq(A, E, rcond=None)[0]
    for z, expected, true in zip(elements, solution, (TRUE_REFERENCES[z] for z in elements)):
        got = stats["reference_energies"][chemical_symbols[z]]
        assert got == pytest.approx(expected, abs=1e-8 * max(1.0, abs(expected)))
        assert abs(got - true) < 10 * noise  # recovered within the noise
    # energy scale: the RMS over samples of the per-atom residual, by hand
    counts = A.sum(axis=1)
    residual = (E - A @ np.array([stats["reference_energies"][chemical_symbols[z]]
                                  for z in elements])) / counts
    assert stats["energy_scale"] == pytest.approx(np.sqrt(np.mean(residual ** 2)), rel=1e-6)
    assert 0 < stats["energy_scale"] < noise
    per_atom = E / counts
    assert stats["energy_per_atom"]["mean"] == pytest.approx(per_atom.mean(), rel=1e-12)
    assert stats["energy_per_atom"]["std"] == pytest.approx(per_atom.std(), rel=1e-9)


def test_counts_forces_and_stress_by_hand():
    samples = synthetic(n=50, seed=2)
    stats = compute_statistics(SampleBlock.from_samples(samples))
    counts = np.array([s.num_atoms for s in samples])
    assert stats["num_samples"] == 50 and stats["num_atoms"] == counts.sum()
    assert stats["atoms_per_sample"] == {"min": counts.min(), "max": counts.max(),
                                         "mean": pytest.approx(counts.mean())}
    assert stats["elements"] == ["H", "C", "O", "Cu"]
    assert stats["samples_with_energy"] == 50
    forces = np.concatenate([s.forces for s in samples if s.forces is not None])
    assert len(forces) < counts.sum()  # some samples have none: they must not count
    assert stats["force_rms"] == pytest.approx(np.sqrt(np.mean(forces ** 2)), rel=1e-12)
    stress = np.stack([s.stress for s in samples if s.stress is not None])
    assert stats["stress_rms"] == pytest.approx(np.sqrt(np.mean(stress ** 2)), rel=1e-12)
    assert stats["units"]["force_rms"] == "eV/Å"
    json.dumps(stats)  # JSON-ready


def test_elements_without_energies_get_no_reference():
    with_energy = synthetic(n=40, seed=3, elements=(1, 8))
    without = [Sample(numbers=[79, 1], positions=[[0, 0, 0], [1, 0, 0]], forces=np.ones((2, 3))),
               Sample(numbers=[6], positions=[[0, 0, 0]])]
    stats = compute_statistics(SampleBlock.from_samples(with_energy + without))
    assert stats["elements"] == ["H", "C", "O", "Au"]
    assert set(stats["reference_energies"]) == {"H", "O"}
    assert stats["reference_fit_elements"] == 2 and stats["reference_fit_rank"] == 2
    assert stats["samples_with_energy"] == 40
    assert stats["reference_energies"]["O"] == pytest.approx(TRUE_REFERENCES[8], abs=1e-8)


def test_rank_deficient_compositions_give_the_minimum_norm_solution():
    """Only (H2O)_m: H and O cannot be told apart; any e_H, e_O with 2 e_H + e_O = e
    fits, and the minimum-norm one is e (2, 1) / 5."""
    rng = np.random.default_rng(4)
    samples, per_formula = [], -2067.0
    for k in range(30):
        m = int(rng.integers(1, 5))
        numbers = np.tile([8, 1, 1], m)
        samples.append(Sample(numbers=numbers, positions=rng.normal(size=(3 * m, 3)),
                              energy=m * per_formula + 1e-3 * rng.normal()))
    stats = compute_statistics(SampleBlock.from_samples(samples))
    refs = stats["reference_energies"]
    assert stats["reference_fit_rank"] == 1 < stats["reference_fit_elements"] == 2
    assert np.isfinite([refs["H"], refs["O"]]).all()
    A = composition(samples, [1, 8])
    E = np.array([s.energy for s in samples])
    minimum_norm = np.linalg.lstsq(A, E, rcond=None)[0]
    assert refs["H"] == pytest.approx(minimum_norm[0], rel=1e-9)
    assert refs["O"] == pytest.approx(minimum_norm[1], rel=1e-9)
    assert 2 * refs["H"] + refs["O"] == pytest.approx(per_formula, abs=1e-3)
    assert stats["energy_scale"] < 1e-3


def test_reference_energies_directly():
    # a full-rank fit with wildly different element frequencies
    A = np.zeros((6, 119))
    A[:, 1] = [100, 200, 300, 50, 10, 1000]
    A[:, 92] = [0, 0, 1, 0, 1, 0]
    A[:, 6] = [1, 0, 0, 2, 0, 0]
    e = np.zeros(119)
    e[[1, 6, 92]] = [-0.5, -150.0, -9000.0]
    present = A.any(axis=0)
    ref, rank = reference_energies(A.T @ A, A.T @ (A @ e), present)
    assert rank == 3
    np.testing.assert_allclose(ref[[1, 6, 92]], e[[1, 6, 92]], rtol=1e-9)
    assert not ref[~present].any()
    ref, rank = reference_energies(A.T @ A, A.T @ (A @ e), np.zeros(119, bool))
    assert rank == 0 and not ref.any()


def test_no_energies_at_all(tmp_path):
    samples = synthetic(n=20, seed=5, energy_every=10**9)
    samples[0].energy = None
    stats = compute_statistics(SampleBlock.from_samples(samples))
    dataset = write_dataset(tmp_path / "d", samples, name="d", fidelity="x")
    assert dataset.labels == ["forces", "stress"]
    assert dataset.statistics == json.loads(json.dumps(stats))
    assert stats["samples_with_energy"] == 0
    assert stats["reference_energies"] == {} and stats["reference_fit_rank"] == 0
    assert stats["energy_scale"] is None
    assert stats["energy_per_atom"] == {"mean": None, "std": None}
    assert stats["force_rms"] > 0
    bare = [Sample(numbers=[1], positions=[[0, 0, 0]])]
    stats = compute_statistics(SampleBlock.from_samples(bare))
    assert stats["force_rms"] is None and stats["stress_rms"] is None
    assert stats["num_samples"] == 1 and stats["elements"] == ["H"]


def test_every_kind_of_source_gives_the_same(tmp_path):
    samples = synthetic(n=60, seed=6, noise=0.01, energy_every=2)
    block = SampleBlock.from_samples(samples)
    expected = compute_statistics(block)
    parts = [block.select(np.arange(i, min(i + 7, 60))) for i in range(0, 60, 7)]
    dataset = write_dataset(tmp_path / "d", samples, name="d", fidelity="x", shard_size=9)
    for source, chunk in ((parts, 8192), (iter(parts), 8192), (dataset, 5), (dataset, 8192)):
        got = compute_statistics(source, chunk=chunk)
        assert got.keys() == expected.keys()
        for key in ("num_samples", "num_atoms", "elements", "samples_with_energy",
                    "reference_fit_rank", "atoms_per_sample"):
            assert got[key] == expected[key], key
        for key in ("energy_scale", "force_rms", "stress_rms"):
            assert got[key] == pytest.approx(expected[key], rel=1e-9), key
        for symbol, value in expected["reference_energies"].items():
            assert got["reference_energies"][symbol] == pytest.approx(value, rel=1e-9)
    assert dataset.statistics["num_samples"] == 60
    assert dataset.statistics["samples_with_energy"] == 30

"""The overlap check of every converted sample (pygfm.data.overlap.sample_overlap)
against ASE's neighbor list at the same tiny cutoff, on random molecules and
skewed, partly periodic cells with duplicated atoms planted across cell faces."""

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list
from hypothesis import given, settings
from hypothesis import strategies as st

from pygfm.data.overlap import MIN_DISTANCE, sample_overlap


def _reference(positions, cell, pbc):
    atoms = Atoms(numbers=np.ones(len(positions)), positions=positions, cell=cell, pbc=pbc)
    i, j, d = neighbor_list("ijd", atoms, MIN_DISTANCE)
    if len(d) == 0:
        return None
    return float(d.min()), {tuple(sorted(p)) for p, dist in zip(zip(i, j), d)
                            if dist == d.min()}


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 140),
       pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       planted=st.integers(0, 3), skew=st.floats(0.0, 0.6))
def test_sample_overlap_matches_ase(seed, n, pbc, planted, skew):
    rng = np.random.default_rng(seed)
    # atoms of ~2 Å spacing, so that only planted pairs come within 0.01 Å
    length = 2.0 * max(n, 2) ** (1 / 3)
    cell = np.diag(rng.uniform(0.8, 1.2, 3) * length)
    cell[1, 0], cell[2, 0], cell[2, 1] = skew * length * rng.uniform(-1, 1, 3)
    grid = np.stack(np.meshgrid(*[np.arange(6)] * 3), -1).reshape(-1, 3)[:n]
    frac = (grid + rng.uniform(-0.1, 0.1, grid.shape)) / np.ceil(max(n, 2) ** (1 / 3))
    positions = frac @ cell
    for _ in range(min(planted, n - 1)):
        a, b = rng.choice(n, 2, replace=False)
        if rng.random() < 0.6:  # a at a corner of the cell: b then lies across a face
            corner = np.where(pbc, rng.uniform(-1e-4, 1e-4, 3), np.linalg.solve(
                cell.T, positions[a]))
            positions[a] = corner @ cell
        offset = rng.normal(size=3)
        offset *= rng.uniform(0.0005, 0.02) / np.linalg.norm(offset)
        # b lands next to a, or next to an image of a across a periodic face
        shift = np.array([rng.integers(-1, 2) if p else 0 for p in pbc])
        positions[b] = positions[a] + offset + shift @ cell
    expected = _reference(positions, cell, pbc)
    found = sample_overlap(positions, cell, np.array(pbc))
    if expected is None:
        assert found is None
    else:
        assert found is not None
        distance, pairs = expected
        assert found[2] == pytest.approx(distance, rel=1e-9, abs=1e-12)
        assert (found[0], found[1]) in pairs


def test_atoms_on_opposite_faces_of_a_skewed_cell():
    cell = np.array([[5.0, 0, 0], [2.0, 5.0, 0], [1.0, 1.5, 6.0]])
    positions = np.array([[0.001, 0.001, 0.001], [3.0, 3.0, 3.0]])
    positions = np.concatenate([positions, [positions[0] + cell[0] + cell[1] + cell[2]
                                            - [0.003, 0.0, 0.0]]])
    i, j, d = sample_overlap(positions, cell, np.array([True, True, True]))
    assert (i, j) == (0, 2) and d == pytest.approx(0.003)
    assert sample_overlap(positions, cell, np.array([False, False, False])) is None

"""iread_structures: compressed structure files read like plain ones."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
import ase.io

from pygfm.data.ase_input import COMPRESSIONS, iread_structures


def _frames(count=12):
    out = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 1 + k % 3))
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        out.append(atoms)
    return out


@pytest.mark.parametrize("suffix", sorted(COMPRESSIONS))
def test_compressed_files_read_like_plain_ones(tmp_path, suffix):
    frames = _frames()
    plain = tmp_path / "frames.extxyz"
    ase.io.write(plain, frames)
    packed = tmp_path / f"frames.extxyz{suffix}"
    with COMPRESSIONS[suffix](packed, "wb") as handle:
        handle.write(plain.read_bytes())
    expected = list(iread_structures(plain))
    got = list(iread_structures(packed))
    assert len(got) == len(frames) == len(expected)
    for a, b, original in zip(got, expected, frames):
        assert np.array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy() \
            == pytest.approx(original.get_potential_energy(), rel=1e-12)
        assert np.array_equal(a.get_forces(), b.get_forces())
    assert [a.positions.shape[0] for a in iread_structures(packed, index="3:6")] == \
        [len(f) for f in frames[3:6]]

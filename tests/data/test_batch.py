"""AtomicBatch with labels: collate (blocks or samples), from_ase, to_ase, .to(dtype),
and that EnergyModel runs on a collated batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from _structures import emt_label, mixed_structures
from pygfm.data import AtomicBatch, Sample, SampleBlock, collate, from_ase
from pygfm.nn import EnergyModel, PaiNN


def samples(n=12, seed=2):
    return [Sample.from_ase(a) for a in mixed_structures(n, seed)]


def three_blocks():
    """Blocks with different label sets: energy only / forces+stress / nothing."""
    a = [Sample.from_ase(emt_label(molecule("CH4"), ("energy",)), index=4),
         Sample.from_ase(emt_label(molecule("H2O"), ("energy",)), index=9)]
    cu = bulk("Cu", cubic=True)
    cu.rattle(0.05, seed=0)
    b = [Sample.from_ase(emt_label(cu, ("forces", "stress")), index=0)]
    c = [Sample.from_ase(molecule("NH3"), index=2), Sample.from_ase(molecule("CO"), index=3)]
    return [SampleBlock.from_samples(part) for part in (a, b, c)], a + b + c


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_collate_blocks_with_different_labels(dtype):
    blocks, flat = three_blocks()
    batch = collate(blocks, dataset=[0, 5, 2], dtype=dtype)
    counts = [s.num_atoms for s in flat]
    assert batch.num_structures == 5 and batch.num_atoms == sum(counts)
    assert batch.ptr.dtype == torch.int64
    assert batch.ptr.tolist() == np.concatenate(([0], np.cumsum(counts))).tolist()
    assert batch.dataset.tolist() == [0, 0, 5, 2, 2]
    assert batch.sample_id.tolist() == [4, 9, 0, 2, 3]
    assert batch.numbers.dtype == torch.int64 and batch.pbc.dtype == torch.bool
    for name in ("positions", "cell", "energy", "forces", "stress"):
        assert getattr(batch, name).dtype == dtype, name
    for name in ("energy_mask", "forces_mask", "stress_mask"):
        assert getattr(batch, name).dtype == torch.bool and getattr(batch, name).shape == (5,)
    assert batch.energy_mask.tolist() == [True, True, False, False, False]
    assert batch.forces_mask.tolist() == [False, False, True, False, False]
    assert batch.stress_mask.tolist() == [False, False, True, False, False]
    assert batch.energy.shape == (5,) and batch.forces.shape == (sum(counts), 3)
    assert batch.stress.shape == (5, 3, 3)
    tolerance = dict(rtol=0, atol=0) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    for b, sample in enumerate(flat):
        rows = slice(int(batch.ptr[b]), int(batch.ptr[b + 1]))
        assert batch.numbers[rows].tolist() == sample.numbers.tolist()
        torch.testing.assert_close(batch.positions[rows].double(),
                                   torch.from_numpy(sample.positions), **tolerance)
        torch.testing.assert_close(batch.cell[b].double(), torch.from_numpy(sample.cell),
                                   **tolerance)
        assert batch.pbc[b].tolist() == sample.pbc.tolist()
        if sample.energy is None:
            assert batch.energy[b] == 0
        else:
            torch.testing.assert_close(batch.energy[b].double(),
                                       torch.tensor(sample.energy, dtype=torch.float64),
                                       **tolerance)
        if sample.forces is None:
            assert not batch.forces[rows].any()
        else:
            torch.testing.assert_close(batch.forces[rows].double(),
                                       torch.from_numpy(sample.forces), **tolerance)
        if sample.stress is None:
            assert not batch.stress[b].any()
        else:
            torch.testing.assert_close(batch.stress[b].double(),
                                       torch.from_numpy(sample.stress), **tolerance)
    assert (batch.structure_index().bincount() == torch.tensor(counts)).all()


def test_collate_samples_and_dataset_argument():
    items = samples()
    batch = collate(items)
    assert batch.dataset.tolist() == [0] * len(items)
    assert batch.sample_id.tolist() == list(range(len(items)))  # positions when no index
    assert collate(items, dataset=3).dataset.tolist() == [3] * len(items)
    block = SampleBlock.from_samples(items)
    same = collate(block, dataset=1)
    assert same.dataset.tolist() == [1] * len(items)
    for name in ("positions", "cell", "ptr", "energy", "energy_mask", "forces", "forces_mask",
                 "stress", "stress_mask", "numbers", "pbc"):
        assert torch.equal(getattr(batch, name), getattr(same, name)), name


def test_collate_without_any_label():
    items = [Sample.from_ase(molecule("H2O")), Sample.from_ase(molecule("C6H6"))]
    batch = collate(items, dtype=torch.float32)
    assert not batch.energy_mask.any() and not batch.forces_mask.any()
    assert not batch.stress_mask.any()
    assert batch.energy.shape == (2,) and batch.forces.shape == (15, 3)
    assert batch.stress.shape == (2, 3, 3) and batch.stress.dtype == torch.float32
    assert not batch.energy.any() and not batch.forces.any() and not batch.stress.any()


def test_collate_errors():
    with pytest.raises(ValueError, match="no structures"):
        collate([])
    with pytest.raises(ValueError, match="no structures"):
        collate(SampleBlock.from_samples([]))
    blocks, _ = three_blocks()
    with pytest.raises(ValueError, match="2 dataset indices for 3 blocks"):
        collate(blocks, dataset=[0, 1])


def test_from_ase_and_to_ase_round_trip():
    atoms_list = mixed_structures(14, seed=8) + [emt_label(bulk("Ni", cubic=True))]
    batch = from_ase(atoms_list, dataset=2)
    assert batch.dataset.tolist() == [2] * 15 and batch.sample_id.tolist() == list(range(15))
    back = batch.to_ase(dataset_names=["a", "b", "c"])
    assert len(back) == 15
    for k, (original, atoms) in enumerate(zip(atoms_list, back)):
        np.testing.assert_array_equal(atoms.numbers, original.numbers)
        np.testing.assert_array_equal(atoms.positions, original.positions)
        np.testing.assert_array_equal(atoms.cell.array, original.cell.array)
        np.testing.assert_array_equal(atoms.pbc, original.pbc)
        assert atoms.info == {"dataset": "c", "index": k}
        expected = {} if original.calc is None else original.calc.results
        got = {} if atoms.calc is None else atoms.calc.results
        assert set(got) == set(expected)  # masked labels are left out
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value)
    assert any(a.calc is None for a in back) and any("stress" in a.calc.results
                                                     for a in back if a.calc)


def test_to_ase_without_names_and_in_float32():
    atoms_list = [emt_label(molecule("CH4"), ("energy", "forces")), molecule("H2O")]
    batch = from_ase(atoms_list).to(dtype=torch.float32)
    back = batch.to_ase()
    assert back[0].info == {"index": 0}
    np.testing.assert_allclose(back[0].positions, atoms_list[0].positions, atol=1e-6)
    assert back[0].get_potential_energy() == pytest.approx(
        atoms_list[0].get_potential_energy(), rel=1e-6)
    assert back[1].calc is None


def test_from_ase_labels_and_errors():
    water = molecule("H2O")
    water.info["my_energy"] = -14.0
    batch = from_ase([water], energy_key="my_energy")
    assert batch.energy.tolist() == [-14.0] and batch.energy_mask.tolist() == [True]
    with pytest.raises(ValueError, match="no structures"):
        from_ase([])
    bad = molecule("H2O")
    bad.positions[1, 0] = np.nan
    with pytest.raises(ValueError, match="sample 1: positions contain NaN"):
        from_ase([molecule("H2O"), bad])
    with pytest.raises(TypeError, match="sample 0 is a str"):
        from_ase(["H2O"])


def test_to_changes_every_float_field_and_keeps_the_rest():
    blocks, _ = three_blocks()
    batch = collate(blocks, dataset=[1, 2, 3])
    single = batch.to(dtype=torch.float32)
    for name in ("positions", "cell", "energy", "forces", "stress"):
        assert getattr(single, name).dtype == torch.float32, name
        torch.testing.assert_close(getattr(single, name).double(), getattr(batch, name),
                                   rtol=1e-6, atol=1e-6)
    for name in ("numbers", "ptr", "dataset", "sample_id"):
        assert getattr(single, name).dtype == torch.int64, name
        assert torch.equal(getattr(single, name), getattr(batch, name))
    for name in ("pbc", "energy_mask", "forces_mask", "stress_mask"):
        assert getattr(single, name).dtype == torch.bool, name
        assert torch.equal(getattr(single, name), getattr(batch, name))
    assert batch.positions.dtype == torch.float64  # the original is unchanged (frozen)
    moved = batch.to("cpu")
    assert moved.energy.dtype == torch.float64 and torch.equal(moved.forces, batch.forces)
    # a batch without labels (from_atoms) moves too
    plain = AtomicBatch.from_atoms([molecule("H2O")]).to(dtype=torch.float32)
    assert plain.energy is None and plain.positions.dtype == torch.float32


def test_energy_model_runs_on_a_collated_batch():
    torch.manual_seed(0)
    model = EnergyModel(PaiNN(8, 2, cutoff=4.0, n_rbf=6)).double()
    atoms_list = mixed_structures(6, seed=5)
    batch = from_ase(atoms_list)
    out = model(batch, forces=True)
    assert out["energy"].shape == (6,) and out["forces"].shape == (batch.num_atoms, 3)
    assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all()
    # the same as on the geometry-only batch: labels do not enter the forward pass
    plain = model(AtomicBatch.from_atoms(atoms_list), forces=True)
    torch.testing.assert_close(out["energy"], plain["energy"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["forces"], plain["forces"], rtol=1e-12, atol=1e-12)
    # and in float32, from a dataset-style block
    block = SampleBlock.from_samples([Sample.from_ase(a) for a in atoms_list])
    single = model.float()(collate(block, dtype=torch.float32), forces=False)
    torch.testing.assert_close(single["energy"].double(), plain["energy"], rtol=1e-4,
                               atol=1e-4)

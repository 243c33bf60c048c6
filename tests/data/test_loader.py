"""BatchLoader: budgets, dataset mixing, coverage, neighbor lists, background thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from pygfm.data import Sample, SampleBlock, write_dataset
from pygfm.data.loader import BatchLoader, edge_counts
from pygfm.ops import neighbor_list


def _metals(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, int(rng.integers(1, 4))))
        atoms.rattle(0.05, seed=seed * 1000 + k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        out.append(atoms)
    return out


def _molecules(count, seed):
    rng = np.random.default_rng(seed)
    names = ["H2O", "CH4", "C2H6", "NH3", "C6H6"]
    out = []
    for k in range(count):
        atoms = molecule(names[k % len(names)])
        atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
        out.append(Sample.from_ase(atoms, labels=False, index=k))
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    metals = write_dataset(root / "metals", _metals(40, 1), name="metals", fidelity="EMT",
                           shard_size=15)
    molecules = SampleBlock.from_samples(_molecules(25, 2), dataset="molecules")
    return {"metals": metals, "molecules": molecules}


def _seen(loader):
    pairs = []
    for batch in loader:
        for d, sid in zip(batch.dataset.tolist(), batch.sample_id.tolist()):
            pairs.append((d, sid))
    return pairs


def test_evaluation_order_covers_every_sample_once(sources):
    loader = BatchLoader(sources, atom_budget=50, shuffle=False, prefetch=0)
    seen = _seen(loader)
    expected = [(0, k) for k in range(40)] + [(1, k) for k in range(25)]
    assert sorted(seen) == expected


def test_atom_budget_and_grouping(sources):
    loader = BatchLoader(sources, atom_budget=37, alpha=0.5, seed=3, prefetch=0)
    for batch in loader:
        counts = (batch.ptr[1:] - batch.ptr[:-1])
        assert batch.num_atoms <= 37 or batch.num_structures == 1
        assert int(counts.sum()) == batch.num_atoms
        # structures of one dataset are contiguous (heads are evaluated grouped)
        changes = (batch.dataset[1:] != batch.dataset[:-1]).sum()
        assert int(changes) <= 1


def test_batches_match_the_sources(sources):
    loader = BatchLoader(sources, atom_budget=64, seed=1, prefetch=0)
    batch = next(iter(loader))
    for b in range(batch.num_structures):
        d, sid = int(batch.dataset[b]), int(batch.sample_id[b])
        name = loader.names[d]
        source = sources[name]
        sample = source[sid] if name == "metals" else source.sample(sid)
        atoms = slice(int(batch.ptr[b]), int(batch.ptr[b + 1]))
        assert np.array_equal(batch.positions[atoms].double().numpy(), sample.positions.astype(np.float32).astype(np.float64))
        assert np.array_equal(batch.numbers[atoms].numpy(), sample.numbers)
        assert bool(batch.energy_mask[b]) == (sample.energy is not None)
        if sample.energy is not None:
            assert batch.energy[b].item() == pytest.approx(sample.energy, rel=1e-6)


def test_mixing_follows_alpha(sources):
    sizes = np.array([40, 25])
    for alpha in (0.0, 1.0):
        loader = BatchLoader(sources, atom_budget=1000, alpha=alpha, samples_per_epoch=650,
                             prefetch=0)
        seen = np.array([d for d, _ in _seen(loader)])
        p = sizes ** alpha / (sizes ** alpha).sum()
        assert np.allclose(np.bincount(seen, minlength=2) / len(seen), p, atol=2 / 650)


def test_ranks_split_the_epoch(sources):
    parts = [_seen(BatchLoader(sources, atom_budget=60, rank=r, world_size=2, seed=5,
                               prefetch=0)) for r in range(2)]
    whole = _seen(BatchLoader(sources, atom_budget=60, seed=5, prefetch=0))
    # 65 draws over 2 ranks: 33 each, the one extra wraps around to the epoch's start
    assert len(parts[0]) == len(parts[1]) == 33
    assert set(parts[0]) | set(parts[1]) == set(whole)
    assert len(set(parts[0]) & set(parts[1])) <= 1


def test_epochs_differ_and_repeat(sources):
    loader = BatchLoader(sources, atom_budget=60, seed=5, prefetch=0)
    first = _seen(loader)
    loader.set_epoch(1)
    second = _seen(loader)
    loader.set_epoch(0)
    assert _seen(loader) == first and second != first


def test_neighbors_and_edge_budget(sources):
    loader = BatchLoader(sources, atom_budget=500, edge_budget=3000, cutoff=4.0, seed=2,
                         prefetch=0)
    counts = {name: edge_counts(src, 4.0) for name, src in sources.items()}
    for batch in loader:
        assert batch.neighbor_cutoff == 4.0
        expected = neighbor_list(batch.positions, 4.0, batch.cell, batch.pbc, batch.ptr)
        assert torch.equal(batch.neighbors.edge_index, expected.edge_index)
        edges = batch.neighbors.edge_index.shape[1]
        assert edges <= 3000 or batch.num_structures == 1
        total = sum(int(counts[loader.names[d]][s])
                    for d, s in zip(batch.dataset.tolist(), batch.sample_id.tolist()))
        assert total == edges


def test_prefetch_gives_the_same_batches_and_raises_errors(sources):
    plain = _seen(BatchLoader(sources, atom_budget=60, seed=7, prefetch=0))
    threaded = _seen(BatchLoader(sources, atom_budget=60, seed=7, prefetch=3))
    assert plain == threaded
    loader = BatchLoader(sources, atom_budget=60, seed=7, prefetch=2)
    loader.make_batch = lambda *_: (_ for _ in ()).throw(RuntimeError("disk on fire"))
    with pytest.raises(RuntimeError, match="disk on fire"):
        list(loader)
    # stopping early does not hang
    for _ in BatchLoader(sources, atom_budget=20, seed=7, prefetch=1):
        break


def test_model_reuses_the_loaders_neighbors(sources):
    from pygfm.nn import EnergyModel, PaiNN

    torch.manual_seed(0)
    model = EnergyModel(PaiNN(n_features=8, n_interactions=1, cutoff=4.0)).double()
    batch = next(iter(BatchLoader(sources, atom_budget=60, cutoff=4.5, dtype=torch.float64,
                                  prefetch=0)))
    with_list = model(batch)
    without = model(type(batch)(**{**batch.__dict__, "neighbors": None,
                                   "neighbor_cutoff": None}))
    assert torch.allclose(with_list["energy"], without["energy"], rtol=1e-12, atol=1e-12)
    assert torch.allclose(with_list["forces"], without["forces"], rtol=1e-10, atol=1e-12)


def test_bad_arguments(sources):
    with pytest.raises(ValueError, match="sources"):
        BatchLoader({})
    with pytest.raises(ValueError, match="edge_budget needs cutoff"):
        BatchLoader(sources, edge_budget=10)
    with pytest.raises(ValueError, match="prefetch"):
        BatchLoader(sources, prefetch=-1)

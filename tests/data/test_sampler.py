"""MultiDatasetSampler (proportions, determinism, sharding, stream rule, resuming),
budget_batches and balance_batch_count."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from torch.utils.data import Sampler

from pygfm.data.sampler import MultiDatasetSampler, balance_batch_count, budget_batches


def draws_of(sampler, dataset, epoch):
    """[counts[dataset]]: the dataset's sample indices in the order the epoch visits them."""
    datasets, indices = sampler.global_sequence(epoch)
    return indices[datasets == dataset]


@pytest.mark.parametrize("alpha, weights", [(1.0, None), (0.0, None), (0.5, None),
                                            (1.0, [2.0, 0.5, 1.0, 3.0]), (0.5, [0.0, 1.0, 1.0, 2.0])])
def test_counts_follow_the_formula_to_rounding(alpha, weights):
    sizes = [1000, 17, 250, 3]
    total = 5003
    sampler = MultiDatasetSampler(sizes, alpha=alpha, weights=weights, samples_per_epoch=total)
    raw = (np.ones(4) if weights is None else np.asarray(weights)) * np.asarray(sizes, float) ** alpha
    expected = raw / raw.sum()
    np.testing.assert_allclose(sampler.probabilities, expected, rtol=1e-12)
    counts = sampler.counts
    assert counts.sum() == total
    assert np.all(np.abs(counts - expected * total) < 1)
    # The sequence itself holds exactly those counts, every epoch.
    for epoch in (0, 3):
        datasets, indices = sampler.global_sequence(epoch)
        np.testing.assert_array_equal(np.bincount(datasets, minlength=4), counts)
        assert np.all((indices >= 0) & (indices < np.asarray(sizes)[datasets]))


def test_alpha_zero_is_uniform_and_alpha_one_keeps_proportions():
    uniform = MultiDatasetSampler([9000, 10, 990], alpha=0.0, samples_per_epoch=3000)
    np.testing.assert_array_equal(uniform.counts, [1000, 1000, 1000])
    proportional = MultiDatasetSampler([9000, 10, 990])
    np.testing.assert_array_equal(proportional.counts, [9000, 10, 990])
    assert len(proportional) == 10000  # default epoch: one draw per sample


def test_largest_remainder_gives_the_extra_draws_to_the_largest_fractions():
    # quotas 10/3 each: floors 3, 3, 3 and one extra to the lowest index
    np.testing.assert_array_equal(
        MultiDatasetSampler([5, 5, 5], samples_per_epoch=10).counts, [4, 3, 3])
    # quotas 1.4, 2.6 (weights 7:13): the larger fraction wins the extra draw
    np.testing.assert_array_equal(
        MultiDatasetSampler([1, 1], weights=[7, 13], samples_per_epoch=4).counts, [1, 3])


def test_empty_and_zero_weight_datasets_are_never_drawn():
    sampler = MultiDatasetSampler([0, 50, 40], alpha=0.0, weights=[1, 0, 1], samples_per_epoch=90)
    np.testing.assert_array_equal(sampler.probabilities, [0.0, 0.0, 1.0])
    datasets, _ = sampler.global_sequence()
    assert set(datasets.tolist()) == {2}


def test_draws_are_spread_over_the_epoch():
    # a 1%-dataset appears in every stretch of 200 draws, not in clumps
    sampler = MultiDatasetSampler([9900, 100], samples_per_epoch=10000, seed=3)
    datasets, _ = sampler.global_sequence()
    per_stretch = datasets.reshape(50, 200).sum(axis=1)
    assert per_stretch.min() >= 1 and per_stretch.max() <= 3


def test_same_seed_same_sequence_other_seed_or_epoch_differs():
    make = lambda seed: MultiDatasetSampler([300, 40, 7], alpha=0.5, seed=seed)
    a0, a1, b = make(1), make(1), make(2)
    for x, y in zip(a0.global_sequence(4), a1.global_sequence(4)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a0.global_sequence(4)[1], b.global_sequence(4)[1])
    assert not np.array_equal(a0.global_sequence(4)[1], a0.global_sequence(5)[1])


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_rank_shards_are_disjoint_equal_and_rebuild_the_global_sequence(world_size):
    total = 101  # not a multiple of 2, 3 or 4: padding is needed
    shards = []
    for rank in range(world_size):
        sampler = MultiDatasetSampler([60, 30, 11], alpha=0.7, samples_per_epoch=total,
                                      rank=rank, world_size=world_size, seed=5)
        sampler.set_epoch(2)
        pairs = list(sampler)
        assert len(pairs) == len(sampler) == math.ceil(total / world_size)
        assert all(type(d) is int and type(i) is int for d, i in pairs)
        shards.append(pairs)
    datasets, indices = sampler.global_sequence(2)
    global_pairs = list(zip(datasets.tolist(), indices.tolist()))
    # Interleaving the shards (rank r holds positions r, r + W, ...) gives the
    # global sequence followed by its wrapped-around start.
    padded = [shards[p % world_size][p // world_size] for p in range(len(shards[0]) * world_size)]
    assert padded[:total] == global_pairs
    assert padded[total:] == global_pairs[: len(padded) - total]


def test_more_ranks_than_draws_wraps_around():
    shards = [list(MultiDatasetSampler([3], rank=r, world_size=5, samples_per_epoch=3))
              for r in range(5)]
    assert [len(shard) for shard in shards] == [1] * 5
    assert shards[3] == shards[0] and shards[4] == shards[1]


def test_oversampled_dataset_sees_every_sample_before_any_repeat():
    # dataset 0: 7 samples, 30 draws an epoch; dataset 1: undersampled
    sampler = MultiDatasetSampler([7, 100], alpha=0.0, samples_per_epoch=60, seed=11)
    assert sampler.counts[0] == 30
    for epoch in range(4):
        draws = draws_of(sampler, 0, epoch)
        for start in range(0, 28, 7):
            assert sorted(draws[start:start + 7].tolist()) == list(range(7))
        assert len(set(draws[28:].tolist())) == 2
        assert set(np.bincount(draws, minlength=7).tolist()) == {4, 5}


def test_tiny_dataset_drawn_across_many_permutation_blocks():
    # 200000 draws of a 3-sample dataset span several generator blocks
    sampler = MultiDatasetSampler([3, 200_000], alpha=0.0, samples_per_epoch=400_000)
    passes = draws_of(sampler, 0, 0)[:199_998].reshape(-1, 3)
    np.testing.assert_array_equal(np.sort(passes, axis=1), np.tile([0, 1, 2], (len(passes), 1)))
    assert len(np.unique(passes, axis=0)) == 6  # the passes are not all the same order


def test_undersampled_dataset_is_covered_over_ceil_size_over_k_epochs():
    sampler = MultiDatasetSampler([7, 100], alpha=0.0, samples_per_epoch=60, seed=11)
    k = sampler.counts[1]
    assert k == 30
    seen = np.concatenate([draws_of(sampler, 1, epoch) for epoch in range(math.ceil(100 / k))])
    assert len(set(seen[:100].tolist())) == 100  # no repeat before full coverage
    assert set(seen.tolist()) == set(range(100))


def test_large_undersampled_dataset_stream_continues_across_epochs():
    # 40000 samples, 15000 draws an epoch: passes cross epoch boundaries, and
    # sizes above 4 * 2**16 take the bucketed shuffle
    for size in (40_000, 300_000):
        sampler = MultiDatasetSampler([size, 1], weights=[1, 0], samples_per_epoch=size * 3 // 8)
        k = int(sampler.counts[0])
        epochs = math.ceil(2 * size / k)
        stream = np.concatenate([draws_of(sampler, 0, epoch) for epoch in range(epochs)])
        for start in (0, size):
            one_pass = stream[start:start + size]
            np.testing.assert_array_equal(np.sort(one_pass), np.arange(size))
            assert 0.45 < np.mean(np.diff(one_pass) > 0) < 0.55  # shuffled, not runs of sorted
        # an epoch made from scratch (no cached block) is the same
        fresh = MultiDatasetSampler([size, 1], weights=[1, 0], samples_per_epoch=size * 3 // 8)
        np.testing.assert_array_equal(draws_of(fresh, 0, epochs - 1), draws_of(sampler, 0, epochs - 1))


def test_state_dict_round_trip_resumes_the_same_sequence():
    config = dict(alpha=0.5, samples_per_epoch=77, rank=1, world_size=3)
    trained = MultiDatasetSampler([50, 20, 5], seed=9, **config)
    trained.set_epoch(6)
    state = trained.state_dict()
    resumed = MultiDatasetSampler([50, 20, 5], seed=0, **config)
    resumed.load_state_dict(state)
    assert resumed.epoch == 6 and resumed.seed == 9
    assert list(resumed) == list(trained)
    with pytest.raises(ValueError, match="alpha"):
        MultiDatasetSampler([50, 20, 5], alpha=1.0).load_state_dict(state)
    changed = MultiDatasetSampler([50, 20, 5], alpha=1.0)
    changed.load_state_dict(state, strict=False)
    assert changed.epoch == 6


def test_is_a_torch_sampler_with_a_readable_repr():
    sampler = MultiDatasetSampler([10, 0], names=["omat", "empty"], world_size=2, rank=1)
    assert isinstance(sampler, Sampler)
    text = repr(sampler)
    assert "omat" in text and "empty" in text and "rank=1/2" in text


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(sizes=[]), ValueError, "sizes"),
    (dict(sizes=[3, -1]), ValueError, "sizes[1]"),
    (dict(sizes=[3, 2.5]), TypeError, "sizes[1]"),
    (dict(sizes=[0, 0]), ValueError, "sizes"),
    (dict(sizes=[3], alpha=-0.5), ValueError, "alpha"),
    (dict(sizes=[3], alpha=float("nan")), ValueError, "alpha"),
    (dict(sizes=[3], alpha="1"), TypeError, "alpha"),
    (dict(sizes=[3, 4], weights=[1.0]), ValueError, "weights"),
    (dict(sizes=[3, 4], weights=[1.0, -1.0]), ValueError, "weights"),
    (dict(sizes=[3, 4], weights=[1.0, float("inf")]), ValueError, "weights"),
    (dict(sizes=[3, 4], weights=[0.0, 0.0]), ValueError, "weights"),
    (dict(sizes=[3], samples_per_epoch=0), ValueError, "samples_per_epoch"),
    (dict(sizes=[3], rank=2, world_size=2), ValueError, "rank"),
    (dict(sizes=[3], rank=-1), ValueError, "rank"),
    (dict(sizes=[3], world_size=0), ValueError, "world_size"),
    (dict(sizes=[3], seed=-1), ValueError, "seed"),
    (dict(sizes=[3], names=["a", "b"]), ValueError, "names"),
])
def test_bad_arguments_name_the_argument(kwargs, error, name):
    with pytest.raises(error, match=name.replace("[", r"\[")):
        MultiDatasetSampler(**kwargs)


def test_bad_epoch_is_rejected():
    with pytest.raises(ValueError, match="epoch"):
        MultiDatasetSampler([3]).set_epoch(-1)


def check_batches(batches, order, atoms, budget, edges=None, edge_budget=None, max_structures=None):
    assert [item for batch in batches for item in batch] == list(order)
    def over(batch):
        return (sum(atoms[i] for i in batch) > budget
                or (edge_budget is not None and sum(edges[i] for i in batch) > edge_budget)
                or (max_structures is not None and len(batch) > max_structures))
    for batch in batches:
        assert batch and (not over(batch) or len(batch) == 1)  # only a lone item may be over
    for batch, following in zip(batches, batches[1:]):
        assert over(batch + following[:1])  # greedy: the next item would not have fitted


@settings(max_examples=150, deadline=None)
@given(atoms=st.lists(st.integers(0, 60), max_size=40), budget=st.integers(1, 100),
       data=st.data())
def test_budget_batches_respects_budgets_and_keeps_order(atoms, budget, data):
    order = data.draw(st.permutations(range(len(atoms))))
    edges = data.draw(st.lists(st.integers(0, 300), min_size=len(atoms), max_size=len(atoms)))
    edge_budget = data.draw(st.none() | st.integers(1, 500))
    max_structures = data.draw(st.none() | st.integers(1, 6))
    batches = budget_batches(order, atoms, atom_budget=budget, num_edges=edges,
                             edge_budget=edge_budget, max_structures=max_structures)
    check_batches(batches, order, atoms, budget, edges, edge_budget, max_structures)


def test_budget_batches_oversized_items_and_keys():
    atoms = {"a": 3, "big": 50, "b": 4, "c": 2, "d": 9}
    batches = budget_batches(["a", "big", "b", "c", "d"], atoms, atom_budget=10)
    assert batches == [["a"], ["big"], ["b", "c"], ["d"]]
    assert budget_batches([], [], atom_budget=5) == []
    edges = {"a": 1, "big": 1, "b": 30, "c": 30, "d": 1}
    assert budget_batches(list(atoms), atoms, atom_budget=100, num_edges=edges, edge_budget=40) == [
        ["a", "big", "b"], ["c", "d"]]


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(atom_budget=0), ValueError, "atom_budget"),
    (dict(atom_budget=True), TypeError, "atom_budget"),
    (dict(atom_budget=10, edge_budget=-3, num_edges=[1, 1]), ValueError, "edge_budget"),
    (dict(atom_budget=10, edge_budget=5), ValueError, "num_edges"),
    (dict(atom_budget=10, max_structures=0), ValueError, "max_structures"),
])
def test_budget_batches_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        budget_batches([0, 1], [2, 3], **kwargs)
    with pytest.raises(ValueError, match="num_atoms"):
        budget_batches([0, 1], [2, -3], atom_budget=10)


def test_balance_batch_count_pads_from_the_start_or_truncates():
    batches = [[0], [1, 2], [3]]
    assert balance_batch_count(batches, 7) == [[0], [1, 2], [3], [0], [1, 2], [3], [0]]
    assert balance_batch_count(batches, 2) == [[0], [1, 2]]
    assert balance_batch_count(batches, 3) == batches and balance_batch_count(batches, 3) is not batches
    assert balance_batch_count(batches, 0) == []
    assert balance_batch_count([], 0) == []
    with pytest.raises(ValueError, match="batches"):
        balance_batch_count([], 2)
    with pytest.raises(ValueError, match="target"):
        balance_batch_count(batches, -1)

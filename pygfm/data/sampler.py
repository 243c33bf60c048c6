"""Sampling many imbalanced datasets at once, and packing samples into batches.

:class:`MultiDatasetSampler` decides which (dataset, sample) pairs an epoch
visits and which rank of a data-parallel job gets each; :func:`budget_batches`
cuts a rank's ordered samples into batches under an atom (and edge) budget;
:func:`balance_batch_count` gives every rank the same number of steps.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["MultiDatasetSampler", "budget_batches", "balance_batch_count"]

# Permutations are made this many indices at a time: a small dataset's passes
# are generated in blocks of this size (one generator call for many passes),
# and a large permutation is shuffled in buckets of this size, which stay in
# cache (a plain shuffle of 10^7 indices is several times slower).
_CHUNK = 1 << 16

# First words of the seed sequences, so that the interleaving and the two kinds
# of per-dataset streams never share random bits.
_INTERLEAVE, _CONTINUING_STREAM, _EPOCH_STREAM = 0, 1, 2


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class MultiDatasetSampler(Sampler):
    """Imbalance-aware sampler over D datasets, sharded by rank.

    Yields ``(dataset_index, sample_index)`` pairs of Python ints.

    Probabilities: ``p_d ∝ weights[d] * sizes[d] ** alpha``; alpha=1 keeps the
    datasets' proportions, alpha=0 draws every dataset equally often, values
    in between flatten the imbalance. Empty datasets get p_d = 0.

    Draws per epoch (``counts``, [D]): the largest-remainder rounding of
    ``p_d * samples_per_epoch`` (floors, then one more draw to the datasets
    with the largest fractional parts, ties to the lower index), so each
    dataset gets its quota to within one draw and the total is exact. The
    counts are the same every epoch; a dataset whose quota is below one draw
    may therefore get none.

    Which samples (the stream rule): dataset d with n samples and k draws per
    epoch reads a stream made of passes, each pass a random permutation of
    range(n), so every sample is seen once before any is seen again.

    * k < n (undersampled): one stream for the whole run, seeded by
      (seed, d); epoch e takes stream positions [e*k, (e+1)*k), so
      ceil(n / k) consecutive epochs see every sample.
    * k >= n (oversampled): each epoch takes positions [0, k) of its own
      stream, seeded by (seed, d, epoch), so within every epoch each sample
      is drawn floor(k/n) or ceil(k/n) times, all of them before any repeat.

    Order within the epoch: the datasets' draws are spread evenly, not
    clumped: the i-th draw of dataset d sits at the fraction (i + u)/k of
    the epoch, u uniform in [0, 1) (a jittered, stratified interleaving
    seeded by (seed, epoch)), so any stretch of the sequence holds each
    dataset in nearly its proportion, and each dataset's draws keep their
    stream order.

    The epoch's global sequence (``samples_per_epoch`` pairs) depends on
    (seed, epoch) and the configuration only, never on rank or world_size.
    It is padded by wrapping around to a multiple of world_size and rank r
    takes elements r, r + world_size, ...; so every rank has ``len(self)`` =
    ceil(samples_per_epoch / world_size) pairs and the ranks' shards overlap
    only in the padding. Call :meth:`set_epoch` before each epoch.

    Memory: the sampler keeps each dataset's current block of its stream
    (for a large dataset one pass, 4 bytes a sample), so that an
    undersampled dataset costs one permutation per pass, not one per epoch.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        alpha: float = 1.0,
        weights: Sequence[float] | None = None,
        samples_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        sizes = list(sizes)
        if not sizes:
            raise ValueError("sizes must name at least one dataset")
        for d, size in enumerate(sizes):
            _check_int(f"sizes[{d}]", size, 0)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        num_datasets = len(sizes)

        if isinstance(alpha, bool) or not isinstance(alpha, Real):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
        self.alpha = float(alpha)

        if weights is None:
            self.weights = np.ones(num_datasets)
        else:
            try:
                self.weights = np.asarray(weights, dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise TypeError(f"weights must be a sequence of numbers: {error}") from None
            if self.weights.shape != (num_datasets,):
                raise ValueError(f"weights must have one entry per dataset ({num_datasets}), "
                                 f"got shape {self.weights.shape}")
            if not np.all(np.isfinite(self.weights)) or np.any(self.weights < 0):
                raise ValueError(f"weights must be finite and >= 0, got {self.weights.tolist()}")

        if names is None:
            self.names = [str(d) for d in range(num_datasets)]
        else:
            self.names = [str(name) for name in names]
            if len(self.names) != num_datasets:
                raise ValueError(f"names must have one entry per dataset ({num_datasets}), "
                                 f"got {len(self.names)}")

        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size ({self.world_size}), got {rank}")
        self.seed = _check_int("seed", seed, 0)  # seed sequences take non-negative ints

        # Empty datasets are masked out rather than relying on 0 ** alpha,
        # which is 1 for alpha = 0.
        raw = np.where(self.sizes > 0, self.weights * self.sizes.astype(np.float64) ** self.alpha, 0.0)
        if not raw.sum() > 0:
            if not np.any(self.sizes > 0):
                raise ValueError("sizes: every dataset is empty")
            raise ValueError("weights: every non-empty dataset has weight 0")
        self._probabilities = raw / raw.sum()

        if samples_per_epoch is None:
            samples_per_epoch = int(self.sizes.sum())
        self.samples_per_epoch = _check_int("samples_per_epoch", samples_per_epoch, 1)
        self._counts = _largest_remainder(self._probabilities, self.samples_per_epoch)

        self.epoch = 0
        self._block_cache: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}
        self._shard_cache: tuple[tuple[int, ...], np.ndarray, np.ndarray] | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """[D] float64: each dataset's share of the draws, summing to 1."""
        return self._probabilities.copy()

    @property
    def counts(self) -> np.ndarray:
        """[D] int64: draws per epoch of each dataset, summing to samples_per_epoch."""
        return self._counts.copy()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_int("epoch", epoch, 0)

    def __len__(self) -> int:
        return -(-self.samples_per_epoch // self.world_size)

    def global_sequence(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The whole epoch over all ranks, unpadded.

        Returns (datasets [samples_per_epoch] int64, indices [samples_per_epoch] int64).
        """
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, 0)
        return self._pairs(epoch, np.arange(self.samples_per_epoch))

    def shard(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This rank's part of the epoch, padded: (datasets [len(self)], indices [len(self)]) int64."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, 0)
        key = (self.seed, epoch, self.rank, self.world_size)
        if self._shard_cache is None or self._shard_cache[0] != key:
            # Positions past the end wrap around to the start: the padding.
            positions = (self.rank + self.world_size * np.arange(len(self))) % self.samples_per_epoch
            self._shard_cache = (key, *self._pairs(epoch, positions))
        return self._shard_cache[1].copy(), self._shard_cache[2].copy()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        datasets, indices = self.shard()
        return zip(datasets.tolist(), indices.tolist())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the epoch, the seed and the configuration."""
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "sizes": self.sizes.tolist(),
            "alpha": self.alpha,
            "weights": self.weights.tolist(),
            "samples_per_epoch": self.samples_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Resume at ``state``'s epoch and seed (rank and world_size stay this sampler's).

        With strict=True a different sizes/alpha/weights/samples_per_epoch is a
        ValueError, since the saved sequence could not be continued; strict=False
        accepts the change (e.g. a new weighting) and takes only epoch and seed.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = {"epoch", "seed"} - state.keys()
        if missing:
            raise ValueError(f"state lacks {sorted(missing)}")
        if strict:
            mine = self.state_dict()
            for key in ("sizes", "alpha", "weights", "samples_per_epoch"):
                if key in state and state[key] != mine[key]:
                    raise ValueError(f"state[{key!r}] = {state[key]} differs from this "
                                     f"sampler's {mine[key]} (pass strict=False to accept)")
        seed = _check_int("state['seed']", state["seed"], 0)
        self.epoch = _check_int("state['epoch']", state["epoch"], 0)
        self.seed = seed

    def __repr__(self) -> str:
        lines = [f"MultiDatasetSampler(samples_per_epoch={self.samples_per_epoch}, "
                 f"alpha={self.alpha:g}, rank={self.rank}/{self.world_size}, "
                 f"seed={self.seed}, epoch={self.epoch}, len={len(self)})"]
        width = max(len(name) for name in self.names)
        for d, name in enumerate(self.names):
            lines.append(f"  {name:<{width}}  size={self.sizes[d]:<10d} "
                         f"weight={self.weights[d]:<6g} p={self._probabilities[d]:.4f}  "
                         f"draws/epoch={self._counts[d]}")
        return "\n".join(lines)

    def _pairs(self, epoch: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(datasets [M], indices [M]) int64 at the given positions [M] of the epoch."""
        # Draws are numbered dataset by dataset in stream order (draw
        # ends[d-1] + i is dataset d's i-th); `slots` says which draw sits at
        # each position of the epoch.
        ends = np.cumsum(self._counts)
        rng = np.random.default_rng([self.seed, _INTERLEAVE, epoch])
        fractions = np.concatenate([(np.arange(count) + rng.random(count)) / max(count, 1)
                                    for count in self._counts.tolist()])
        # Each dataset's fractions are already increasing, and a stable sort
        # (timsort) merges such runs in about O(N log D).
        slots = np.argsort(fractions, kind="stable")[positions]
        datasets = np.searchsorted(ends, slots, side="right")
        draws = np.concatenate([self._dataset_draws(d, epoch) for d in range(len(self.sizes))])
        return datasets.astype(np.int64, copy=False), draws[slots].astype(np.int64)

    def _dataset_draws(self, dataset: int, epoch: int) -> np.ndarray:
        """[counts[dataset]] int32 or int64: the dataset's sample indices for ``epoch`` (the stream rule)."""
        size, count = int(self.sizes[dataset]), int(self._counts[dataset])
        if count == 0:
            return np.empty(0, dtype=np.int32)
        if count < size:
            key, start = (self.seed, _CONTINUING_STREAM, dataset), epoch * count
        else:
            key, start = (self.seed, _EPOCH_STREAM, dataset, epoch), 0
        stop = start + count
        # The stream is cut into blocks of whole passes; block b is seeded by
        # key + (b,), so any stretch of the stream can be made on its own.
        passes_per_block = max(1, _CHUNK // size)
        block_len = passes_per_block * size
        first, last = start // block_len, (stop - 1) // block_len
        blocks = []
        for block in range(first, last + 1):
            block_key = key + (block,)
            cached = self._block_cache.get(dataset)
            if cached is None or cached[0] != block_key:
                cached = (block_key, _permutation_block(block_key, size, passes_per_block))
                # The epoch's last block is the next epoch's first when the
                # stream continues; keep it.
                self._block_cache[dataset] = cached
            blocks.append(cached[1])
        stream = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        return stream[start - first * block_len: stop - first * block_len]


def _permutation_block(key: tuple[int, ...], size: int, passes: int) -> np.ndarray:
    """[passes * size] int32 (int64 past 2^31): ``passes`` permutations of range(size), concatenated."""
    rng = np.random.default_rng(list(key))
    dtype = np.int32 if size <= np.iinfo(np.int32).max else np.int64
    if passes > 1:
        return rng.permuted(np.tile(np.arange(size, dtype=dtype), (passes, 1)), axis=1).ravel()
    if size <= 4 * _CHUNK:
        return rng.permutation(size).astype(dtype)
    # Rao-Sandelius shuffle: send every index to a random bucket, then shuffle
    # each bucket; uniform like a plain shuffle but each bucket fits in cache.
    num_buckets = -(-size // _CHUNK)
    bucket_dtype = np.uint8 if num_buckets <= 1 << 8 else np.uint16 if num_buckets <= 1 << 16 else np.uint32
    buckets = rng.integers(0, num_buckets, size=size, dtype=bucket_dtype)
    # Stable sort of 8/16-bit keys is a radix sort: indices grouped by bucket.
    permutation = np.argsort(buckets, kind="stable").astype(dtype)
    start = 0
    for end in np.cumsum(np.bincount(buckets, minlength=num_buckets)).tolist():
        rng.shuffle(permutation[start:end])
        start = end
    return permutation


def _largest_remainder(probabilities: np.ndarray, total: int) -> np.ndarray:
    """[D] int64 counts summing to ``total``, each within one of probabilities * total."""
    quotas = probabilities * total
    counts = np.floor(quotas).astype(np.int64)
    fractions = np.where(probabilities > 0, quotas - counts, -np.inf)
    missing = total - int(counts.sum())
    # Stable sort: equal fractions go to the lower dataset index.
    if missing > 0:
        counts[np.argsort(-fractions, kind="stable")[:missing]] += 1
    elif missing < 0:  # only through float round-off in the quotas
        fractions = np.where(counts > 0, fractions, np.inf)
        counts[np.argsort(fractions, kind="stable")[:-missing]] -= 1
    return counts


def budget_batches(
    order: Sequence[Any],
    num_atoms: Any,
    *,
    atom_budget: int,
    num_edges: Any = None,
    edge_budget: int | None = None,
    max_structures: int | None = None,
) -> list[list[Any]]:
    """Cut ``order`` into consecutive batches that fit an atom (and edge) budget.

    Greedy and order-keeping: items are added to the current batch until the
    next one would push its total ``num_atoms[item]`` past atom_budget, its
    total ``num_edges[item]`` past edge_budget (when given), or its length
    past max_structures (when given); then a new batch starts. An item that
    alone exceeds a budget gets a batch of its own rather than an error, so
    no sample is ever dropped; callers that cannot afford such a batch should
    filter those items out beforehand.

    ``num_atoms`` (and ``num_edges``) are indexed by the items of ``order``:
    e.g. order = positions 0..L-1 of a sampler shard and num_atoms [L] their
    atom counts, or order = sample ids and num_atoms a per-sample array.
    Returns the batches as lists of items; every item appears exactly once.
    """
    atom_budget = _check_int("atom_budget", atom_budget, 1)
    if edge_budget is not None:
        edge_budget = _check_int("edge_budget", edge_budget, 1)
        if num_edges is None:
            raise ValueError("num_edges is required when edge_budget is given")
    if max_structures is not None:
        max_structures = _check_int("max_structures", max_structures, 1)

    batches: list[list[Any]] = []
    batch: list[Any] = []
    atoms = edges = 0
    for item in order:
        item_atoms = int(num_atoms[item])
        if item_atoms < 0:
            raise ValueError(f"num_atoms[{item!r}] is negative ({item_atoms})")
        item_edges = 0
        if edge_budget is not None:
            item_edges = int(num_edges[item])
            if item_edges < 0:
                raise ValueError(f"num_edges[{item!r}] is negative ({item_edges})")
        full = (atoms + item_atoms > atom_budget
                or (edge_budget is not None and edges + item_edges > edge_budget)
                or (max_structures is not None and len(batch) >= max_structures))
        if batch and full:
            batches.append(batch)
            batch, atoms, edges = [], 0, 0
        batch.append(item)
        atoms += item_atoms
        edges += item_edges
    if batch:
        batches.append(batch)
    return batches


def balance_batch_count(batches: list, target: int) -> list:
    """Pad or truncate one rank's batch list to exactly ``target`` batches.

    Budgeted batching gives ranks different numbers of batches, and a
    data-parallel step needs every rank. The caller all-reduces the count and
    passes the min (truncate: the tail batches of the longer ranks are skipped
    this epoch, no sample counts twice) or the max (pad: the shorter ranks
    repeat their first batches, so nothing is skipped but a few samples
    count twice). Returns a new list; padding repeats from the start, wrapping
    around as often as needed.
    """
    target = _check_int("target", target, 0)
    batches = list(batches)
    if target > len(batches) and not batches:
        raise ValueError(f"batches is empty, so it cannot be padded to target={target}")
    if target <= len(batches):
        return batches[:target]
    return [batches[i % len(batches)] for i in range(target)]

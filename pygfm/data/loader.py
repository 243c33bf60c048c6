"""BatchLoader: batches for one rank from several datasets, filled by an atom (and
edge) budget, mixed by a size^alpha sampler, with optional neighbor lists and a
background thread that prepares the next batches while the model runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from ..ops import neighbor_list
from .batch import AtomicBatch, collate
from .block import SampleBlock
from .sampler import MultiDatasetSampler, balance_batch_count, budget_batches

__all__ = ["BatchLoader", "edge_counts"]


def _take(source, indices: np.ndarray) -> SampleBlock:
    if isinstance(source, SampleBlock):
        return source.select(indices)
    if hasattr(source, "take"):
        return source.take(indices)
    return source.get_block(indices)


def _atom_counts(source) -> np.ndarray:
    if isinstance(source, SampleBlock):
        return source.arrays["atom_count"]
    if hasattr(source, "atom_counts"):  # DistributedStore
        return np.asarray(source.atom_counts)
    return np.asarray(source.num_atoms)


def edge_counts(source, cutoff: float, chunk: int = 2048) -> np.ndarray:
    """[len] int64: directed pairs within ``cutoff`` of every sample of ``source``
    (what an edge budget is measured in)."""
    counts = []
    for start in range(0, len(source), chunk):
        positions = np.arange(start, min(start + chunk, len(source)))
        batch = collate(_take(source, positions))
        pairs = neighbor_list(batch.positions, cutoff, batch.cell, batch.pbc, batch.ptr)
        counts.append((pairs.row_ptr[batch.ptr[1:]] - pairs.row_ptr[batch.ptr[:-1]]).numpy())
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


class BatchLoader:
    """Iterate over budget-filled :class:`AtomicBatch` es from several sources.

    sources: ``{name: source}`` or a list; a source is an
        :class:`~pygfm.data.AtomicDataset`, a
        :class:`~pygfm.data.store.DistributedStore` or a
        :class:`~pygfm.data.SampleBlock`. ``batch.dataset`` indexes ``names``.
    atom_budget / edge_budget: most atoms / directed pairs (within ``cutoff``) in
        one batch; a structure larger than a budget comes alone.
    cutoff: if given, every batch carries ``neighbors`` (a NeighborList at this
        cutoff) and ``neighbor_cutoff``, built in the loader's thread.
    shuffle: True samples with :class:`MultiDatasetSampler` (alpha, weights,
        samples_per_epoch, seed; ``set_epoch`` changes the draw); False walks
        every sample of every source once, in order (evaluation).
    rank, world_size: this rank's shard of every epoch. ``comm`` (mpi4py): if
        given (or any object with ``allreduce_max(int) -> int``, such as
        :class:`pygfm.train.parallel.Parallel`), all ranks agree on the number of batches (the largest count; the
        others repeat their first batches) so data-parallel steps line up.
    prefetch: batches prepared ahead in a background thread (0: none).
    """

    def __init__(self, sources, *, atom_budget: int = 2048, edge_budget: int | None = None,
                 cutoff: float | None = None, shuffle: bool = True, alpha: float = 1.0,
                 weights: Sequence[float] | None = None, samples_per_epoch: int | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0, comm=None,
                 dtype: torch.dtype = torch.float32, prefetch: int = 2,
                 max_structures: int | None = None):
        if isinstance(sources, Mapping):
            self.names, self.sources = list(sources), list(sources.values())
        else:
            self.sources = list(sources)
            self.names = [getattr(s, "name", None) or getattr(s, "dataset", None) or f"dataset{k}"
                          for k, s in enumerate(self.sources)]
        if not self.sources:
            raise ValueError("sources: no datasets given")
        if edge_budget is not None and cutoff is None:
            raise ValueError("edge_budget needs cutoff (pairs are counted within it)")
        if prefetch < 0:
            raise ValueError(f"prefetch: must be >= 0, got {prefetch}")
        self.atom_budget, self.edge_budget, self.cutoff = atom_budget, edge_budget, cutoff
        self.shuffle, self.dtype, self.prefetch = shuffle, dtype, prefetch
        self.max_structures, self.comm = max_structures, comm
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        sizes = [len(s) for s in self.sources]
        self.sampler = MultiDatasetSampler(
            sizes, alpha=alpha, weights=weights, samples_per_epoch=samples_per_epoch,
            rank=rank, world_size=world_size, seed=seed, names=self.names) if shuffle else None
        self._atoms = [_atom_counts(s).astype(np.int64) for s in self.sources]
        self._edges = ([edge_counts(s, cutoff) for s in self.sources]
                       if edge_budget is not None else None)
        self._plan_cache: tuple[int, list] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)

    def _order(self) -> tuple[np.ndarray, np.ndarray]:
        """(dataset, index) arrays of this rank's samples this epoch, in order."""
        if self.sampler is not None:
            return self.sampler.shard(self.epoch)
        datasets = np.concatenate([np.full(len(s), d) for d, s in enumerate(self.sources)])
        indices = np.concatenate([np.arange(len(s)) for s in self.sources])
        return datasets[self.rank::self.world_size], indices[self.rank::self.world_size]

    def plan(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """This epoch's batches as (dataset, index) array pairs."""
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        datasets, indices = self._order()
        atoms = np.zeros(len(datasets), dtype=np.int64)
        edges = None if self._edges is None else np.zeros(len(datasets), dtype=np.int64)
        for d in range(len(self.sources)):
            mine = datasets == d
            atoms[mine] = self._atoms[d][indices[mine]]
            if edges is not None:
                edges[mine] = self._edges[d][indices[mine]]
        groups = budget_batches(np.arange(len(datasets)), atoms, atom_budget=self.atom_budget,
                                num_edges=edges, edge_budget=self.edge_budget,
                                max_structures=self.max_structures)
        if self.comm is not None:
            most = (self.comm.allreduce_max(len(groups)) if hasattr(self.comm, "allreduce_max")
                    else self.comm.allreduce(len(groups), op=_mpi_max()))
            groups = balance_batch_count(groups, most)
        plan = [(datasets[np.asarray(g)], indices[np.asarray(g)]) for g in groups]
        self._plan_cache = (self.epoch, plan)
        return plan

    def __len__(self) -> int:
        return len(self.plan())

    def make_batch(self, datasets: np.ndarray, indices: np.ndarray) -> AtomicBatch:
        """Read and collate one batch; structures are grouped by dataset."""
        blocks, owners = [], []
        for d in np.unique(datasets):
            blocks.append(_take(self.sources[d], indices[datasets == d]))
            owners.append(int(d))
        batch = collate(blocks, dataset=owners, dtype=self.dtype)
        if self.cutoff is not None:
            pairs = neighbor_list(batch.positions, self.cutoff, batch.cell, batch.pbc, batch.ptr)
            batch = replace(batch, neighbors=pairs, neighbor_cutoff=float(self.cutoff))
        return batch

    def __iter__(self):
        return self.iterate()

    def iterate(self, start: int = 0):
        """This epoch's batches from batch ``start`` on (to resume mid-epoch)."""
        plan = self.plan()[start:]
        if self.prefetch == 0:
            for datasets, indices in plan:
                yield self.make_batch(datasets, indices)
            return
        yield from _background(lambda item: self.make_batch(*item), plan, self.prefetch)


def _mpi_max():
    from mpi4py import MPI
    return MPI.MAX


def _background(work, items, depth: int):
    """Yield work(item) for each item, computed ``depth`` ahead in a thread;
    errors are raised in the consumer, and stopping early stops the thread."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                value = work(item)
                while not stop.is_set():
                    try:
                        results.put((True, value), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            results.put((False, error))
            return
        results.put((True, done))

    thread = threading.Thread(target=produce, name="pygfm-batch-loader", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = results.get()
            if not ok:
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)

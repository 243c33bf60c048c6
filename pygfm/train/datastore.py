"""Where a training run keeps its datasets: ``data.store`` (see docs/training.md).

* ``memory`` (default): every rank opens every dataset itself; a dataset of fewer
  than 5 M atoms is read whole into memory, a larger one is read from disk batch by
  batch. Each rank holds the whole collection (or reads it).
* ``distributed``: each rank reads only its contiguous 1/N share of every training
  and validation set into a :class:`~pygfm.data.DistributedStore`; the loader
  fetches the samples of its batches through the store (MPI one-sided reads, local
  ones a copy). The sampler and the batch plan do not change, so the batches, and
  hence the losses, are those of ``memory``, bit for bit. An :class:`MPIProgress`
  thread answers the other ranks' reads while this rank computes. Statistics
  (reference energies, scales) are computed once, by rank 0 streaming the data from
  disk, and broadcast. Needs an MPI launcher (mpiexec/srun) and mpi4py; on one rank
  the single store holds the whole collection (as ``memory`` does for small sets).
"""

from __future__ import annotations

from ..data import DistributedStore
from ..data.statistics import compute_statistics
from .config import ConfigError
from .parallel import Parallel

__all__ = ["STORES", "DataStores"]

STORES = ("memory", "distributed")


class DataStores:
    """The stores of one run; ``mode`` is ``data.store``."""

    def __init__(self, mode: str, parallel: Parallel):
        if mode not in STORES:
            raise ConfigError(f"data.store: must be one of {', '.join(STORES)}, got {mode!r}")
        if mode == "distributed" and parallel.size > 1 and parallel.comm is None:
            raise ConfigError(
                f"data.store: distributed needs MPI one-sided communication, but this job "
                f"of {parallel.size} ranks was started by {parallel.launcher}; start it with "
                "mpiexec/srun (with mpi4py installed) or use data.store: memory")
        self.mode, self.parallel = mode, parallel
        self.comm = parallel.comm if mode == "distributed" and parallel.size > 1 else None
        self._stores: list[DistributedStore] = []
        self._progress = None

    @property
    def load_whole(self) -> bool:
        """Whether each rank may read a (small) dataset whole into memory."""
        return self.mode == "memory"

    def statistics(self, view) -> dict:
        """:func:`compute_statistics` of ``view``, the same dict on every rank; with
        the distributed store rank 0 alone reads the data and broadcasts the result
        (an error there is raised on every rank)."""
        if self.comm is None:
            return compute_statistics(view)
        result = None
        if self.parallel.is_main:
            try:
                result = ("ok", compute_statistics(view))
            except Exception as error:  # noqa: BLE001 - re-raised on every rank below
                result = ("error", f"{type(error).__name__}: {error}")
        kind, value = self.comm.bcast(result, root=0)
        if kind == "error":
            raise ValueError(f"statistics of {getattr(view, 'name', 'a dataset')!r} (computed "
                             f"on rank 0): {value}")
        return value

    def hold(self, sets: dict) -> dict:
        """``{name: view}`` as the loader's sources: the views themselves (memory),
        or a DistributedStore over each (collective; datasets in the dict's order,
        the same on every rank)."""
        if self.mode == "memory":
            return sets
        held = {}
        for name, view in sets.items():
            store = DistributedStore.from_dataset(view, self.comm)
            self._stores.append(store)
            held[name] = store
        if self.comm is not None and self._progress is None:
            from ..data.progress import MPIProgress
            self._progress = MPIProgress(self.comm)
        if self.parallel.is_main:
            mine = sum(_nbytes(held[name]) for name in held)
            where = (f"over {self.parallel.size} ranks: rank 0 holds {mine / 1e6:.1f} MB"
                     if self.comm is not None else
                     f"on one rank: it holds the whole {mine / 1e6:.1f} MB (as memory does)")
            print(f"data.store distributed {where} of {', '.join(held)}", flush=True)
        return held

    def resident_bytes(self) -> int:
        """Bytes of sample data this rank holds in its stores (0 for ``memory``)."""
        return sum(_nbytes(store) for store in self._stores)

    def close(self) -> None:
        """Stop the progress thread and free the stores (collective). Idempotent."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        for store in self._stores:
            store.close()
        self._stores.clear()


def _nbytes(store: DistributedStore) -> int:
    return sum(value.nbytes for value in store.local_block.arrays.values())

"""DistributedStore: a dataset held in memory across MPI ranks, any sample readable
from any rank by its global index through MPI one-sided communication.

Each rank holds a contiguous slice of the dataset as a :class:`SampleBlock`.
Global index order is rank 0's samples, then rank 1's, and so on. Every array of
the local block (except ``atom_offset``/``atom_count``, which every rank can
compute) is exposed through its own ``MPI.Win.Create`` window over the block's
numpy buffer (no copy when the arrays are already C-contiguous and writable), and
a remote read is an ``MPI.Win.Get`` that the owning rank does not take part in.

Design notes
------------
* **Metadata on every rank.** The constructor allgathers the per-rank sample
  counts and every sample's atom count and keeps their running sum: one int64 per
  global sample (plus one per rank) on every rank, i.e. ``8 * len(store)`` bytes
  (80 MB for 10 M samples). From it any rank knows the owner, local index and
  atom offset of every sample, so a fetch needs no round trip for metadata.
* **Labels.** Ranks may differ in which labels their block has (a slice may have
  no stress, say): the store uses the union, and a rank lacking a label gets zero
  values with a zero ``has_<label>`` mask. All other arrays must be on every rank
  with the same dtype and trailing shape; otherwise the constructor raises
  ``ValueError`` on every rank (errors found on one rank, e.g. a malformed block,
  are shared first, so no rank is left waiting in a collective).
* **Locking.** Right after the windows are created each rank opens one shared
  passive-target access epoch to all ranks (``Win.Lock_all(MODE_NOCHECK)``; the
  data are read-only and nobody ever locks exclusively) and keeps it until
  :meth:`close`. A fetch issues its ``Get``s to every owner it needs and then
  completes them with one ``Flush_local_all`` per window, so there are no lock
  messages and transfers from different owners overlap.
* **Batched fetches.** :meth:`get_block` fetches each distinct sample once, sorts
  them (which groups them by owner), splits each owner's share into runs of
  consecutive samples (a run is contiguous in every array of the owner), and
  issues one ``Get`` per (owner, array) with an indexed datatype describing the
  runs on the owner side; the local share is a numpy copy. The result is then put
  in the requested order (duplicates allowed).
* **Bytes on the wire.** Arrays travel as raw bytes (no data-representation
  conversion): all ranks must share one byte order, as on any ordinary cluster.
* **Progress.** MPI may only move passive-target data when the owner enters the
  MPI library (MPICH without hardware RMA does this; measured here: a ``Get``
  from a rank that is busy in Python waits for it). A training loop that calls
  MPI collectives every step completes fetches, but a fetch can wait up to one
  step of the owner. With MPICH, ``MPIR_CVAR_ASYNC_PROGRESS=1`` gives each rank a
  progress thread and removes the wait (mpi4py initializes MPI with
  ``MPI_THREAD_MULTIPLE``, which that needs). A loop that communicates outside
  MPI (pygfm-train's gloo collectives) must keep progress going itself, or two
  ranks can wait on each other: :class:`pygfm.data.progress.MPIProgress` is a
  light thread for that (pygfm-train starts one with ``data.store: distributed``).
* **Lifetime.** :meth:`close` (alias :meth:`free`) is collective: every rank
  must call it, in the same order for several stores. A store that is never
  closed (or only garbage collected) is closed at interpreter exit by an
  ``atexit`` hook, still collectively and in creation order, before mpi4py
  finalizes MPI; so a forgotten ``close`` does not leave windows behind at
  ``MPI_Finalize`` (but the exposed arrays stay in memory until then: a store
  cannot be freed by garbage collection, which runs at different times on
  different ranks). Do not modify the block's arrays once the store is built:
  other ranks read them.
* **Threads.** A store is used by one thread at a time (its fetches are not
  synchronized against each other).

With ``comm=None`` the store is a single-process one: no MPI (mpi4py is not
imported), every sample is local, and the API is the same.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .block import DTYPES, MASKED, PER_ATOM, SampleBlock, _ranges
from .sample import Sample

__all__ = ["DistributedStore"]

# Arrays every rank derives from the gathered atom counts; never fetched.
_DERIVED = ("atom_offset", "atom_count")
# Arrays a rank may lack (label value and mask): filled with zeros there.
_OPTIONAL = {name: label for label in MASKED for name in (label, f"has_{label}")}
# Samples fetched per get_block call while iterating.
_ITER_CHUNK = 1024


class _Windows:
    """The MPI windows of one store, kept apart from the store so that an atexit
    hook can free them even when the store object itself is gone."""

    def __init__(self, comm):
        self.comm = comm
        self.wins: dict[str, Any] = {}
        self.buffers: list[np.ndarray] = []  # keep exposed memory alive
        self.rowtypes: dict[str, Any] = {}  # one row (sample or atom) of an array, bytes
        self.locked = False
        self.freed = False

    def free(self) -> None:
        if self.freed:
            return
        self.freed = True
        _forget(self)
        from mpi4py import MPI

        if MPI.Is_finalized():
            return
        for win in self.wins.values():
            if self.locked:
                win.Unlock_all()
            win.Free()
        for datatype in self.rowtypes.values():
            datatype.Free()
        self.rowtypes.clear()
        self.wins.clear()
        self.buffers.clear()


_OPEN: list[_Windows] = []  # creation order, the same on every rank
_OPEN_LOCK = threading.Lock()
_HOOKED = False


def _remember(windows: _Windows) -> None:
    global _HOOKED
    with _OPEN_LOCK:
        _OPEN.append(windows)
        if not _HOOKED:
            # Registered after mpi4py is imported (a communicator exists), so it
            # runs before mpi4py's own finalization.
            atexit.register(_free_all_at_exit)
            _HOOKED = True


def _forget(windows: _Windows) -> None:
    with _OPEN_LOCK:
        if windows in _OPEN:
            _OPEN.remove(windows)


def _free_all_at_exit() -> None:
    while _OPEN:  # each free() removes its entry
        _OPEN[0].free()


def _contiguous_rows(value: np.ndarray) -> np.ndarray:
    """C-contiguous and writable (MPI windows need writable memory); copies only
    where the array is not so already."""
    return np.require(value, requirements=("C_CONTIGUOUS", "WRITEABLE", "ALIGNED"))


def _array_meta(block: SampleBlock) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (value.dtype.str, tuple(value.shape[1:]))
            for name, value in block.arrays.items()}


def _prepare_local(block: SampleBlock, where: str) -> SampleBlock:
    """Checked, packed (sample k's atoms follow sample k-1's), contiguous copy-free
    where possible."""
    if not isinstance(block, SampleBlock):
        raise TypeError(f"{where}: expected a SampleBlock, got {type(block).__name__}")
    block.check(where)
    n = len(block)
    for name, value in block.arrays.items():
        if name not in DTYPES and value.shape[:1] != (n,):
            raise ValueError(f"{where}: the extra array {name!r} has shape {list(value.shape)}; "
                             f"extra arrays are per sample and must have {n} rows")
    for label in MASKED:
        if (label in block.arrays) != (f"has_{label}" in block.arrays):
            raise ValueError(f"{where}: the block has only one of {label!r} and "
                             f"'has_{label}'")
    counts = block.arrays["atom_count"]
    packed = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(counts[:-1], out=packed[1:])
    if not np.array_equal(block.arrays["atom_offset"], packed) or block.num_atoms != counts.sum():
        block = block.select(np.arange(n))
    return SampleBlock({name: _contiguous_rows(value) for name, value in block.arrays.items()},
                       block.dataset)


class DistributedStore:
    """A dataset spread over the ranks of ``comm``; see the module docstring.

    ``DistributedStore(block, comm)`` is collective: each rank passes its own
    slice. ``comm=None`` makes a single-process store.
    """

    def __init__(self, block: SampleBlock, comm=None):
        self._setup(block, comm, None)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_dataset(cls, dataset, comm=None) -> DistributedStore:
        """Collective: each rank reads its contiguous, near-equal share of
        ``dataset`` (``len(dataset)``, ``dataset.read_block(start, stop)``,
        ``dataset.name``) into memory and the store is built over the shares.
        Rank r holds ``n // size`` samples, one more if ``r < n % size``, starting
        at ``r * (n // size) + min(r, n % size)``. A rank with no share does not
        call ``read_block``. Errors on any rank are raised (as ValueError) on all."""
        rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
        store = cls.__new__(cls)
        block, error = None, None
        name = getattr(dataset, "name", None)
        try:
            total = len(dataset)
            start, stop = _share(total, rank, size)
            if stop > start:
                block = dataset.read_block(start, stop)
                if not isinstance(block, SampleBlock):
                    raise TypeError(f"read_block({start}, {stop}) returned a "
                                    f"{type(block).__name__}, not a SampleBlock")
                if len(block) != stop - start:
                    raise ValueError(f"read_block({start}, {stop}) returned {len(block)} "
                                     f"samples; expected {stop - start}")
            else:
                block = SampleBlock.from_samples([], dataset=name)
            if block.dataset is None:
                block.dataset = name
        except Exception as exc:  # shared with the other ranks before raising
            error = f"reading dataset {name!r}: {type(exc).__name__}: {exc}"
            if comm is None:
                raise
        store._setup(block, comm, error)
        if error is None and len(store) != total:
            store.close()
            raise ValueError(f"DistributedStore.from_dataset: the ranks hold {len(store)} "
                             f"samples of {name!r}, which has {total} (do all ranks see the "
                             "same dataset?)")
        return store

    def _setup(self, block: SampleBlock | None, comm, error: str | None) -> None:
        self._comm = comm
        self._windows: _Windows | None = None
        self._closed = False
        rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
        self._rank, self._size = rank, size
        where = f"DistributedStore (rank {rank})" if comm is not None else "DistributedStore"

        if error is None:
            try:
                block = _prepare_local(block, where)
            except Exception as exc:
                if comm is None:
                    raise
                error = f"{type(exc).__name__}: {exc}"
        meta = (None if error else (len(block), _array_meta(block), block.dataset), error)
        metas = [meta] if comm is None else comm.allgather(meta)

        errors = [f"rank {r}: {e}" for r, (_, e) in enumerate(metas) if e]
        if errors:
            raise ValueError("DistributedStore: building the store failed on "
                             + "; ".join(errors))
        names_meta, dataset = _agree([m for m, _ in metas])
        self._dataset = dataset

        # Local arrays: the agreed set; labels this rank lacks become zeros.
        n_local = len(block)
        arrays = {}
        for name, (dtype, trailing) in names_meta.items():
            value = block.arrays.get(name)
            if value is None:
                rows = block.num_atoms if name in PER_ATOM else n_local
                value = np.zeros((rows,) + trailing, dtype=np.dtype(dtype))
            arrays[name] = value
        self._local = SampleBlock(arrays, dataset)
        self._names = tuple(sorted(name for name in names_meta if name not in _DERIVED))
        self._meta = names_meta

        # Global metadata: running sum of atom counts over all samples.
        counts = [m[0] for m, _ in metas]
        self._rank_start = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(counts, out=self._rank_start[1:])
        total = int(self._rank_start[-1])
        atom_counts = np.empty(total, dtype=np.int64)
        local = np.ascontiguousarray(arrays["atom_count"], dtype=np.int64)
        if comm is None:
            atom_counts[:] = local
        else:
            from mpi4py import MPI

            comm.Allgatherv([local, MPI.INT64_T],
                            [atom_counts, (counts, self._rank_start[:-1].tolist()),
                             MPI.INT64_T])
        self._atom_cum = np.zeros(total + 1, dtype=np.int64)
        np.cumsum(atom_counts, out=self._atom_cum[1:])
        self._rank_atom_start = self._atom_cum[self._rank_start]

        if comm is not None:
            self._create_windows(comm)

    def _create_windows(self, comm) -> None:
        from mpi4py import MPI

        windows = _Windows(comm)
        try:
            for name in self._names:  # the same sorted order on every rank
                value = self._local.arrays[name]
                buffer = value if value.size else np.zeros(1, dtype=np.uint8)
                windows.buffers.append(buffer)
                windows.wins[name] = MPI.Win.Create(buffer, 1, MPI.INFO_NULL, comm)
            for win in windows.wins.values():
                win.Lock_all(MPI.MODE_NOCHECK)
            windows.locked = True
        except BaseException:
            windows.freed = True
            raise
        self._windows = windows
        _remember(windows)
        # One row (a sample or an atom) of each array, as bytes.
        for name in self._names:
            dtype, trailing = self._meta[name]
            row_bytes = int(np.prod(trailing, dtype=np.int64)) * np.dtype(dtype).itemsize
            windows.rowtypes[name] = MPI.BYTE.Create_contiguous(row_bytes).Commit()
        self._row_bytes = {name: windows.rowtypes[name].Get_size() for name in self._names}

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self._rank_start[-1])

    @property
    def num_local(self) -> int:
        """Samples held by this rank."""
        return len(self._local)

    @property
    def local_range(self) -> range:
        """Global indices held by this rank."""
        return range(int(self._rank_start[self._rank]), int(self._rank_start[self._rank + 1]))

    @property
    def dataset(self) -> str | None:
        """Name of the dataset (the blocks' common ``dataset``)."""
        return self._dataset

    @property
    def local_block(self) -> SampleBlock:
        """This rank's samples (the exposed arrays; do not modify)."""
        return self._local

    @property
    def labels(self) -> tuple[str, ...]:
        """Labels present in the store (on any rank)."""
        return self._local.labels

    @property
    def atom_counts(self) -> np.ndarray:
        """Atoms of every global sample (a new int64 array), e.g. for batching by
        size."""
        return np.diff(self._atom_cum)

    def owner(self, k: int) -> int:
        """Rank holding global sample ``k``."""
        k = self._index(k)
        return int(np.searchsorted(self._rank_start, k, side="right") - 1)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.num_local} local"
        return (f"DistributedStore(dataset={self._dataset!r}, samples={len(self)}, "
                f"ranks={self._size}, {state})")

    # ---------------------------------------------------------------- fetching
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("DistributedStore: the store is closed")

    def _index(self, k) -> int:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"DistributedStore: index {k!r} is not an integer")
        n = len(self)
        k = int(k)
        if not -n <= k < n:
            raise IndexError(f"DistributedStore: index {k} is out of range for "
                             f"{n} samples")
        return k + n if k < 0 else k

    def _indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"DistributedStore: indices must be integers, not {idx.dtype}")
        idx = idx.astype(np.int64).reshape(-1)
        n = len(self)
        bad = (idx < -n) | (idx >= n)
        if bad.any():
            raise IndexError(f"DistributedStore: index {int(idx[np.argmax(bad)])} is out of "
                             f"range for {n} samples")
        return np.where(idx < 0, idx + n, idx)

    def get(self, k: int) -> Sample:
        """Global sample ``k`` (negative counts from the end), a copy."""
        self._check_open()
        k = self._index(k)
        local = self.local_range
        if k in local:
            return self._local.sample(k - local.start)
        return self.get_block([k]).sample(0)

    def __getitem__(self, k: int) -> Sample:
        return self.get(k)

    def __iter__(self) -> Iterator[Sample]:
        for start in range(0, len(self), _ITER_CHUNK):
            block = self.get_block(np.arange(start, min(start + _ITER_CHUNK, len(self))))
            for j in range(len(block)):
                yield block.sample(j)

    def get_block(self, indices: Sequence[int] | np.ndarray) -> SampleBlock:
        """Samples ``indices`` (global, in that order, repeats allowed) as one new
        block, fetched with one ``Get`` per (owner rank, array)."""
        self._check_open()
        idx = self._indices(indices)
        here = self.local_range
        if len(idx) and here.start <= idx.min() and idx.max() < here.stop:
            return self._local.select(idx - here.start)  # all here: one copy
        unique, inverse = np.unique(idx, return_inverse=True)
        counts = self._atom_cum[unique + 1] - self._atom_cum[unique]
        offsets = np.zeros(len(unique), dtype=np.int64)
        if len(unique) > 1:
            np.cumsum(counts[:-1], out=offsets[1:])
        num_atoms = int(counts.sum())
        out = {"atom_offset": offsets, "atom_count": counts}
        for name in self._meta:
            if name not in _DERIVED:
                dtype, trailing = self._meta[name]
                rows = num_atoms if name in PER_ATOM else len(unique)
                out[name] = np.empty((rows,) + trailing, dtype=np.dtype(dtype))

        # Owner r's samples are unique[bounds[r]:bounds[r + 1]] (sorted = by owner).
        bounds = np.searchsorted(unique, self._rank_start)
        pending, remote = [], False
        try:
            for r in range(self._size):
                lo, hi = int(bounds[r]), int(bounds[r + 1])
                if lo == hi:
                    continue
                local = unique[lo:hi] - self._rank_start[r]
                atom_lo = int(offsets[lo])
                atom_hi = atom_lo + int(counts[lo:hi].sum())
                if r == self._rank:
                    atom_rows = _ranges(self._atom_cum[unique[lo:hi]] - self._rank_atom_start[r],
                                        counts[lo:hi])
                    for name in self._names:
                        src = self._local.arrays[name]
                        if name in PER_ATOM:
                            out[name][atom_lo:atom_hi] = src[atom_rows]
                        else:
                            out[name][lo:hi] = src[local]
                else:
                    remote = True
                    self._fetch_remote(r, unique[lo:hi], local, out, lo, hi, atom_lo, atom_hi,
                                       pending)
        finally:  # complete whatever was issued before `out` can go away
            if remote:
                for win in self._windows.wins.values():
                    win.Flush_local_all()
                for datatype in pending:
                    datatype.Free()

        result = SampleBlock(out, self._dataset)
        if len(unique) == len(idx) and np.array_equal(unique, idx):
            return result
        return result.select(inverse)

    def _fetch_remote(self, owner, global_idx, local, out, lo, hi, atom_lo, atom_hi, made):
        """Issue the Gets of one owner's share; appends to ``made`` the datatypes to
        free once the Gets are complete."""
        # Runs of consecutive local indices: contiguous in every array on the owner.
        starts = np.concatenate(([0], np.flatnonzero(np.diff(local) != 1) + 1))
        ends = np.append(starts[1:], len(local))
        sample_disp = local[starts]
        sample_len = ends - starts
        first_atom = self._atom_cum[global_idx[starts]] - self._rank_atom_start[owner]
        last_atom = self._atom_cum[global_idx[ends - 1] + 1] - self._rank_atom_start[owner]
        atom_len = last_atom - first_atom

        for name in self._names:
            row_bytes = self._row_bytes[name]
            if name in PER_ATOM:
                dest, disp, length, nrows = out[name][atom_lo:atom_hi], first_atom, atom_len, \
                    atom_hi - atom_lo
            else:
                dest, disp, length, nrows = out[name][lo:hi], sample_disp, sample_len, hi - lo
            if nrows == 0 or row_bytes == 0:
                continue
            rowtype = self._windows.rowtypes[name]
            if len(disp) == 1:
                target = (int(disp[0]) * row_bytes, nrows, rowtype)
            else:
                runs = rowtype.Create_hindexed(length.tolist(),
                                               (disp * row_bytes).tolist()).Commit()
                made.append(runs)
                target = (0, 1, runs)
            self._windows.wins[name].Get([dest, nrows, rowtype], owner, target)

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Free the MPI windows (collective: every rank calls it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._windows is not None:
            self._windows.free()
            self._windows = None

    free = close

    def __enter__(self) -> DistributedStore:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _share(total: int, rank: int, size: int) -> tuple[int, int]:
    """Rank's contiguous share of ``range(total)``: near-equal, the first
    ``total % size`` ranks one more."""
    base, extra = divmod(total, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _agree(metas) -> tuple[dict[str, tuple[str, tuple[int, ...]]], str | None]:
    """The common array set (union over ranks; only label arrays may be missing on
    some ranks) and the dataset name, or ValueError (the same on every rank)."""
    names: dict[str, tuple[str, tuple[int, ...]]] = {}
    problems = []
    for rank, (_, arrays, _) in enumerate(metas):
        for name, spec in arrays.items():
            if name not in names:
                names[name] = spec
    for name in sorted(names):
        specs = {}
        missing = []
        for rank, (_, arrays, _) in enumerate(metas):
            if name in arrays:
                specs.setdefault(arrays[name], []).append(rank)
            else:
                missing.append(rank)
        if len(specs) > 1:
            problems.append(f"{name!r} differs: " + ", ".join(
                f"ranks {ranks} have {np.dtype(d)} {list(t)}"
                for (d, t), ranks in specs.items()))
        if missing and name not in _OPTIONAL:
            problems.append(f"{name!r} is missing on ranks {missing}")
    datasets = {d for _, _, d in metas if d is not None}
    if len(datasets) > 1:
        problems.append(f"the ranks hold different datasets {sorted(datasets)}")
    if problems:
        raise ValueError("DistributedStore: the ranks' blocks do not match: "
                         + "; ".join(problems))
    return names, (datasets.pop() if datasets else None)

"""Run under mpiexec by tests/data/test_store.py: every rank builds DistributedStores
from deterministic blocks, fetches every global sample (local and remote) in
random order through get and get_block, and compares with the expected samples.

Exits non-zero with a message naming the rank and the case on any mismatch.
``--bench`` also measures fetch rates (local and remote) and prints them.
"""

from __future__ import annotations

import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

from pygfm.data.block import SampleBlock
from pygfm.data.sample import Sample
from pygfm.data.store import DistributedStore, _share

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
NAME = "fake"


def make_sample(g: int, stress_every: int = 5) -> Sample:
    """Deterministic sample g: 1..6 atoms, labels present on a pattern."""
    rng = np.random.default_rng(1000 + g)
    n = 1 + (g * 7) % 6
    periodic = g % 2 == 0
    return Sample(
        numbers=rng.integers(1, 119, n),
        positions=rng.normal(size=(n, 3)),
        cell=np.diag(rng.uniform(3, 5, 3)) if periodic else np.zeros((3, 3)),
        pbc=[True, True, g % 4 == 0] if periodic else False,
        energy=float(rng.normal()) if g % 3 else None,
        forces=rng.normal(size=(n, 3)) if g % 2 == 0 else None,
        stress=rng.normal(size=(3, 3)) if g % stress_every == 0 else None,
        dataset=NAME, index=g)


def fail(case: str, message: str) -> None:
    print(f"FAIL rank {RANK}/{SIZE} [{case}]: {message}", flush=True)
    COMM.Abort(1)


def same_sample(case: str, got: Sample, want: Sample, how: str) -> None:
    for field in ("numbers", "positions", "cell", "pbc", "forces", "stress"):
        a, b = getattr(got, field), getattr(want, field)
        if (a is None) != (b is None) or (a is not None and (
                a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b))):
            fail(case, f"{how}: sample {want.index}: {field} is {a!r}, expected {b!r}")
    for field in ("energy", "index", "dataset"):
        if getattr(got, field) != getattr(want, field):
            fail(case, f"{how}: sample {want.index}: {field} is {getattr(got, field)!r}, "
                       f"expected {getattr(want, field)!r}")


def same_block(case: str, got: SampleBlock, want: SampleBlock, how: str) -> None:
    # `want` may lack labels no sample of it has; the store carries them masked.
    for name, b in want.arrays.items():
        a = got.arrays.get(name)
        if a is None or a.dtype != b.dtype or not np.array_equal(a, b):
            fail(case, f"{how}: array {name!r} is {a!r}, expected {b!r}")
    for name, a in got.arrays.items():
        if name not in want.arrays and a.any():
            fail(case, f"{how}: array {name!r} should be all zero (a label no sample has)")
    if got.dataset != want.dataset:
        fail(case, f"{how}: dataset {got.dataset!r}, expected {want.dataset!r}")


def check_store(case: str, store: DistributedStore, expected: list[Sample],
                local: range) -> None:
    n = len(expected)
    if len(store) != n:
        fail(case, f"len(store) = {len(store)}, expected {n}")
    if store.local_range != local or store.num_local != len(local):
        fail(case, f"local_range {store.local_range}, expected {local}")
    if store.dataset != NAME:
        fail(case, f"dataset {store.dataset!r}")
    rng = np.random.default_rng(RANK + 17 * SIZE)
    order = rng.permutation(n)
    for k in order:
        same_sample(case, store.get(int(k)), expected[k], f"get({k})")
        same_sample(case, store[int(k) - n], expected[k], f"store[{int(k) - n}]")
    for how, idx in (("permutation", order),
                     ("repeats", rng.integers(0, n, 2 * n)),
                     ("sorted", np.arange(n)),
                     ("negative", np.arange(n)[::-1] - n),
                     ("chunk", order[: max(1, n // 3)])):
        got = store.get_block(idx)
        want = SampleBlock.from_samples([expected[k] for k in np.asarray(idx) % n],
                                        dataset=NAME)
        same_block(case, got, want, f"get_block({how})")
        if len(idx):
            same_sample(case, got.sample(len(idx) - 1), expected[int(idx[-1]) % n],
                        f"get_block({how}).sample(-1)")
    empty = store.get_block([])
    if len(empty) != 0 or empty.num_atoms != 0:
        fail(case, "get_block([]) is not empty")
    if sorted(empty.arrays) != sorted(store.local_block.arrays):
        fail(case, f"get_block([]) arrays {sorted(empty.arrays)}")
    got = [s.index for s in store]
    if got != list(range(n)):
        fail(case, f"iteration gave indices {got}")
    for bad in (n, -n - 1):
        try:
            store.get(bad)
        except IndexError as exc:
            if str(bad) not in str(exc) or str(n) not in str(exc):
                fail(case, f"IndexError message {exc}")
        else:
            fail(case, f"get({bad}) did not raise IndexError")
    try:
        store.get_block([0, n])
    except IndexError:
        pass
    else:
        fail(case, "get_block([0, n]) did not raise IndexError")


class FakeDataset:
    def __init__(self, n: int, stress_every: int = 5):
        self.n, self.name, self.stress_every = n, NAME, stress_every
        self.calls = []

    def __len__(self):
        return self.n

    def read_block(self, start: int, stop: int) -> SampleBlock:
        self.calls.append((start, stop))
        return SampleBlock.from_samples(
            [make_sample(g, self.stress_every) for g in range(start, stop)], dataset=NAME)


def case_counts(case: str, counts: list[int], stress_every: int = 5) -> None:
    starts = np.concatenate(([0], np.cumsum(counts)))
    local = range(int(starts[RANK]), int(starts[RANK + 1]))
    expected = [make_sample(g, stress_every) for g in range(int(starts[-1]))]
    block = SampleBlock.from_samples([expected[g] for g in local], dataset=NAME)
    with DistributedStore(block, COMM) as store:
        check_store(case, store, expected, local)
    if not store._closed:
        fail(case, "the context manager did not close the store")


def case_dataset(case: str, n: int, stress_every: int = 5) -> None:
    dataset = FakeDataset(n, stress_every)
    store = DistributedStore.from_dataset(dataset, COMM)
    start, stop = _share(n, RANK, SIZE)
    if dataset.calls not in ([(start, stop)], []) or (stop > start) != bool(dataset.calls):
        fail(case, f"read_block calls {dataset.calls}, expected ({start}, {stop})")
    sizes = COMM.allgather(store.num_local)
    if max(sizes) - min(sizes) > 1 or sum(sizes) != n:
        fail(case, f"uneven split {sizes}")
    check_store(case, store, [make_sample(g, stress_every) for g in range(n)],
                range(start, stop))
    store.free()
    store.close()  # idempotent


def case_mismatch(case: str) -> None:
    """A bad block on the last rank: every rank raises, none hangs."""
    block = SampleBlock.from_samples([make_sample(RANK)], dataset=NAME)
    if RANK == SIZE - 1:
        block.arrays["positions"] = block.arrays["positions"].astype(np.float32)
    try:
        DistributedStore(block, COMM)
    except ValueError as exc:
        if f"rank {SIZE - 1}" not in str(exc) or "positions" not in str(exc):
            fail(case, f"unclear error: {exc}")
    else:
        fail(case, "no ValueError for a float32 positions array")
    # Another dataset name on one rank.
    block = SampleBlock.from_samples([make_sample(RANK)], dataset=NAME + str(RANK % 2))
    try:
        DistributedStore(block, COMM)
    except ValueError as exc:
        if SIZE > 1 and "different datasets" not in str(exc):
            fail(case, f"unclear error: {exc}")
    else:
        if SIZE > 1:
            fail(case, "no ValueError for different dataset names")


def case_dataset_error(case: str) -> None:
    """read_block fails on the last rank only: every rank raises, none hangs."""
    class Broken(FakeDataset):
        def read_block(self, start, stop):
            if RANK == SIZE - 1:
                raise OSError("disk on fire")
            return super().read_block(start, stop)

    try:
        DistributedStore.from_dataset(Broken(4 * SIZE), COMM)
    except ValueError as exc:
        if "disk on fire" not in str(exc) or f"rank {SIZE - 1}" not in str(exc):
            fail(case, f"unclear error: {exc}")
    else:
        fail(case, "no error when read_block fails on one rank")


def bench(n_local: int = 5000, batch: int = 64, batches: int = 100) -> None:
    """Fetch rates: get_block of random batches wholly local / wholly remote, and
    single get. Every rank runs the same loops at once (so owners are in MPI)."""
    rng = np.random.default_rng(RANK)
    base = RANK * n_local
    n_atoms = rng.integers(5, 60, n_local)
    total = int(n_atoms.sum())
    arrays = {
        "numbers": rng.integers(1, 119, total).astype(np.uint8),
        "positions": rng.normal(size=(total, 3)),
        "forces": rng.normal(size=(total, 3)),
        "atom_offset": np.concatenate(([0], np.cumsum(n_atoms)[:-1])).astype(np.int64),
        "atom_count": n_atoms.astype(np.int64),
        "cell": np.zeros((n_local, 3, 3)),
        "pbc": np.zeros((n_local, 3), np.uint8),
        "sample_id": np.arange(base, base + n_local, dtype=np.int64),
        "energy": rng.normal(size=n_local),
        "has_energy": np.ones(n_local, np.uint8),
        "has_forces": np.ones(n_local, np.uint8),
    }
    store = DistributedStore(SampleBlock(arrays, NAME), COMM)
    other = (RANK + 1) % SIZE
    rows = []
    for label, owner in (("local", RANK), ("remote", other)):
        lo = owner * n_local
        COMM.Barrier()
        t = time.perf_counter()
        atoms = 0
        for _ in range(batches):
            got = store.get_block(rng.integers(lo, lo + n_local, batch))
            atoms += got.num_atoms
        dt = time.perf_counter() - t
        rows.append(f"get_block({batch}) {label}: {batches * batch / dt:,.0f} samples/s "
                    f"({batches / dt:,.0f} batches/s, {atoms / dt / 1e6:.2f} M atoms/s)")
        COMM.Barrier()
        t = time.perf_counter()
        singles = batches * 4
        for k in rng.integers(lo, lo + n_local, singles):
            store.get(int(k))
        dt = time.perf_counter() - t
        rows.append(f"get() {label}: {singles / dt:,.0f} samples/s")
    # Mixed: batches drawn over the whole dataset (what a shuffling loader does).
    COMM.Barrier()
    t = time.perf_counter()
    for _ in range(batches):
        store.get_block(rng.integers(0, len(store), batch))
    dt = time.perf_counter() - t
    rows.append(f"get_block({batch}) uniform over {SIZE} ranks: "
                f"{batches * batch / dt:,.0f} samples/s")
    # Remote with the owner idle inside MPI (a Barrier): the transfer cost alone.
    COMM.Barrier()
    if RANK == 0 and SIZE > 1:
        t = time.perf_counter()
        for _ in range(batches):
            store.get_block(rng.integers(n_local, 2 * n_local, batch))
        dt = time.perf_counter() - t
        rows.append(f"get_block({batch}) remote, owner idle in MPI: "
                    f"{batches * batch / dt:,.0f} samples/s")
        t = time.perf_counter()
        for k in rng.integers(n_local, 2 * n_local, batches):
            store.get(int(k))
        dt = time.perf_counter() - t
        rows.append(f"get() remote, owner idle in MPI: {batches / dt:,.0f} samples/s")
    COMM.Barrier()
    store.close()
    if RANK == 0:
        for row in rows:
            print(f"BENCH rank 0 of {SIZE}: {row}", flush=True)


def main() -> None:
    cases = [
        ("uneven", lambda: case_counts("uneven", [5, 8, 3, 6][:SIZE] + [4] * max(0, SIZE - 4))),
        ("empty-rank", lambda: case_counts("empty-rank", [7] + [0] + [4] * (SIZE - 2))),
        # stress only on sample 0 (rank 0): the other ranks lack the label entirely
        ("label-on-one-rank", lambda: case_counts("label-on-one-rank",
                                                  [3] * SIZE, stress_every=10 ** 9)),
        ("from_dataset", lambda: case_dataset("from_dataset", 23)),
        ("from_dataset-tiny", lambda: case_dataset("from_dataset-tiny", 1)),
        ("mismatch", lambda: case_mismatch("mismatch")),
        ("from_dataset-error", lambda: case_dataset_error("from_dataset-error")),
    ]
    for name, run in cases:
        try:
            run()
        except Exception:  # noqa: BLE001 - reported, then the job is aborted
            fail(name, "exception\n" + traceback.format_exc())
        COMM.Barrier()
        if RANK == 0:
            print(f"ok {name}", flush=True)
    if "--bench" in sys.argv:
        bench()
    if "--bench-full" in sys.argv:
        bench(n_local=20000, batches=400)
    # Left open on purpose: the atexit hook must free it before MPI finalizes.
    _leak = DistributedStore(SampleBlock.from_samples([make_sample(RANK)], dataset=NAME), COMM)
    if RANK == 0:
        print(f"ALL OK on {SIZE} ranks", flush=True)


if __name__ == "__main__":
    main()

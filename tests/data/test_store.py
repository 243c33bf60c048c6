"""DistributedStore: single-process behaviour here, multi-rank behaviour by running
tests/data/mpi/store_check.py under ``mpiexec -n 2`` and ``-n 3``."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pygfm.data.block import SampleBlock
from pygfm.data.sample import Sample
from pygfm.data.store import DistributedStore, _share

SCRIPT = Path(__file__).parent / "mpi" / "store_check.py"


def make_sample(g: int) -> Sample:
    rng = np.random.default_rng(g)
    n = 1 + (g * 5) % 4
    return Sample(numbers=rng.integers(1, 119, n), positions=rng.normal(size=(n, 3)),
                  cell=np.eye(3) * 4 if g % 2 else np.zeros((3, 3)), pbc=bool(g % 2),
                  energy=float(g) if g % 3 else None,
                  forces=rng.normal(size=(n, 3)) if g % 2 == 0 else None,
                  stress=np.eye(3) * g if g == 4 else None, dataset="toy", index=g)


def assert_same_sample(got: Sample, want: Sample) -> None:
    for field in ("numbers", "positions", "cell", "pbc", "forces", "stress"):
        a, b = getattr(got, field), getattr(want, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert a.dtype == b.dtype and np.array_equal(a, b), field
    assert (got.energy, got.index, got.dataset) == (want.energy, want.index, want.dataset)


def assert_same_block(got: SampleBlock, want: SampleBlock) -> None:
    assert sorted(got.arrays) == sorted(want.arrays)
    for name, value in want.arrays.items():
        assert got.arrays[name].dtype == value.dtype, name
        assert np.array_equal(got.arrays[name], value), name
    assert got.dataset == want.dataset


class FakeDataset:
    name = "toy"

    def __init__(self, n, wrong_count=False):
        self.n, self.wrong_count, self.calls = n, wrong_count, []

    def __len__(self):
        return self.n

    def read_block(self, start, stop):
        self.calls.append((start, stop))
        stop = stop - 1 if self.wrong_count else stop
        return SampleBlock.from_samples([make_sample(g) for g in range(start, stop)])


@pytest.fixture
def samples():
    return [make_sample(g) for g in range(9)]


@pytest.fixture
def block(samples):
    return SampleBlock.from_samples(samples, dataset="toy")


def test_single_process_get(samples, block):
    with DistributedStore(block) as store:
        assert len(store) == store.num_local == 9
        assert store.local_range == range(9)
        assert store.dataset == "toy"
        assert store.labels == ("energy", "forces", "stress")
        assert np.array_equal(store.atom_counts, [s.num_atoms for s in samples])
        assert store.owner(-1) == 0
        for k in range(9):
            assert_same_sample(store.get(k), samples[k])
            assert_same_sample(store[k - 9], samples[k])
        assert [s.index for s in store] == list(range(9))
        assert "9 local" in repr(store)


def test_single_process_get_block(samples, block):
    store = DistributedStore(block)
    rng = np.random.default_rng(0)
    for idx in (rng.permutation(9), rng.integers(0, 9, 20), np.arange(9), [3], [-1, -9, 0]):
        got = store.get_block(idx)
        assert_same_block(got, block.select(np.asarray(idx) % 9))
        for j, k in enumerate(np.asarray(idx) % 9):
            assert_same_sample(got.sample(j), samples[k])
    empty = store.get_block([])
    assert len(empty) == 0 and empty.num_atoms == 0
    assert sorted(empty.arrays) == sorted(block.arrays)
    store.close()


def test_errors(block):
    store = DistributedStore(block)
    for bad in (9, -10):
        with pytest.raises(IndexError, match=f"index {bad} is out of range for 9 samples"):
            store.get(bad)
    with pytest.raises(IndexError, match="index 12 is out of range"):
        store.get_block([0, 12])
    with pytest.raises(TypeError):
        store.get(1.0)
    with pytest.raises(TypeError):
        store.get_block([0.5])
    store.free()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.get(0)
    with pytest.raises(TypeError, match="SampleBlock"):
        DistributedStore([make_sample(0)])
    bad = SampleBlock({**block.arrays, "positions": block.arrays["positions"].astype(np.float32)})
    with pytest.raises(ValueError, match="positions"):
        DistributedStore(bad)


def test_unpacked_and_readonly_block(samples):
    """A block whose samples' atoms are stored in another order (and read-only
    arrays) reads back the same samples."""
    packed = SampleBlock.from_samples(samples, dataset="toy")
    a = packed.arrays
    order = np.arange(len(samples))[::-1]
    rows = np.concatenate([np.arange(a["atom_offset"][k], a["atom_offset"][k] + a["atom_count"][k])
                           for k in order])
    arrays = dict(a)
    for name in ("numbers", "positions", "forces"):
        arrays[name] = a[name][rows]
    new_offset = np.zeros(len(samples), np.int64)
    new_offset[order] = np.concatenate(([0], np.cumsum(a["atom_count"][order])[:-1]))
    arrays["atom_offset"] = new_offset
    for value in arrays.values():
        value.flags.writeable = False
    store = DistributedStore(SampleBlock(arrays, "toy"))
    for k, sample in enumerate(samples):
        assert_same_sample(store.get(k), sample)
    assert_same_block(store.get_block(np.arange(9)), packed)


def test_from_dataset_single_process():
    dataset = FakeDataset(7)
    store = DistributedStore.from_dataset(dataset)
    assert dataset.calls == [(0, 7)]
    assert len(store) == 7 and store.dataset == "toy"
    for k in range(7):
        assert_same_sample(store.get(k), make_sample(k))
    empty = DistributedStore.from_dataset(FakeDataset(0))
    assert len(empty) == 0 and empty.dataset == "toy" and list(empty) == []
    with pytest.raises(ValueError, match="returned 4 samples; expected 5"):
        DistributedStore.from_dataset(FakeDataset(5, wrong_count=True))


def test_share():
    for total in (0, 1, 5, 23):
        for size in (1, 2, 3, 4):
            shares = [_share(total, r, size) for r in range(size)]
            assert shares[0][0] == 0 and shares[-1][1] == total
            assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))
            lengths = [b - a for a, b in shares]
            assert max(lengths) - min(lengths) <= 1


# ------------------------------------------------------------------ multi-rank
def _mpiexec() -> list[str]:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed")
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    version = subprocess.run([str(mpiexec), "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    if "HYDRA" in version:  # MPICH: start ranks by fork (no ssh, works as root/in containers)
        return [str(mpiexec), "-launcher", "fork"]
    if "Open MPI" in version or "OpenRTE" in version:
        return [str(mpiexec), "--oversubscribe"]
    return [str(mpiexec)]


@pytest.mark.parametrize("ranks", [2, 3])
def test_multi_rank(ranks, tmp_path):
    cmd = _mpiexec() + ["-n", str(ranks), sys.executable, str(SCRIPT)]
    if ranks == 2:
        cmd.append("--bench")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                              cwd=tmp_path, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} hung (killed after 120 s); output:\n{exc.stdout}\n"
                    f"{exc.stderr}")
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{output}"
    assert f"ALL OK on {ranks} ranks" in output, output
    assert "FAIL" not in output, output
    # the store left open on purpose was freed before MPI_Finalize (UCX complains otherwise)
    assert "not returned to mpool" not in output and "destroying inuse" not in output, output

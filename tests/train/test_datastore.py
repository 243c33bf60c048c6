"""``data.store``: where a training run keeps its datasets (pygfm.train.datastore).

With ``distributed`` each rank holds 1/N of every dataset in a DistributedStore and
fetches the rest from the other ranks; the batches, and so the losses and weights,
must be those of ``memory`` bit for bit: alone (in process) and under ``mpiexec -n 2``
(with the loader's prefetch thread, so fetches run beside the training step and lean
on the MPI progress thread)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from _train_helpers import (cli_command, demo_cache, describe, mpiexec, run_command,
                            tiny_config, write_yaml)
from pygfm.models.checkpoint import load_checkpoint
from pygfm.train import ConfigError, resolve, train
from pygfm.train.config import defaults
from pygfm.train.datastore import DataStores


def metrics_without_time(run_dir) -> list[dict]:
    """metrics.csv rows without elapsed_s (wall time differs between runs)."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


def assert_same_weights(first, second) -> None:
    a, b = load_checkpoint(first)["state_dict"], load_checkpoint(second)["state_dict"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ between {first} and {second}: {different}"


# ----------------------------------------------------------------- config
def test_default_is_memory_and_bad_values_name_the_key():
    assert defaults()["data"] == {"store": "memory"}
    base = {"datasets": ["demo:molecules-b3lyp"]}
    assert resolve({**base, "data": {"store": "distributed"}})["data"]["store"] == "distributed"
    with pytest.raises(ConfigError, match=r"data\.store: must be one of memory, distributed, "
                                          r"got 'disk'"):
        resolve({**base, "data": {"store": "disk"}})
    with pytest.raises(ConfigError, match=r"data\.stores: unknown key"):
        resolve({**base, "data": {"stores": "memory"}})
    with pytest.raises(ConfigError, match=r"data\.store: expected a non-empty string"):
        resolve({**base, "data": {"store": 2}})


def test_distributed_without_mpi_on_several_ranks_is_a_config_error():
    torchrun = SimpleNamespace(size=2, rank=0, comm=None, launcher="torchrun", is_main=True)
    with pytest.raises(ConfigError, match=r"data\.store: distributed needs MPI .* torchrun"):
        DataStores("distributed", torchrun)
    DataStores("memory", torchrun)  # memory needs no MPI
    with pytest.raises(ConfigError, match=r"data\.store: must be one of"):
        DataStores("disk", torchrun)


# ----------------------------------------------------------------- one rank, in process
def test_distributed_alone_trains_exactly_as_memory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYGFM_CACHE", str(demo_cache()))
    threads = torch.get_num_threads()
    try:
        for store in ("memory", "distributed"):
            config = resolve(tiny_config(data={"store": store},
                                         training={"max_steps": 6, "plots": False}))
            train(config, tmp_path / store, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert "data.store distributed on one rank" in capsys.readouterr().out
    memory, distributed = (metrics_without_time(tmp_path / s) for s in ("memory", "distributed"))
    assert len(memory) == 2 and memory == distributed
    assert_same_weights(tmp_path / "memory" / "last.pt", tmp_path / "distributed" / "last.pt")


# ----------------------------------------------------------------- two ranks
def test_two_ranks_distributed_store_gives_the_memory_run(tmp_path):
    """Same seed, two ranks: the distributed store's run logs the same metrics and ends
    with the same weights as the memory run (prefetch 2: fetches from a thread)."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(
        sampling={"batch_atoms": 200, "prefetch": 2}, training={"plots": False}))
    outputs = {}
    for store in ("memory", "distributed"):
        command = mpiexec(2) + cli_command(config, "--run-dir", tmp_path / store, "--quiet",
                                           "--set", f"data.store={store}")
        result = run_command(command, tmp_path, timeout=240)
        assert result.returncode == 0, describe(result)
        outputs[store] = result.stdout
    assert "data.store distributed over 2 ranks: rank 0 holds" in outputs["distributed"]
    assert "data.store distributed" not in outputs["memory"]
    memory, distributed = (metrics_without_time(tmp_path / s) for s in ("memory", "distributed"))
    assert [int(r["step"]) for r in memory] == [3, 6, 9, 12]
    assert memory == distributed
    for name in ("last.pt", "best.pt"):
        assert_same_weights(tmp_path / "memory" / name, tmp_path / "distributed" / name)

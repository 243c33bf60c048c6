"""Shared helpers for the tests of pygfm.train (a plain module, no fixtures).

* :func:`random_samples` / :func:`make_batch`: small random labelled batches (molecules,
  bulk crystals and slabs, with every subset of energy / forces / stress labels), one
  block per structure so every structure gets its own dataset index.
* :func:`demo_cache`: a temporary PYGFM_CACHE shared by the whole pytest process, with
  the demo datasets the tests use converted once.
* :func:`tiny_config`: the config of a tiny run on two demo datasets (seconds).
* :func:`run_command` / :func:`cli` / :func:`mpiexec`: subprocesses with a timeout
  that kills the whole process group (mpiexec's ranks too) and fails the test.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TIMEOUT = 300  # seconds any subprocess may take before the test fails as hung

# the demo datasets the training tests use (metals: periodic cells with stress)
DEMO_NAMES = ("metals-emt", "molecules-dft", "molecules-b3lyp")

# label subsets cycled over
LABEL_SETS = (("energy", "forces", "stress"), ("energy",), ("forces",), (),
              ("energy", "forces"), ("energy", "stress"), ("forces", "stress"))
KINDS = ("molecule", "bulk", "slab")


# ----------------------------------------------------------------- random batches
def random_structure(rng: np.random.Generator, kind: str, labels, max_atoms: int = 5):
    """A Sample: atoms on a jittered grid (no overlaps), random (unphysical) labels."""
    from pygfm.data import Sample

    n = int(rng.integers(1, max_atoms + 1))
    numbers = rng.choice([1, 6, 8, 29], size=n)
    m = int(np.ceil(n ** (1 / 3))) + 1
    grid = np.stack(np.unravel_index(rng.choice(m ** 3, size=n, replace=False), (m, m, m)),
                    axis=1).astype(float)
    spacing = 1.9
    positions = grid * spacing + rng.uniform(-0.15, 0.15, size=(n, 3))
    cell, pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
    if kind == "bulk":
        cell = np.diag([m * spacing] * 3) + rng.uniform(-0.2, 0.2, (3, 3)) * (1 - np.eye(3))
        pbc = np.ones(3, dtype=bool)
    elif kind == "slab":
        cell = np.diag([m * spacing, m * spacing, m * spacing + 8.0])
        pbc = np.array([True, True, False])
    stress = rng.normal(size=(3, 3)) * 0.05
    return Sample(numbers=numbers, positions=positions, cell=cell, pbc=pbc,
                  energy=float(rng.normal(-3.0 * n, 1.0)) if "energy" in labels else None,
                  forces=rng.normal(size=(n, 3)) if "forces" in labels else None,
                  stress=(stress + stress.T) / 2 if "stress" in labels else None)


def random_samples(n: int, seed: int, datasets: int = 3):
    """(samples, dataset index per sample): every kind and label subset appears."""
    rng = np.random.default_rng(seed)
    samples, owners = [], []
    for k in range(n):
        kind = KINDS[k % len(KINDS)]
        labels = LABEL_SETS[(k // len(KINDS) + k) % len(LABEL_SETS)]
        if "stress" in labels and kind == "molecule":
            kind = "bulk"
        samples.append(random_structure(rng, kind, labels))
        owners.append(int(rng.integers(datasets)))
    return samples, owners


def make_batch(samples, owners, dtype=None):
    """collate with one block per structure (so each keeps its own dataset index)."""
    import torch

    from pygfm.data import SampleBlock, collate

    blocks = [SampleBlock.from_samples([s]) for s in samples]
    return collate(blocks, dataset=list(owners), dtype=dtype or torch.float64)


# ----------------------------------------------------------------- demo data
_CACHE: dict = {}


def demo_cache() -> Path:
    """A temporary PYGFM_CACHE for the whole pytest process (removed at exit) with
    DEMO_NAMES converted once. The environment of this process is not changed:
    pass :func:`env` to subprocesses, monkeypatch PYGFM_CACHE for in-process runs."""
    if "path" not in _CACHE:
        path = Path(tempfile.mkdtemp(prefix="pygfm-train-tests-cache-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        from pygfm.data.demo import demo_dataset

        for name in DEMO_NAMES:
            demo_dataset(name, directory=path / "demo")
        _CACHE["path"] = path
    return _CACHE["path"]


@pytest.fixture
def demo_environment(monkeypatch):
    """The shared demo cache, and torch's thread count restored after each test (the
    trainer sets it from `threads`). Modules use it with
    ``pytestmark = pytest.mark.usefixtures("demo_environment")`` after importing it."""
    import torch

    monkeypatch.setenv("PYGFM_CACHE", str(demo_cache()))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def env(**extra) -> dict:
    """The environment for a pygfm-train subprocess: the shared demo cache, one
    thread per process (the machine is small and shared)."""
    out = dict(os.environ, PYGFM_CACHE=str(demo_cache()), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONHASHSEED="0")
    # a test run under a torchrun/MPI environment must not leak it into the children
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(name, None)
    out.update({k: str(v) for k, v in extra.items()})
    return out


# ----------------------------------------------------------------- configs
TINY = {
    "seed": 0,
    "device": "cpu",  # also on a GPU machine: two ranks cannot share one GPU under NCCL
    "threads": 1,
    "datasets": [
        {"path": "demo:metals-emt", "max_samples": 40, "validation_fraction": 0.01},
        {"path": "demo:molecules-dft", "max_samples": 40, "validation_fraction": 0.1},
    ],
    "sampling": {"batch_atoms": 200, "prefetch": 0},
    "model": {"n_features": 8, "n_interactions": 1, "n_rbf": 8},
    "schedule": {"warmup_steps": 2},
    "training": {"max_steps": 12, "eval_every": 3, "log_every": 1},
}
TINY_HEADS = ("metals-emt", "molecules-dft")

# one structure per batch and rank, MAE on energy alone: a step's loss is the mean
# |energy error| per atom over the step's structures, so train_loss == train_energy_mae
TRAIN_LOSS_CONFIG = {
    "seed": 1, "device": "cpu", "threads": 1,
    "datasets": [{"path": "demo:molecules-b3lyp", "max_samples": 40,
                  "validation_fraction": 0.1}],
    "sampling": {"batch_atoms": 1, "prefetch": 0},
    "model": {"n_features": 8, "n_interactions": 1, "n_rbf": 8},
    "loss": {"kind": "mae", "energy": 1.0, "forces": 0.0},
    "training": {"max_steps": 6, "eval_every": 3, "plots": False},
}


def tiny_config(**sections) -> dict:
    """TINY with sections updated (``training={"max_steps": 6}`` merges into training)."""
    config = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def write_yaml(path: Path, content: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return path


# ----------------------------------------------------------------- subprocesses
def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_command(command, cwd, *, timeout: float = TIMEOUT, environment=None,
                allow_timeout: bool = False) -> subprocess.CompletedProcess:
    """Run ``command`` (its own process group); on timeout kill the group and fail
    the test (or, with ``allow_timeout``, return returncode None)."""
    command = [str(c) for c in command]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment or env(), start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        stdout, stderr = process.communicate()
        if allow_timeout:
            return subprocess.CompletedProcess(command, None, stdout, stderr)
        pytest.fail(f"{' '.join(command)} hung (killed after {timeout} s):\n{stdout}\n{stderr}")
    finally:
        if process.poll() is None:
            _kill_group(process)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def signal_when(command, cwd, path: Path, sig=signal.SIGKILL, *, group: bool = True,
                what: str = "") -> subprocess.CompletedProcess:
    """Start ``command`` (its own process group) and, once ``path`` exists, send it
    ``sig`` (its whole group when ``group``, else the process alone); the test fails
    if it ends first or TIMEOUT passes. Returns its exit status and output."""
    command = [str(c) for c in command]
    process = subprocess.Popen(command, cwd=cwd, env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    try:
        while not Path(path).exists():
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"the run ended ({process.returncode}) before {what or path} "
                            f"appeared:\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what or path} within {TIMEOUT} s")
            time.sleep(0.005)
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            _kill_group(process)
            out, err = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def cli_command(*args) -> list[str]:
    return [PYTHON, "-m", "pygfm.cli.train", *map(str, args)]


def cli(*args, cwd, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """``pygfm-train ARGS`` in a subprocess (run from ``cwd``, a temporary directory,
    so that the installed package is imported, not the source tree)."""
    return run_command(cli_command(*args), cwd, timeout=timeout, **kwargs)


def mpiexec(ranks: int = 2) -> list[str]:
    """The mpiexec next to this python, with what it needs to run here (not skipped:
    CI runs these tests; a missing MPI is a failure)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.fail("mpi4py is not installed (pip install mpi4py); the MPI tests need it")
    launcher = Path(PYTHON).parent / "mpiexec"
    if not launcher.exists():
        found = shutil.which("mpiexec")
        if found is None:
            pytest.fail(f"no mpiexec next to {PYTHON} or on PATH")
        launcher = Path(found)
    version = subprocess.run([str(launcher), "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    if "HYDRA" in version:  # MPICH: start ranks by fork (no ssh; works as root, in containers)
        return [str(launcher), "-launcher", "fork", "-n", str(ranks)]
    if "Open MPI" in version or "OpenRTE" in version:
        return [str(launcher), "--oversubscribe", "-n", str(ranks)]
    return [str(launcher), "-n", str(ranks)]


def describe(result: subprocess.CompletedProcess) -> str:
    return (f"{' '.join(result.args)} exited with {result.returncode}\n--- stdout\n"
            f"{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}")

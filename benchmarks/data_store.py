"""Training data store: how much of the collection does each rank hold?

Question (issue #15): with ``data.store: distributed`` does each rank of
``pygfm-train`` hold about 1/N of the collection in memory, against the whole of it
with ``data.store: memory``, for N = 1, 2, 3 ranks?

Inputs: a generated dataset (``--atoms``, default 400,000 atoms in structures of
20-60 atoms with energy, forces and stress; written once with
pygfm.data.write_dataset into $TMPDIR/pygfm-bench-store). Each rank does what
pygfm-train does with its datasets (pygfm.train.trainer._split, then
DataStores.hold for the training and the validation set, 10 % held out) and
reports its resident memory (RSS, /proc/self/statm) before and after, the peak RSS
growth (ru_maxrss), and the bytes its stores hold. The once-only statistics pass
(rank 0 streams the data from disk) is not part of it.

Memory, not time: the numbers do not depend on a quiet machine.

    python benchmarks/data_store.py [--atoms N] [--ranks 1 2 3]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _machine import cpu_model  # benchmarks/_machine.py, beside this script




def trim() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise, so RSS
    would count the temporaries of reading as held data)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


def make_dataset(path: Path, atoms: int) -> Path:
    """A random periodic dataset of about ``atoms`` atoms (cached by size)."""
    from pygfm.data import Sample, write_dataset
    from pygfm.data.adios import MANIFEST

    if (path / MANIFEST).exists():
        return path

    def samples():
        rng = np.random.default_rng(0)
        total = 0
        while total < atoms:
            n = int(rng.integers(20, 61))
            total += n
            side = (n * 12.0) ** (1 / 3)
            stress = rng.normal(size=(3, 3)) * 0.01
            yield Sample(numbers=rng.choice([1, 6, 8, 14, 29], n),
                         positions=rng.uniform(0, side, (n, 3)), cell=np.eye(3) * side,
                         pbc=True, energy=float(rng.normal(-4.0 * n, 1.0)),
                         forces=rng.normal(size=(n, 3)), stress=(stress + stress.T) / 2)

    write_dataset(path, samples(), name="generated", fidelity="random (benchmark)")
    return path


def worker(args) -> None:
    """One rank: open and hold the dataset as pygfm-train does; rank 0 prints the
    per-rank results as one JSON line."""
    from pygfm.train.config import resolve
    from pygfm.train.datastore import DataStores
    from pygfm.train.parallel import Parallel
    from pygfm.train.trainer import _split

    parallel = Parallel("gloo")
    entry = resolve({"datasets": [str(args.path)]})["datasets"][0]
    stores = DataStores(args.mode, parallel)
    # Warm-up outside the measurement: the readers' imports (ADIOS2) and, with MPI,
    # the one-sided machinery (a tiny store built and freed) take memory of their own.
    from pygfm.data import DistributedStore, open_dataset

    open_dataset(args.path).take([0])
    if parallel.comm is not None:
        DistributedStore.from_dataset(open_dataset(args.path)[:parallel.size],
                                      parallel.comm).close()
    trim()
    before, peak_before = resident_mb(), peak_mb()
    _, train_view, validation_view = _split(entry, 0, 0, parallel, stores.load_whole)
    held = stores.hold({"train": train_view}), stores.hold({"validation": validation_view})
    trim()
    row = {"rss_mb": resident_mb() - before, "peak_mb": peak_mb() - peak_before,
           "store_mb": stores.resident_bytes() / 1e6,
           "samples": sum(s.num_local if hasattr(s, "num_local") else len(s)
                          for part in held for s in part.values())}
    rows = [row] if parallel.comm is None else parallel.comm.gather(row, root=0)
    if parallel.is_main:
        print("RESULT " + json.dumps(rows), flush=True)
    stores.close()
    parallel.close()


def launcher(ranks: int) -> list[str]:
    if ranks == 1:
        return [sys.executable]
    mpiexec = Path(sys.executable).with_name("mpiexec")
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("no mpiexec next to this python or on PATH")
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                             check=False).stdout
    fork = ["-launcher", "fork"] if "HYDRA" in version else []
    return [mpiexec, *fork, "-n", str(ranks), sys.executable]


def measure(path: Path, mode: str, ranks: int) -> list[dict]:
    command = launcher(ranks) + [__file__, "--worker", "--mode", mode, "--path", str(path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                     f"\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, default=400_000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="memory", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    path = make_dataset(Path(tempfile.gettempdir()) / "pygfm-bench-store" / str(args.atoms),
                        args.atoms)
    from pygfm.data import open_dataset

    dataset = open_dataset(path)
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs; dataset: {len(dataset)} structures, "
          f"{int(dataset.num_atoms.sum())} atoms ({path})")
    print("\n| data.store | ranks | per-rank RSS growth (MB) | per-rank peak growth (MB) | "
          "store bytes per rank (MB) | samples per rank | fraction of 1 rank |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in ("memory", "distributed"):
        single = None
        for ranks in args.ranks:
            rows = measure(path, mode, ranks)
            rss = np.mean([r["rss_mb"] for r in rows])
            single = rss if single is None else single
            print(f"| {mode} | {ranks} | " + " / ".join(f"{r['rss_mb']:.1f}" for r in rows)
                  + " | " + " / ".join(f"{r['peak_mb']:.1f}" for r in rows)
                  + " | " + " / ".join(f"{r['store_mb']:.1f}" for r in rows)
                  + " | " + " / ".join(str(r["samples"]) for r in rows)
                  + f" | {rss / single:.2f} |", flush=True)


if __name__ == "__main__":
    main()

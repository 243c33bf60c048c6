"""Data loading: is the input pipeline ever the bottleneck of training?

Question: how many structures (and atoms) per second does pygfm's input pipeline
deliver, from ADIOS2 datasets through sampling, batching and neighbor lists, on
one rank and on two, compared with the rate at which the demo PaiNN model
trains on the same batches? Goal (issue #5): at least 5x the model's rate.

Inputs: the shipped demo collection (metals-emt, molecules-xtb, molecules-dft,
molecules-b3lyp), converted to pygfm datasets (cached). Batches hold up to
``--atom-budget`` atoms, datasets mixed with alpha = 0.5.

Stages, one rank (each measured over the same number of batches, medians of
``--repeats`` passes):
  read       open each dataset fresh and read it sequentially (read_block)
  disk       the training loader on datasets on disk: sampled order, per-batch reads
  memory     the same from datasets loaded into memory (load())
  +neighbors memory + neighbor lists at 5 Å (what the model consumes)
  model      one training step of the demo model (PaiNN F=128, 3 interactions,
             energy + force loss, backward, Adam) per batch
Two ranks (``mpiexec -n 2``; skipped when mpiexec or mpi4py is missing): each
rank holds half of every dataset in a DistributedStore and the loader fetches
its sampled batches through it (half of them from the other rank, by MPI
one-sided reads), with neighbor lists; and the model step with one thread per
rank.

Run on a quiet machine:  python benchmarks/data_loading.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CUTOFF = 5.0


def datasets(cache: Path):
    from pygfm.data.demo import DEMO_DATASETS, demo_dataset
    return {name: demo_dataset(name, cache) for name in DEMO_DATASETS}


def demo_model():
    from pygfm.nn import EnergyModel, PaiNN
    torch.manual_seed(0)
    return EnergyModel(PaiNN(n_features=128, n_interactions=3, cutoff=CUTOFF))


def rate(run, batches) -> tuple[float, int, int]:
    """Seconds, structures, atoms of run(batch) over every batch."""
    start = time.perf_counter()
    structures = atoms = 0
    for item in batches:
        got = run(item)
        structures += got[0]
        atoms += got[1]
    return time.perf_counter() - start, structures, atoms


def loader_pass(loader, limit):
    start = time.perf_counter()
    structures = atoms = 0
    for k, batch in enumerate(loader):
        if k >= limit:
            break
        structures += batch.num_structures
        atoms += batch.num_atoms
    return time.perf_counter() - start, structures, atoms


def model_pass(batches, threads):
    torch.set_num_threads(threads)
    model = demo_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        out = model(batch, forces=True)
        loss = ((out["energy"] - batch.energy) ** 2).mean() + \
            ((out["forces"] - batch.forces) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return batch.num_structures, batch.num_atoms

    step(batches[0])  # warm-up (allocations, first-call costs)
    return rate(step, batches)


def read_pass(paths):
    from pygfm.data import open_dataset
    start = time.perf_counter()
    structures = atoms = 0
    for path in paths:
        dataset = open_dataset(path)
        for lo in range(0, len(dataset), 4096):
            block = dataset.read_block(lo, lo + 4096)
            structures += len(block)
            atoms += block.num_atoms
    return time.perf_counter() - start, structures, atoms


def one_rank(args, collection):
    from pygfm.data import open_dataset
    from pygfm.data.loader import BatchLoader

    on_disk = dict(collection)
    in_memory = {name: open_dataset(d.path).load() for name, d in collection.items()}
    common = dict(atom_budget=args.atom_budget, alpha=0.5, seed=0, prefetch=0)
    loaders = {
        "disk": BatchLoader(on_disk, **common),
        "memory": BatchLoader(in_memory, **common),
        "+neighbors": BatchLoader(in_memory, cutoff=CUTOFF, **common),
    }
    limit = args.batches
    model_batches = [b for _, b in zip(range(limit), BatchLoader(in_memory, cutoff=CUTOFF,
                                                                  **common))]
    rows = {name: [] for name in ["read", *loaders, "model"]}
    paths = [d.path for d in collection.values()]
    for repeat in range(args.repeats):
        rows["read"].append(read_pass(paths))
        for name, loader in loaders.items():
            loader.set_epoch(repeat)
            rows[name].append(loader_pass(loader, limit))
        rows["model"].append(model_pass(model_batches, args.threads))
    return {name: _median(values) for name, values in rows.items()}


def _median(values):
    seconds = statistics.median(v[0] for v in values)
    return {"seconds": seconds, "structures": values[0][1], "atoms": values[0][2],
            "structures_per_s": values[0][1] / seconds, "atoms_per_s": values[0][2] / seconds}


def two_ranks_worker(args):
    """Run under mpiexec -n 2: store + loader per rank, then the model step."""
    from mpi4py import MPI

    from pygfm.data import open_dataset
    from pygfm.data.loader import BatchLoader
    from pygfm.data.store import DistributedStore

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(1)
    stores = {}
    for path in args.paths:
        stores[open_dataset(path).name] = DistributedStore.from_dataset(open_dataset(path), comm)
    loader = BatchLoader(stores, atom_budget=args.atom_budget, alpha=0.5, seed=0, prefetch=0,
                         cutoff=CUTOFF, rank=rank, world_size=size, comm=comm)
    results = []
    for repeat in range(args.repeats):
        loader.set_epoch(repeat)
        comm.Barrier()
        results.append(loader_pass(loader, args.batches))
    load = _median(results)
    batches = [b for _, b in zip(range(args.batches), loader)]
    comm.Barrier()
    model = _median([model_pass(batches, 1) for _ in range(args.repeats)])
    gathered = comm.gather({"load": load, "model": model})
    for store in stores.values():
        store.close()
    if rank == 0:
        print("RESULT " + json.dumps(gathered))


def two_ranks(args, collection):
    mpiexec = Path(sys.executable).with_name("mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed"
    if not mpiexec.exists() and not shutil.which("mpiexec"):
        return None, "no mpiexec"
    command = [str(mpiexec if mpiexec.exists() else shutil.which("mpiexec")), "-n", "2",
               sys.executable, __file__, "--worker", "--batches", str(args.batches),
               "--repeats", str(args.repeats), "--atom-budget", str(args.atom_budget),
               "--paths", *[str(d.path) for d in collection.values()]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), None
    return None, f"mpiexec failed ({done.returncode}): {done.stderr[-2000:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (few batches)")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--atom-budget", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-mpi", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batches, args.repeats = 3, 1
    if args.worker:
        two_ranks_worker(args)
        return

    cache = Path(tempfile.gettempdir()) / "pygfm-bench-data"
    collection = datasets(cache)
    total = sum(len(d) for d in collection.values())
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads, torch {torch.__version__}; demo collection: {total} "
          f"structures in {len(collection)} datasets; atom budget {args.atom_budget}, "
          f"{args.batches} batches per pass, median of {args.repeats}")
    single = one_rank(args, collection)
    model_rate = single["model"]["structures_per_s"]
    print("\n| stage (1 rank) | structures/s | atoms/s | x model rate |")
    print("|---|---:|---:|---:|")
    for name, row in single.items():
        print(f"| {name} | {row['structures_per_s']:,.0f} | {row['atoms_per_s']:,.0f} | "
              f"{row['structures_per_s'] / model_rate:.1f} |")
    ratio = single["+neighbors"]["structures_per_s"] / model_rate
    print(f"\npipeline (memory + neighbors) / model: {ratio:.1f}x (goal >= 5x)")
    if args.no_mpi:
        return
    ranks, why = two_ranks(args, collection)
    if ranks is None:
        print(f"\ntwo ranks: not run ({why})")
        return
    print("\n| rank (2 ranks, 1 thread each) | loader structures/s | model structures/s | "
          "x model rate |")
    print("|---|---:|---:|---:|")
    for rank, row in enumerate(ranks):
        load, model = row["load"]["structures_per_s"], row["model"]["structures_per_s"]
        print(f"| {rank} | {load:,.0f} | {model:,.0f} | {load / model:.1f} |")


if __name__ == "__main__":
    main()

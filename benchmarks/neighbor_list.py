"""Neighbor lists: pygfm against vesin, matscipy and ASE on the same structures.

Question: how fast is ``pygfm.ops.neighbor_list`` (full list, i/j/S, sorted)
against the peers a user would otherwise call, for one large periodic crystal
and for batches of small structures?

Cases (cutoff 5 Å):
* fcc Cu, a = 3.6 Å, rattled 0.05 Å, periodic: 1k, 10k, 100k atoms;
* 4,096 molecules of 2..30 atoms (random, 1.1 Å mean spacing), no cell;
* random structures of 2..500 atoms in a 10 Å cube, no cell (the SC26
  screening generator), 64 of them.

vesin is timed with 1 thread and with all threads and its best is the peer;
vesin and matscipy are called once per structure for batches (they take one
structure at a time), pygfm once for the whole batch. All codes return the
full list (both i-j and j-i). Codes alternate within each repetition; the
table shows medians and the ratio of vesin's best to pygfm (>1: pygfm faster).
Peak memory is the growth of the process's peak RSS during pygfm's calls.

Run on a quiet machine:  python benchmarks/neighbor_list.py [--quick]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import numpy as np
import torch

import pygfm

try:
    import vesin
except ImportError:  # pragma: no cover - the table says so
    vesin = None
try:
    from matscipy.neighbours import neighbour_list as matscipy_nl
except ImportError:  # pragma: no cover
    matscipy_nl = None
try:
    import ase
    from ase.neighborlist import neighbor_list as ase_nl
except ImportError:  # pragma: no cover
    ase = None

CUTOFF = 5.0


def fcc_copper(atoms_wanted: int, seed: int = 0):
    repeats = max(1, round((atoms_wanted / 4) ** (1 / 3)))
    a = 3.6
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.stack(np.meshgrid(*[np.arange(repeats)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = ((grid[:, None, :] + base[None]) * a).reshape(-1, 3)
    positions += np.random.default_rng(seed).normal(0, 0.05, positions.shape)
    cell = np.eye(3) * a * repeats
    return [(positions, cell, True)]


def molecules(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(2, 31))
        out.append((rng.normal(0, 1.1 * n ** (1 / 3), (n, 3)), np.zeros((3, 3)), False))
    return out


def random_boxes(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(0, 10, (int(rng.integers(2, 501)), 3)), np.zeros((3, 3)), False)
            for _ in range(count)]


def as_batch(structures):
    positions = torch.tensor(np.concatenate([p for p, _, _ in structures]))
    counts = [len(p) for p, _, _ in structures]
    ptr = torch.tensor([0] + np.cumsum(counts).tolist())
    periodic = any(pbc for _, _, pbc in structures)
    cell = torch.tensor(np.stack([c for _, c, _ in structures])) if periodic else None
    pbc = torch.tensor([[pbc] * 3 for _, _, pbc in structures])
    return positions, cell, pbc, ptr


def run_pygfm(batch):
    positions, cell, pbc, ptr = batch
    return int(pygfm.ops.neighbor_list(positions, CUTOFF, cell=cell, pbc=pbc,
                                       ptr=ptr).edge_index.shape[1])


def run_vesin(structures, threads):
    total = 0
    calculator = vesin.NeighborList(cutoff=CUTOFF, full_list=True, n_threads=threads)
    for positions, cell, pbc in structures:
        i, j, S = calculator.compute(positions, cell, pbc, quantities="ijS")
        total += len(i)
    return total


def run_matscipy(structures):
    total = 0
    for positions, cell, pbc in structures:
        box = cell if pbc else np.eye(3) * (np.ptp(positions, axis=0).max() + 2 * CUTOFF)
        i, j, S = matscipy_nl("ijS", positions=positions, cutoff=CUTOFF, cell=box,
                              pbc=[pbc] * 3)
        total += len(i)
    return total


def run_ase(structures):
    total = 0
    for positions, cell, pbc in structures:
        atoms = ase.Atoms(positions=positions, cell=cell, pbc=pbc)
        total += len(ase_nl("i", atoms, CUTOFF))
    return total


def measure(structures, repeats, with_ase):
    batch = as_batch(structures)
    codes = {"pygfm": lambda: run_pygfm(batch)}
    if vesin is not None:
        codes["vesin 1 thread"] = lambda: run_vesin(structures, 1)
        codes["vesin all threads"] = lambda: run_vesin(structures, 0)
    if matscipy_nl is not None:
        codes["matscipy"] = lambda: run_matscipy(structures)
    if ase is not None and with_ase:
        codes["ase"] = lambda: run_ase(structures)
    counts = {name: fn() for name, fn in codes.items()}  # warm-up, and same answer
    if len(set(counts.values())) != 1:
        raise SystemExit(f"codes disagree on the number of pairs: {counts}")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    samples = {name: [] for name in codes}
    for repeat in range(repeats):
        for name, fn in codes.items():
            if name == "ase" and repeat > 0:
                continue  # one run is enough to place it, and it is slow
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    return {k: statistics.median(v) for k, v in samples.items()}, counts["pygfm"], peak_growth


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases only (smoke test)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    cases = [("fcc Cu 1k", fcc_copper(1_000), True), ("fcc Cu 10k", fcc_copper(10_000), True)]
    if not args.quick:
        cases += [
            ("fcc Cu 100k", fcc_copper(100_000), False),
            ("4096 molecules 2-30", molecules(4096), True),
            ("64 random 2-500 in 10 Å", random_boxes(64), True),
        ]
    print(f"# neighbor list benchmark  pygfm {pygfm.__version__}  torch {torch.__version__}  "
          f"vesin {getattr(vesin, '__version__', 'missing')}")
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} threads, "
          f"{platform.platform()}; cutoff {CUTOFF} Å, full lists with i, j, S")
    print("# medians in ms; ratio = best vesin / pygfm (>1: pygfm faster); "
          "peak = RSS growth during the runs")
    header = (f"{'case':>24} {'atoms':>7} {'pairs':>9} {'pygfm':>8} {'vesin 1t':>9} "
              f"{'vesin all':>9} {'matscipy':>9} {'ase':>9} {'ratio':>6} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for name, structures, with_ase in cases:
        medians, pairs, peak = measure(structures, args.repeats, with_ase)
        atoms = sum(len(p) for p, _, _ in structures)
        best_vesin = min(medians.get("vesin 1 thread", float("nan")),
                         medians.get("vesin all threads", float("nan")))

        def cell(key):
            return f"{medians[key] * 1e3:9.2f}" if key in medians else f"{'-':>9}"

        print(f"{name:>24} {atoms:>7} {pairs:>9} {medians['pygfm'] * 1e3:8.2f} "
              f"{cell('vesin 1 thread')} {cell('vesin all threads')} {cell('matscipy')} "
              f"{cell('ase')} {best_vesin / medians['pygfm']:6.2f} {peak / 1024:8.1f}",
              flush=True)


if __name__ == "__main__":
    main()

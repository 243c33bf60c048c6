"""PaiNN: pygfm's fused model against schnetpack on the same inputs and weights.

Question: how much faster, and how much leaner, is pygfm's PaiNN (fused
message / update ops) than schnetpack's, for energy + forces inference and for
one training step on energies and forces?

Model (schnetpack's usual settings): F = 128, 3 interactions, 20 Gaussians,
cosine cutoff 5 Å, Atomwise head. The schnetpack model is built first and
converted with ``pygfm.interop.schnetpack.convert``, so both compute the same
function (the script checks energies and forces agree).

Inputs:
* molecules: the 64 largest molecules of ase.collections.g2, rattled 0.02 Å (no cell);
* bulk: 8 periodic fcc cells of Cu (a = 3.61 Å) and Al (4.05 Å), 64-96 atoms, rattled.

Both codes get the same precomputed neighbor list (pygfm's; it equals ASE's), so
the model is what is timed. Tasks: inference = energy + forces; training step =
energy + forces (graph kept), MSE loss on both, backward, Adam step. Codes
alternate within each repetition; the table shows medians and ratios
(>1: pygfm faster). pygfm offers an opt-in CPU allocator that reuses large
blocks (``pygfm.settings``, ``cpu_allocator``); it would speed up any torch code,
schnetpack included, so each code is timed with it off (as shipped, the
"speed-up" column) and on ("+A" columns); "same alloc" is the worse of the two
same-allocator ratios. Peak memory is the
growth of resident memory during the task in a fresh process per code (sampled
every 0.5 ms). GFLOP/s counts the model's forward FLOPs analytically, x3 for
inference and x9 for a training step.

Run on a quiet machine:  python benchmarks/painn.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import typing

import numpy as np
import torch

import pygfm
from pygfm.data import AtomicBatch
from pygfm.interop.schnetpack import convert

# schnetpack 2.1.1 imports a name torch 2.13 removed; see tests/interop/.
import torch.utils.data.dataloader as _dataloader  # noqa: E402

if not hasattr(_dataloader, "T_co"):
    _dataloader.T_co = typing.TypeVar("T_co", covariant=True)
try:
    import schnetpack as spk
    import schnetpack.properties as props
except ImportError:  # pragma: no cover - the script says so
    spk = None

CUTOFF = 5.0
F_FEATURES = 128
PEAK_GFLOPS = 170.0  # FP32 FMA peak of this project's 2-core AVX2 VM (issue #4)


def molecules(count: int, seed: int = 0):
    from ase.collections import g2

    rng = np.random.default_rng(seed)
    out = []
    # the largest ones (ties by name): closest to the ~720 atoms / 7.5k pairs of issue #4
    for name in sorted(g2.names, key=lambda name: (-len(g2[name]), name))[:count]:
        atoms = g2[name]
        atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
        out.append(atoms)
    return out


def bulk(count: int, seed: int = 0):
    from ase.build import bulk as ase_bulk

    repeats = [(2, 2, 4), (2, 3, 3), (2, 2, 5), (2, 3, 4)]
    out = []
    for index in range(count):
        element, a = ("Cu", 3.61) if index % 2 == 0 else ("Al", 4.05)
        atoms = ase_bulk(element, "fcc", a=a, cubic=True).repeat(repeats[index % len(repeats)])
        atoms.rattle(0.05, seed=seed + index)
        out.append(atoms)
    return out


def schnetpack_model(n_features: int, seed: int = 0):
    torch.manual_seed(seed)
    representation = spk.representation.PaiNN(
        n_atom_basis=n_features, n_interactions=3,
        radial_basis=spk.nn.GaussianRBF(20, CUTOFF), cutoff_fn=spk.nn.CosineCutoff(CUTOFF))
    return spk.model.NeuralNetworkPotential(
        representation=representation, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=n_features, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")])


def prepare(structures):
    batch = AtomicBatch.from_atoms(structures, dtype=torch.float32)
    pairs = pygfm.ops.neighbor_list(batch.positions, CUTOFF, batch.cell, batch.pbc, batch.ptr)
    structure = batch.structure_index()
    offsets = torch.einsum("ek,ekc->ec", pairs.shifts.float(),
                           batch.cell[structure[pairs.edge_index[0]]])
    spk_inputs = {
        props.Z: batch.numbers, props.R: batch.positions, props.cell: batch.cell,
        props.pbc: batch.pbc, props.idx_i: pairs.edge_index[0], props.idx_j: pairs.edge_index[1],
        props.offsets: offsets, props.idx_m: structure,
        props.n_atoms: batch.ptr[1:] - batch.ptr[:-1]}
    return batch, pairs, spk_inputs


def forward_flops(n_atoms: int, n_edges: int, F: int = F_FEATURES, n_rbf: int = 20,
                  layers: int = 3) -> float:
    filters = 2 * n_rbf * 3 * F * layers * n_edges
    message = 16 * F * layers * n_edges
    per_atom_layer = 2 * (F * F + F * 3 * F) + 2 * 3 * F * 2 * F + 2 * (2 * F * F + F * 3 * F)
    head = 2 * (F * F // 2 + F // 2)
    return filters + message + n_atoms * (layers * per_atom_layer + head)


class Task:
    """One (code, workload) pair: call() runs inference or a training step."""

    def __init__(self, code: str, mode: str, model, batch, pairs, spk_inputs):
        self.code, self.mode = code, mode
        self.model, self.batch, self.pairs, self.spk_inputs = model, batch, pairs, spk_inputs
        self.energy_target = torch.zeros(batch.num_structures)
        self.force_target = torch.zeros(batch.num_atoms, 3)
        if mode == "train":
            model.train()
            self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
        else:
            model.eval()

    def outputs(self):
        if self.code == "pygfm":
            out = self.model(self.batch, forces=True, neighbors=self.pairs)
            return out["energy"], out["forces"]
        inputs = dict(self.spk_inputs)
        inputs[props.R] = inputs[props.R].clone()
        out = self.model(inputs)
        return out["energy"], out["forces"]

    def __call__(self):
        energy, forces = self.outputs()
        if self.mode == "train":
            loss = ((energy - self.energy_target) ** 2).mean() + \
                ((forces - self.force_target) ** 2).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return energy, forces


def build(code: str, mode: str, workload: str, quick: bool):
    structures = (molecules(8 if quick else 64) if workload == "molecules"
                  else bulk(2 if quick else 8))
    batch, pairs, spk_inputs = prepare(structures)
    reference = schnetpack_model(32 if quick else F_FEATURES)
    model = reference if code == "schnetpack" else convert(reference)
    return Task(code, mode, model, batch, pairs, spk_inputs)


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_growth(task, calls: int) -> int:
    """Largest resident-memory growth over `calls` calls, sampled every 0.5 ms."""
    base = resident_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(calls):
        task()
    done.set()
    sampler.join()
    return max(peak[0], resident_bytes()) - base


def memory_worker(args) -> None:
    torch.set_num_threads(args.threads)
    task = build(args.code, args.mode, args.workload, args.quick)
    print(json.dumps({"peak": peak_growth(task, 2)}))


def measure_memory(code, mode, workload, args) -> float:
    command = [sys.executable, __file__, "--memory-worker", code, mode, workload,
               "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    # each code as it is used: both with torch's allocator (pygfm's is opt-in)
    env = dict(os.environ, PYGFM_CPU_ALLOCATOR="0")
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak"] / 2**20


def check_agreement(tasks) -> float:
    energy_a, forces_a = tasks["pygfm"].outputs()
    energy_b, forces_b = tasks["schnetpack"].outputs()
    scale = forces_b.abs().max().item()
    return max((energy_a - energy_b).abs().max().item() / energy_b.abs().max().item(),
               (forces_a - forces_b).abs().max().item() / scale)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and inputs (smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-worker", nargs=3, metavar=("CODE", "MODE", "WORKLOAD"))
    args = parser.parse_args()
    if spk is None:
        sys.exit("benchmarks/painn.py needs schnetpack (pip install --no-deps -r "
                 "requirements-schnetpack.txt)")
    if args.memory_worker:
        args.code, args.mode, args.workload = args.memory_worker
        memory_worker(args)
        return
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads, torch {torch.__version__}, pygfm {pygfm.__version__}, "
          f"schnetpack {spk.__version__}, FP32, F={32 if args.quick else F_FEATURES}")
    print("# spk, pygfm: as shipped (torch's CPU allocator); spk+A, pygfm+A: with pygfm's "
          "opt-in block-cache allocator (pygfm.settings cpu_allocator)")
    header = (f"{'workload':10} {'task':6} {'atoms':>5} {'pairs':>6} {'spk ms':>7} "
              f"{'spk+A ms':>8} {'pygfm ms':>8} {'pygfm+A':>8} {'speed-up':>8} "
              f"{'same alloc':>10} {'spk MiB':>8} {'pygfm MiB':>9} {'mem':>5} "
              f"{'GFLOP/s':>7} {'%peak':>5} {'rel diff':>8}")
    print(header)
    # (task, allocator on) per column, timed in turn within each repetition
    columns = {"spk": ("schnetpack", False), "spk+A": ("schnetpack", True),
               "pygfm": ("pygfm", False), "pygfm+A": ("pygfm", True)}
    for workload in ("molecules", "bulk"):
        for mode in ("infer", "train"):
            tasks = {code: build(code, mode, workload, args.quick)
                     for code in ("schnetpack", "pygfm")}
            difference = check_agreement(tasks)
            times = {column: [] for column in columns}
            for code, on in columns.values():  # warm-up
                pygfm.set_cpu_allocator(on)
                tasks[code]()
            for _ in range(repeats):
                for column, (code, on) in columns.items():
                    pygfm.set_cpu_allocator(on)
                    start = time.perf_counter()
                    tasks[code]()
                    times[column].append(time.perf_counter() - start)
            pygfm.set_cpu_allocator(False)
            ms = {column: statistics.median(values) * 1e3 for column, values in times.items()}
            memory = {code: measure_memory(code, mode, workload, args) for code in tasks}
            batch, pairs = tasks["pygfm"].batch, tasks["pygfm"].pairs
            F = 32 if args.quick else F_FEATURES
            flops = forward_flops(batch.num_atoms, pairs.edge_index.shape[1], F) * \
                (3 if mode == "infer" else 9)
            gflops = flops / (ms["pygfm"] * 1e-3) / 1e9
            same = min(ms["spk+A"] / ms["pygfm+A"], ms["spk"] / ms["pygfm"])
            print(f"{workload:10} {mode:6} {batch.num_atoms:5d} {pairs.edge_index.shape[1]:6d} "
                  f"{ms['spk']:7.1f} {ms['spk+A']:8.1f} {ms['pygfm']:8.1f} {ms['pygfm+A']:8.1f} "
                  f"{ms['spk'] / ms['pygfm']:7.2f}x {same:9.2f}x "
                  f"{memory['schnetpack']:8.1f} {memory['pygfm']:9.1f} "
                  f"{memory['pygfm'] / max(memory['schnetpack'], 1e-9):5.2f} "
                  f"{gflops:7.1f} {100 * gflops / PEAK_GFLOPS:4.0f}% {difference:8.1e}",
                  flush=True)


if __name__ == "__main__":
    main()

"""``pygfm-demo``: a short tour of the compiled ops on this machine.

Builds a batch of random molecules, evaluates a toy pair-potential energy with
``pygfm.ops`` (scatter over edges, CSR sums over structures), trains it for a
few steps on forces (which needs the double backward of every op), checks
the result against the plain-PyTorch reference, and times the reduction
against torch's ``index_add_``. Then it opens the shipped demo collection (datasets labelled by EMT, GFN2-xTB
and DFT; converted to pygfm datasets in a cache on first use), prints what it
holds, and draws mixed batches from it the way training will. It runs in
seconds (plus about a minute for the first conversion).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import pygfm
from pygfm.ops import reference

from ._errors import entry_point


def random_batch(num_structures: int, generator: torch.Generator):
    """Atoms of `num_structures` random clusters (2..30 atoms, 1.2 Å apart on average)."""
    counts = torch.randint(2, 31, (num_structures,), generator=generator)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    positions = torch.cat(
        [torch.randn(int(n), 3, generator=generator, dtype=torch.float64) * 0.6 * float(n) ** (1 / 3)
         for n in counts]
    )
    # all pairs within each structure, receiver-sorted
    receivers, senders = [], []
    for start, stop in zip(ptr[:-1].tolist(), ptr[1:].tolist()):
        atoms = torch.arange(start, stop)
        grid_i, grid_j = torch.meshgrid(atoms, atoms, indexing="ij")
        keep = grid_i != grid_j
        receivers.append(grid_i[keep])
        senders.append(grid_j[keep])
    return positions, ptr, torch.cat(receivers), torch.cat(senders)


def energy(params, positions, ptr, receiver, sender, ops):
    """Morse-like pair energy per atom, summed per structure: [B] (eV, toy units)."""
    depth, width, r0 = params
    vectors = positions[sender] - positions[receiver]
    distance = vectors.norm(dim=1, keepdim=True)
    pair = depth * (1 - torch.exp(-width * (distance - r0))) ** 2 - depth
    atomic = ops.scatter_sum(0.5 * pair, receiver, positions.shape[0])
    return ops.segment_sum(atomic, ptr)[:, 0]


@entry_point("pygfm-demo")
def main(argv, context) -> int:
    parser = argparse.ArgumentParser(prog="pygfm-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batches", type=int, default=20,
                        help="batches drawn from the demo collection")
    parser.add_argument("--no-data", action="store_true", help="skip the demo collection")
    args = parser.parse_args(argv)

    info = pygfm.build_info()
    print(f"pygfm {info['version']} built against torch {info['torch_version']}, "
          f"backends {', '.join(info['backends'])}; running on torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")

    generator = torch.Generator().manual_seed(7)
    positions, ptr, receiver, sender = random_batch(args.structures, generator)
    print(f"batch: {args.structures} structures, {positions.shape[0]} atoms, "
          f"{receiver.numel()} directed pairs")

    # 1. energies and forces agree with the reference definition
    truth = torch.tensor([0.3, 1.7, 1.1], dtype=torch.float64)
    pos = positions.clone().requires_grad_(True)
    e_pygfm = energy(truth, pos, ptr, receiver, sender, pygfm.ops)
    (f_pygfm,) = torch.autograd.grad(-e_pygfm.sum(), pos)
    e_ref = energy(truth, pos, ptr, receiver, sender, reference)
    (f_ref,) = torch.autograd.grad(-e_ref.sum(), pos)
    print(f"energy  max |pygfm - reference| = {(e_pygfm - e_ref).abs().max():.2e} eV")
    print(f"forces  max |pygfm - reference| = {(f_pygfm - f_ref).abs().max():.2e} eV/Å")

    # 2. fit the potential's parameters to forces: a loss on gradients (double backward)
    target = f_ref.detach()
    params = torch.tensor([0.5, 1.2, 1.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([params], lr=0.05)
    for step in range(args.steps + 1):
        pos = positions.clone().requires_grad_(True)
        e = energy(params, pos, ptr, receiver, sender, pygfm.ops)
        (forces,) = torch.autograd.grad(-e.sum(), pos, create_graph=True)
        loss = (forces - target).pow(2).mean()
        if step % 10 == 0:
            print(f"force training step {step:3d}  loss {loss.item():.3e}  "
                  f"params {[round(v, 3) for v in params.tolist()]}")
        if step < args.steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    # 3. speed of the CSR sum against index_add_ on a message-passing shape
    rows, features = 400_000, 128
    src = torch.randn(rows, features)
    lengths = torch.full((rows // 20,), 20)
    edge_ptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    segment = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    timings = {"pygfm.segment_sum": [], "torch index_add_": []}
    for _ in range(5):
        start = time.perf_counter()
        torch.ops.pygfm.segment_sum(src, edge_ptr)
        timings["pygfm.segment_sum"].append(time.perf_counter() - start)
        start = time.perf_counter()
        src.new_zeros(lengths.numel(), features).index_add_(0, segment, src)
        timings["torch index_add_"].append(time.perf_counter() - start)
    print(f"sum of {rows} x {features} float32 rows into {lengths.numel()} segments:")
    for name, values in timings.items():
        print(f"  {name:18s} {statistics.median(values) * 1e3:8.2f} ms (median of 5)")

    if not args.no_data:
        demo_collection(args.batches)
    print("demo finished")
    return 0


def demo_collection(batches: int) -> None:
    """4. the shipped multi-fidelity demo data, sampled and batched as in training."""
    from pygfm.data.demo import demo_collection as collection
    from pygfm.data.loader import BatchLoader

    datasets = collection(progress=True)
    print("demo collection (pygfm.data.demo):")
    print(f"  {'dataset':16s} {'fidelity':34s} {'structures':>10s} {'atoms':>7s}  labels")
    for name, dataset in datasets.items():
        print(f"  {name:16s} {dataset.fidelity['text'][:34]:34s} {len(dataset):10d} "
              f"{int(dataset.num_atoms.sum()):7d}  {', '.join(dataset.labels)}")
    loader = BatchLoader({name: d.load() for name, d in datasets.items()}, atom_budget=1024,
                         alpha=0.5, cutoff=5.0, seed=0, prefetch=0)
    mix = loader.sampler.probabilities
    print("  sampling with alpha = 0.5: "
          + ", ".join(f"{name} {p:.2f}" for name, p in zip(loader.names, mix)))
    start = time.perf_counter()
    structures = atoms = pairs = 0
    for index, batch in zip(range(batches), loader):
        structures += batch.num_structures
        atoms += batch.num_atoms
        pairs += batch.neighbors.edge_index.shape[1]
        if index == 0:
            counts = torch.bincount(batch.dataset, minlength=len(loader.names)).tolist()
            print(f"  first batch: {batch.num_structures} structures, {batch.num_atoms} atoms, "
                  f"per dataset {counts}")
    seconds = time.perf_counter() - start
    print(f"  {batches} batches with neighbor lists (5 Å): {structures / seconds:,.0f} "
          f"structures/s, {atoms / seconds:,.0f} atoms/s, {pairs / max(batches, 1):,.0f} pairs "
          "per batch")


if __name__ == "__main__":
    sys.exit(main())

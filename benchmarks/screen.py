"""Screening throughput: SC26-style random structures through a 16-head model.

Question (issue #7): how many structures per second does pygfm screen, with
energies of all 16 heads, with and without forces, in FP64 / FP32 / BF16, and
how does that compare with the same model on plain-PyTorch ops (pygfm's
reference path: what the model costs without pygfm's kernels)?

Structures: HydraGNN's SC26 generator (``random:``): 2..500 atoms (uniform),
atomic numbers uniform in 1..94, positions uniform in a 10 Å cube, not periodic;
cutoff 5 Å, at most 20 neighbors per atom (nearest kept). Model: PaiNN F = 128,
3 interactions, 20 Gaussians, 16 heads (random weights; the speed does not
depend on training). Forces are those of the mean over the heads (one backward
pass), as ``pygfm-screen --forces`` computes them.

"model" rows time the model alone on prebuilt batches (neighbor lists
included in the batches); codes and precisions alternate within each
repetition, medians shown. The "end to end" rows run ``pygfm-screen``'s
driver on a fresh input (generation, neighbor lists, model, result files) and
report its own wall-clock throughput; on a GPU twice, with the neighbor lists
built on the host (in the producer thread) and on the device (beside the model).

Run on a quiet machine:  python benchmarks/screen.py [--device cuda] [--structures 64]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import pygfm
import pygfm.ops.painn as painn_ops
import pygfm.ops.segment as segment_ops
from pygfm.models import MultiHeadModel, save_checkpoint
from pygfm.nn import PaiNN
from pygfm.screen.driver import ScreenSettings, _batches, screen
from pygfm.screen.inputs import RandomInput

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


@contextlib.contextmanager
def reference_ops():
    saved = painn_ops._has_kernel, segment_ops._has_kernel
    painn_ops._has_kernel = segment_ops._has_kernel = lambda device: False
    try:
        yield
    finally:
        painn_ops._has_kernel, segment_ops._has_kernel = saved


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def producer(repeats: int) -> None:
    """What the driver's CPU side costs per SC26 chunk: can it feed a GPU model
    running at thousands of structures/s?"""
    from pygfm.screen.driver import _hill_formulas

    source = RandomInput("random:1000000,seed=5", 4096)
    parts = {"generate": [], "neighbor lists (host, <= 20 nearest)": [], "formulas": []}
    for k in range(repeats):
        start = time.perf_counter()
        structures = source.chunk(k)
        parts["generate"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in _batches(structures, 32768, torch.float32, 5.0, 20):
            pass
        parts["neighbor lists (host, <= 20 nearest)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        _hill_formulas(structures.numbers, structures.counts)
        parts["formulas"].append(time.perf_counter() - start)
    print(f"# screening producer  pygfm {pygfm.__version__}  torch {torch.__version__}  "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# one chunk of 4,096 SC26 structures, medians of {repeats}")
    print(f"{'part':>38} {'ms/chunk':>9} {'structures/s':>13}")
    for name, times in parts.items():
        t = statistics.median(times)
        print(f"{name:>38} {1e3 * t:9.1f} {4096 / t:13.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--structures", type=int, default=64)
    parser.add_argument("--batch-atoms", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--producer-only", action="store_true",
                        help="only time the CPU side of the driver (generation, host "
                        "neighbor lists, formulas) on one 4,096-structure chunk")
    parser.add_argument("--end-to-end", type=int, default=None,
                        help="structures for the driver runs (default 4x --structures; "
                        "16,384 on a GPU)")
    args = parser.parse_args()
    if args.producer_only:
        producer(args.repeats)
        return
    device = torch.device(args.device)
    torch.manual_seed(0)
    names = [f"head{k:02d}" for k in range(args.heads)]
    model = MultiHeadModel(PaiNN(n_features=args.features, n_interactions=3, n_rbf=20), names)
    source = RandomInput(f"random:{args.structures},seed=7", args.structures)
    structures = source.chunk(0)
    atoms = int(structures.counts.sum())
    inputs = {}
    for label, dtype in DTYPES.items():
        geometry = torch.float64 if dtype == torch.float64 else torch.float32
        inputs[label] = [b.to(device) for b, _ in _batches(structures, args.batch_atoms,
                                                            geometry, 5.0, 20)]
    models = {}
    for label, dtype in DTYPES.items():
        models[label] = copy.deepcopy(model).to(device=device, dtype=dtype).eval()

    def run(label, forces, reference):
        m = models[label]
        context = reference_ops() if reference else contextlib.nullcontext()
        with context, torch.inference_mode(not forces):
            for batch in inputs[label]:
                w = torch.full((batch.num_structures, len(names)), 1.0 / len(names),
                               dtype=torch.float64, device=device)
                m(batch, "all", forces=forces, force_weights=w if forces else None)

    cases = [(label, forces, ref) for forces in (False, True) for label in DTYPES
             for ref in (False, True) if not (ref and label == "bf16")]
    for case in cases:  # warm-up
        run(*case)
    times = {case: [] for case in cases}
    for _ in range(args.repeats):
        for case in cases:
            sync(device)
            start = time.perf_counter()
            run(*case)
            sync(device)
            times[case].append(time.perf_counter() - start)

    # end to end: the driver on a fresh input (fp32, energy, then energy + forces),
    # neighbor lists in the producer on the CPU (host) and, on a GPU, beside the model
    count = args.end_to_end or (16384 if device.type == "cuda" else 4 * args.structures)
    placements = ("host", "device") if device.type == "cuda" else ("host",)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(model.float(), Path(tmp) / "model.pt")
        driver = {}

        def drive(forces, where, n, name):
            settings = ScreenSettings(model=str(checkpoint), input=f"random:{n},seed=11",
                                      output=str(Path(tmp) / f"{name}.npz"), forces=forces,
                                      precision="fp32", batch_atoms=args.batch_atoms,
                                      chunk=max(min(4096, n // 4), 1), device=str(device),
                                      neighbors=where, progress=False)
            return screen(settings)

        drive(True, placements[-1], min(count, 256), "warm-up")
        for forces in (False, True):
            for where in placements:
                driver[(forces, where)] = drive(forces, where, count, f"out{forces}{where}")

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# screening benchmark  pygfm {pygfm.__version__}  torch {torch.__version__}")
    print(f"# device: {device} ({machine}); PaiNN F={args.features}, 3 layers, "
          f"{args.heads} heads; {args.structures} SC26 structures, {atoms} atoms, "
          f"{sum(len(v) for v in inputs.values()) // 3} batches of <= {args.batch_atoms} atoms")
    print(f"{'what':>22} {'precision':>9} {'pygfm s/s':>10} {'atoms/s':>11} "
          f"{'torch ops s/s':>14} {'speed-up':>8}")
    for forces in (False, True):
        what = "model, energy+forces" if forces else "model, energy"
        for label in DTYPES:
            t = statistics.median(times[(label, forces, False)])
            line = f"{what:>22} {label:>9} {args.structures / t:10.0f} {atoms / t:11.0f}"
            if (label, forces, True) in times:
                r = statistics.median(times[(label, forces, True)])
                line += f" {args.structures / r:14.0f} {r / t:8.2f}"
            print(line)
    for (forces, where), summary in driver.items():
        what = "end to end, " + ("E+F" if forces else "E")
        print(f"{what:>22} {'fp32':>9} {summary['structures_per_s']:10.0f} "
              f"{summary['atoms_per_s']:11.0f}   ({count} structures: generation, neighbor "
              f"lists on the {where}, model, files)")


if __name__ == "__main__":
    main()

"""Precision: speed and error of a multi-head PaiNN model in FP64, FP32 and BF16.

Question (issue #6, as the HydraGNN paper quantifies it): what does each
precision cost or gain in speed, and how far are its energies and forces from
FP64 with the same weights?

Model: a trained checkpoint (``--model runs/demo/best.pt``) or, without one, a
freshly initialized demo-size model (F = 64, 3 interactions, 3 heads). Inputs:
batches of the demo datasets' structures (each through its own head), about
``--batch-atoms`` atoms each. For each precision the same weights are cast
(BF16: features and weights in BF16, geometry and accumulation in FP32) and
timed for inference (energy + forces) and for one training step (energy +
forces loss, backward, AdamW step); precisions alternate within a repetition
and the table shows medians. Errors are against the FP64 model on the same
structures: energy MAE per atom and force MAE, plus (for a trained model) the
error against the reference labels.

Run on a quiet machine:  python benchmarks/precision.py [--model CKPT] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

import pygfm
from pygfm.data import BatchLoader
from pygfm.data.demo import demo_dataset
from pygfm.models import MultiHeadModel
from pygfm.nn import PaiNN

NAMES = ("metals-emt", "molecules-xtb", "molecules-dft")
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


def batches(names, atoms: int, count: int, cutoff: float, device):
    sets = {name: demo_dataset(name) for name in names}
    loader = BatchLoader(sets, atom_budget=atoms, cutoff=cutoff, shuffle=True, seed=1,
                         dtype=torch.float64, prefetch=0)
    out = []
    for batch in loader:
        out.append(batch.to(device))
        if len(out) == count:
            break
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a pygfm checkpoint (default: a fresh demo model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-atoms", type=int, default=512)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.model:
        model = pygfm.load(args.model)
        names = [n for n in NAMES if n in model.head_names]
    else:
        model = MultiHeadModel(PaiNN(n_features=64, n_interactions=3, n_rbf=16), list(NAMES))
        names = list(NAMES)
        for name in names:  # per-element references: energies at baseline level
            model.set_normalization(name, demo_dataset(name).statistics or {})
    model = model.to(device=device, dtype=torch.float64)
    heads = [model.head_index(n) for n in names]
    data = batches(names, args.batch_atoms, args.batches, model.cutoff, device)
    atoms = sum(b.num_atoms for b in data)
    structures = sum(b.num_structures for b in data)

    models, inputs = {}, {}
    for label, dtype in DTYPES.items():
        models[label] = copy.deepcopy(model).to(dtype)
        geometry = torch.float64 if dtype == torch.float64 else torch.float32
        inputs[label] = [b.to(dtype=geometry) for b in data]

    def infer(label):
        m = models[label].eval()
        return [m(b, dataset_heads=heads, forces=True) for b in inputs[label]]

    def train_step(label):
        m = models[label].train()
        optimizer = optimizers[label]
        for b in inputs[label]:
            out = m(b, dataset_heads=heads, forces=True)
            loss = ((out["energy"] - b.energy.to(out["energy"].dtype)) ** 2).mean() + \
                ((out["forces"] - b.forces.to(out["forces"].dtype)) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    # errors first (before any training step changes the weights)
    reference = infer("fp64")
    errors = {}
    for label in DTYPES:
        outs = infer(label)
        e_err = f_err = e_lab = f_lab = 0.0
        for b, out, ref in zip(inputs[label], outs, reference):
            out = {k: v.detach() for k, v in out.items()}
            ref = {k: v.detach() for k, v in ref.items()}
            n = (b.ptr[1:] - b.ptr[:-1]).double()
            e_err += float(((out["energy"].double() - ref["energy"].double()).abs() / n).sum())
            f_err += float((out["forces"].double() - ref["forces"].double()).abs().sum())
            e_lab += float(((out["energy"].double() - b.energy.double()).abs() / n).sum())
            f_lab += float((out["forces"].double() - b.forces.double()).abs().sum())
        errors[label] = (e_err / structures, f_err / (3 * atoms), e_lab / structures,
                         f_lab / (3 * atoms))

    # the training step changes weights: each precision gets its own optimizer
    optimizers = {label: torch.optim.AdamW(models[label].parameters(), lr=1e-9)
                  for label in DTYPES}
    times = {(label, task): [] for label in DTYPES for task in ("infer", "train")}
    for fn, task in ((infer, "infer"), (train_step, "train")):
        for label in DTYPES:
            fn(label)  # warm-up
        for _ in range(args.repeats):
            for label in DTYPES:
                sync(device)
                start = time.perf_counter()
                fn(label)
                sync(device)
                times[(label, task)].append(time.perf_counter() - start)

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# precision benchmark  pygfm {pygfm.__version__}  torch {torch.__version__}")
    print(f"# device: {device} ({machine}); model: {args.model or 'fresh demo-size model'}")
    print(f"# {args.batches} batches, {structures} structures, {atoms} atoms from {', '.join(names)}")
    print("# speed: structures/s (median of repeats); errors vs FP64 with the same weights")
    print(f"{'precision':>9} {'infer s/s':>10} {'x fp64':>7} {'train s/s':>10} {'x fp64':>7} "
          f"{'|dE| meV/atom':>14} {'|dF| meV/Å':>11} {'E MAE vs labels':>16} {'F MAE vs labels':>16}")
    base = {task: statistics.median(times[("fp64", task)]) for task in ("infer", "train")}
    for label in DTYPES:
        infer_t = statistics.median(times[(label, "infer")])
        train_t = statistics.median(times[(label, "train")])
        e, f, el, fl = errors[label]
        print(f"{label:>9} {structures / infer_t:10.0f} {base['infer'] / infer_t:7.2f} "
              f"{structures / train_t:10.0f} {base['train'] / train_t:7.2f} "
              f"{1000 * e:14.4f} {1000 * f:11.4f} {1000 * el:16.1f} {1000 * fl:16.1f}")


if __name__ == "__main__":
    main()

"""GPU: pygfm's CUDA kernels against plain PyTorch (and vesin) on the same GPU.

Questions (issues #3 and #4, run when a GPU is lent):
* neighbor lists: how long does ``pygfm.ops.neighbor_list`` take for one
  periodic fcc Cu crystal of 1k..500k atoms, and for a batch of 512 periodic
  128-atom cells? Peers: vesin's torch API on the same GPU when it runs there,
  a brute-force all-pairs search in plain PyTorch (small cases), and NVIDIA's
  published Warp cell-list figures on an H100 (0.30 ms fixed cost, 0.46 ms for
  512 x 128 atoms), quoted, not measured.
* PaiNN (F = 128, 3 interactions, 20 Gaussians, cutoff 5 Å): atoms/s of the
  fused kernels against the same model on pygfm's plain-PyTorch reference ops
  (``pygfm.ops.reference``: the path a CPU-only build would take on a GPU, and
  what a straightforward PyTorch PaiNN does), same weights, same neighbor
  list, for energy + forces inference and for a training step (MSE on energy
  and forces, backward, Adam), in FP32 and FP64; BF16 for pygfm alone, with
  its error against FP64.
  Workloads: "bulk" = 32 periodic fcc Cu/Al cells of 256 atoms (8,192 atoms);
  "sc26" = 64 random structures of 2..500 atoms in a 10 Å cube, at most 20
  neighbors each (the SC26 screening generator).

Every timing synchronizes the device, warms up first, and takes the median of
``--repeats`` runs; pygfm and the peer alternate. Results are printed as
tables and written as JSON (``--json``).

Run:  python benchmarks/gpu.py [--quick] [--repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import pygfm
import pygfm.ops.painn as painn_ops
import pygfm.ops.segment as segment_ops
from pygfm.data import AtomicBatch

CUTOFF = 5.0
DEVICE = torch.device("cuda")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternate(fns: dict, repeats: int, warmup: int = 3) -> dict:
    """Median seconds per function, the functions taking turns."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# ------------------------------------------------------------------ structures
def fcc_copper(atoms_wanted: int, seed: int = 0):
    repeats = max(1, round((atoms_wanted / 4) ** (1 / 3)))
    a = 3.6
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.stack(np.meshgrid(*[np.arange(repeats)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = ((grid[:, None, :] + base[None]) * a).reshape(-1, 3)
    positions += np.random.default_rng(seed).normal(0, 0.05, positions.shape)
    return positions, np.eye(3) * a * repeats


def cell_batch(count: int, seed: int = 0):
    """`count` periodic fcc Cu cells of 128 atoms (4 x 4 x 2 cubic cells), rattled."""
    rng = np.random.default_rng(seed)
    a = 3.6
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(2), indexing="ij"),
                    -1).reshape(-1, 3)
    one = ((grid[:, None, :] + base[None]) * a).reshape(-1, 3)
    positions = np.concatenate([one + rng.normal(0, 0.1, one.shape) for _ in range(count)])
    cell = np.tile(np.diag([4 * a, 4 * a, 2 * a])[None], (count, 1, 1))
    ptr = np.arange(count + 1) * len(one)
    return positions, cell, ptr


def sc26_structures(count: int, seed: int = 0):
    import ase

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(2, 501))
        out.append(ase.Atoms(numbers=rng.integers(1, 95, n), positions=rng.uniform(0, 10, (n, 3))))
    return out


def bulk_structures(count: int, seed: int = 0):
    from ase.build import bulk

    out = []
    for index in range(count):
        element, a = ("Cu", 3.61) if index % 2 == 0 else ("Al", 4.05)
        atoms = bulk(element, "fcc", a=a, cubic=True).repeat((4, 4, 4))
        atoms.rattle(0.05, seed=seed + index)
        out.append(atoms)
    return out


# ------------------------------------------------------------------ neighbor lists
def brute_force_pairs(positions: torch.Tensor, cell: torch.Tensor) -> int:
    """Plain-PyTorch all-pairs search over the 27 images (cell >= 2 cutoffs)."""
    shifts = torch.stack(torch.meshgrid(*[torch.arange(-1, 2, device=positions.device)] * 3,
                                        indexing="ij"), -1).reshape(-1, 3).to(positions.dtype)
    count = 0
    for shift in shifts @ cell:
        d = torch.cdist(positions, positions + shift)
        count += int((d < CUTOFF).sum())
    return count - positions.shape[0]  # self pairs at shift 0


def vesin_gpu():
    try:
        from vesin.torch import NeighborList
    except ImportError:
        try:
            from vesin_torch import NeighborList
        except ImportError:
            return None
    return NeighborList(cutoff=CUTOFF, full_list=True)


def bench_neighbors(args, results):
    print("\n== neighbor lists (fcc Cu, periodic, cutoff 5 Å; positions float64 on the GPU)")
    sizes = [1000, 10_000] if args.quick else [1000, 10_000, 100_000, 500_000]
    calculator = vesin_gpu()
    rows = []
    for wanted in sizes:
        positions_np, cell_np = fcc_copper(wanted)
        positions = torch.tensor(positions_np, device=DEVICE)
        cell = torch.tensor(cell_np, device=DEVICE)
        pbc = torch.ones(3, dtype=torch.bool, device=DEVICE)
        n = positions.shape[0]
        ours = pygfm.ops.neighbor_list(positions, CUTOFF, cell, pbc)
        pairs = ours.edge_index.shape[1]
        cpu = pygfm.ops.neighbor_list(positions.cpu(), CUTOFF, cell.cpu(), pbc.cpu())
        same = bool(torch.equal(cpu.edge_index, ours.edge_index.cpu())
                    and torch.equal(cpu.shifts, ours.shifts.cpu()))
        fns = {"pygfm": lambda: pygfm.ops.neighbor_list(positions, CUTOFF, cell, pbc)}
        vesin_pairs = None
        if calculator is not None:
            try:
                i, j, S = calculator.compute(points=positions, box=cell, periodic=True,
                                             quantities="ijS")
                vesin_pairs = int(i.shape[0])
                fns["vesin"] = lambda: calculator.compute(points=positions, box=cell,
                                                          periodic=True, quantities="ijS")
            except Exception as error:  # noqa: BLE001 - report and go on
                print(f"   vesin on the GPU failed: {type(error).__name__}: {error}")
                calculator = None
        if n <= 10_000:
            brute = brute_force_pairs(positions, cell)
            if brute != pairs:
                print(f"   MISMATCH: brute force {brute} pairs, pygfm {pairs}")
            fns["torch brute force"] = lambda: brute_force_pairs(positions, cell)
        times = alternate(fns, args.repeats)
        row = dict(case=f"{n} atoms", atoms=n, pairs=pairs, gpu_equals_cpu=same,
                   vesin_pairs=vesin_pairs,
                   **{f"{k}_ms": v * 1e3 for k, v in times.items()})
        rows.append(row)
        print(f"   {n:>7} atoms {pairs:>10} pairs  same as CPU: {same}  "
              + "  ".join(f"{k} {v * 1e3:8.3f} ms" for k, v in times.items()))

    count = 64 if args.quick else 512
    positions_np, cell_np, ptr_np = cell_batch(count)
    positions = torch.tensor(positions_np, device=DEVICE)
    cell = torch.tensor(cell_np, device=DEVICE)
    ptr = torch.tensor(ptr_np, device=DEVICE)
    pbc = torch.ones(count, 3, dtype=torch.bool, device=DEVICE)
    ours = pygfm.ops.neighbor_list(positions, CUTOFF, cell, pbc, ptr)
    cpu = pygfm.ops.neighbor_list(positions.cpu(), CUTOFF, cell.cpu(), pbc.cpu(), ptr.cpu())
    same = bool(torch.equal(cpu.edge_index, ours.edge_index.cpu()))
    fns = {"pygfm": lambda: pygfm.ops.neighbor_list(positions, CUTOFF, cell, pbc, ptr)}
    if calculator is not None:
        def vesin_loop():
            for b in range(count):
                calculator.compute(points=positions[ptr_np[b]:ptr_np[b + 1]], box=cell[b],
                                   periodic=True, quantities="ijS")
        fns["vesin loop"] = vesin_loop
    times = alternate(fns, max(3, args.repeats // 3))
    rows.append(dict(case=f"{count} x 128 atoms", atoms=int(ptr_np[-1]),
                     pairs=ours.edge_index.shape[1], gpu_equals_cpu=same,
                     **{f"{k}_ms": v * 1e3 for k, v in times.items()}))
    print(f"   {count} x 128 atoms {ours.edge_index.shape[1]:>10} pairs  same as CPU: {same}  "
          + "  ".join(f"{k} {v * 1e3:8.3f} ms" for k, v in times.items()))
    print("   (NVIDIA Warp cell list on an H100, published: 0.30 ms fixed, 0.46 ms for 512 x 128)")
    results["neighbor_list"] = rows


# ------------------------------------------------------------------ PaiNN
class use_reference_ops:
    """Route every pygfm op to its plain-PyTorch reference inside the block."""

    def __enter__(self):
        self.saved = painn_ops._has_kernel, segment_ops._has_kernel
        painn_ops._has_kernel = segment_ops._has_kernel = lambda device: device.type == "cpu"

    def __exit__(self, *exc):
        painn_ops._has_kernel, segment_ops._has_kernel = self.saved


def make_model(n_features: int, dtype, seed: int = 0):
    torch.manual_seed(seed)
    model = pygfm.nn.EnergyModel(pygfm.nn.PaiNN(n_features=n_features, n_interactions=3,
                                                cutoff=CUTOFF, n_rbf=20))
    return model.to(device=DEVICE, dtype=dtype)


def step_fn(model, batch, pairs, mode, optimizer, reference: bool):
    def run():
        if reference:
            with use_reference_ops():
                return inner()
        return inner()

    def inner():
        out = model(batch, forces=True, neighbors=pairs)
        if mode == "train":
            loss = (out["energy"] ** 2).mean() + (out["forces"] ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return out
    return run


def bench_painn(args, results):
    print("\n== PaiNN F=128, 3 layers: atoms/s, fused kernels vs plain-PyTorch ops, same GPU")
    workloads = {
        "bulk": (bulk_structures(4 if args.quick else 32), None),
        "sc26": (sc26_structures(8 if args.quick else 64), 20),
    }
    rows = []
    for name, (structures, max_neighbors) in workloads.items():
        reference_out = {}
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            batch = AtomicBatch.from_atoms(structures, dtype=torch.float64).to(DEVICE)
            pairs = pygfm.ops.neighbor_list(batch.positions, CUTOFF, batch.cell, batch.pbc,
                                            batch.ptr, max_neighbors=max_neighbors)
            geometry_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
            batch = batch.to(dtype=geometry_dtype)
            for mode in ("inference", "train"):
                model = make_model(128, dtype)
                model.train(mode == "train")
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-7) \
                    if mode == "train" else None
                fns = {"pygfm": step_fn(model, batch, pairs, mode, optimizer, False)}
                if dtype != torch.bfloat16:
                    twin = make_model(128, dtype)
                    twin.train(mode == "train")
                    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-7) \
                        if mode == "train" else None
                    fns["torch"] = step_fn(twin, batch, pairs, mode, twin_opt, True)
                try:
                    if mode == "inference":
                        out = fns["pygfm"]()
                        energy = out["energy"].double()
                        forces = out["forces"].double()
                        if dtype == torch.float64:
                            reference_out = dict(energy=energy, forces=forces)
                            ref = fns["torch"]()
                            agree = max(
                                ((ref["energy"] - energy).abs().max()
                                 / energy.abs().max()).item(),
                                ((ref["forces"] - forces).abs().max()
                                 / forces.abs().max()).item())
                            print(f"   {name}: fused vs reference ops (fp64) rel. diff {agree:.1e}")
                        counts = (batch.ptr[1:] - batch.ptr[:-1]).double()
                        error_e = ((energy - reference_out["energy"]).abs() / counts).mean().item()
                        error_f = (forces - reference_out["forces"]).abs().mean().item()
                    times = alternate(fns, args.repeats)
                except Exception as error:  # noqa: BLE001 - report, go on
                    traceback.print_exc()
                    print(f"   {name} {dtype} {mode}: FAILED {type(error).__name__}: {error}")
                    continue
                atoms = batch.num_atoms
                row = dict(workload=name, dtype=str(dtype).replace("torch.", ""), mode=mode,
                           atoms=atoms, edges=pairs.edge_index.shape[1],
                           **{f"{k}_ms": v * 1e3 for k, v in times.items()},
                           **{f"{k}_atoms_per_s": atoms / v for k, v in times.items()})
                if mode == "inference":
                    row.update(energy_mae_per_atom_vs_fp64=error_e, force_mae_vs_fp64=error_f)
                if "torch" in times:
                    row["speedup"] = times["torch"] / times["pygfm"]
                rows.append(row)
                print(f"   {name:5} {row['dtype']:8} {mode:9} {atoms:6} atoms "
                      f"{row['edges']:8} edges  pygfm {atoms / times['pygfm']:12,.0f} atoms/s"
                      + (f"  torch {atoms / times['torch']:12,.0f} atoms/s  "
                         f"x{row['speedup']:.2f}" if "torch" in times else "")
                      + (f"  |dE|/atom {error_e:.1e} |dF| {error_f:.1e}"
                         if mode == "inference" else ""))
                del model, fns, optimizer
                if DEVICE.type == "cuda":
                    torch.cuda.empty_cache()
    results["painn"] = rows


def profile_neighbors(args, results):
    """Where a neighbor-list call spends its time (torch.profiler, 5 calls)."""
    from torch.profiler import ProfilerActivity, profile

    cases = {}
    positions_np, cell_np = fcc_copper(1000)
    cases["1k atoms"] = (torch.tensor(positions_np, device=DEVICE),
                         torch.tensor(cell_np, device=DEVICE),
                         torch.ones(3, dtype=torch.bool, device=DEVICE), None)
    positions_np, cell_np = fcc_copper(100_000)
    cases["100k atoms"] = (torch.tensor(positions_np, device=DEVICE),
                           torch.tensor(cell_np, device=DEVICE),
                           torch.ones(3, dtype=torch.bool, device=DEVICE), None)
    positions_np, cell_np, ptr_np = cell_batch(512)
    cases["512 x 128"] = (torch.tensor(positions_np, device=DEVICE),
                          torch.tensor(cell_np, device=DEVICE),
                          torch.ones(512, 3, dtype=torch.bool, device=DEVICE),
                          torch.tensor(ptr_np, device=DEVICE))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda"
                                           else [])
    for name, (positions, cell, pbc, ptr) in cases.items():
        for _ in range(3):
            pygfm.ops.neighbor_list(positions, CUTOFF, cell, pbc, ptr)
        sync()
        with profile(activities=activities) as prof:
            for _ in range(5):
                pygfm.ops.neighbor_list(positions, CUTOFF, cell, pbc, ptr)
            sync()
        print(f"\n-- profile: neighbor_list {name}, 5 calls")
        sort = "cuda_time_total" if DEVICE.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=40))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12,
                                        max_name_column_width=40))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["neighbors", "painn", "profile"])
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run the script's logic on the CPU (to check it, not to time)")
    args = parser.parse_args()
    global DEVICE
    if args.cpu_dry_run:
        DEVICE = torch.device("cpu")
        results = dict(gpu="cpu dry run", build=pygfm.build_info())
        if args.only == "profile":
            profile_neighbors(args, results)
            return
        for fn in (bench_neighbors, bench_painn):
            fn(args, results)
        return
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA or ROCm GPU (torch.cuda.is_available() is False)")
    info = pygfm.build_info()
    if "cuda" not in info["backends"] and "hip" not in info["backends"]:
        sys.exit(f"pygfm was built without GPU kernels (backends {info['backends']}): "
                 "rebuild on a machine with nvcc/hipcc and a CUDA/ROCm torch")
    results = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                   host=platform.node(), build=info)
    print(f"{results['gpu']}, torch {torch.__version__}, pygfm backends {info['backends']}")
    torch.backends.cuda.matmul.allow_tf32 = False
    for section, fn in (("neighbors", bench_neighbors), ("painn", bench_painn),
                        ("profile", profile_neighbors)):
        if (args.only or "neighbors,painn") .find(section) < 0:
            continue
        try:
            fn(args, results)
        except Exception:  # noqa: BLE001 - one section failing keeps the others
            traceback.print_exc()
            results[section + "_error"] = traceback.format_exc()
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()

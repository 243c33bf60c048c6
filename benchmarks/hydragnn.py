"""The same HydraGNN PAINN model through HydraGNN's own code and through pygfm (issue #17).

Question: how much faster (and in how much memory) does pygfm run a HydraGNN-trained
PAINN model than HydraGNN itself, on the CPU, on SC26 random structures?

Setup: a model of SC26's size (hidden 128, 4 PAINN layers, 6 radial functions,
radius 5 Å, 16 branches, shared layers 2x50, heads 3x128, sum pooling, concat_node
charge/spin conditioning, float32) is built and saved by HydraGNN's own code
(``create_model_config``, ``save_model``), with the weights of
``tests/data/hydragnn/make_fixtures.py``; structures come from HydraGNN's own SC26
generator (``build_random_structure``: 14-20 atoms in a 5 Å box, Z 1..94).
``max_neighbours`` is 100, so that the cap does not bind and both codes hold every
pair within the radius (the energies are compared, same run).

Timed, per code, in its own process (alternated, medians of ``--repeats``):

* ``one branch``: energy and autograd forces of branch 0 for all structures;
* ``16 branches``: the energies of all branches and the forces of their blend with
  uniform weights: HydraGNN as its SC26 fused inference does it, one forward and
  backward per branch (``data.dataset_name := k``); pygfm one forward through every
  branch head and one backward of the blend.

HydraGNN's graphs are built before timing (its radius graph is not timed); pygfm's
time includes its own neighbor list. Peak RSS is ``ru_maxrss`` of each process.

HydraGNN runs in a throwaway environment (see tests/data/hydragnn/README.md):

    python benchmarks/hydragnn.py --hydragnn-python /tmp/hydra-venv/bin/python \\
        --hydragnn-src /tmp/hydragnn-src [--structures 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "hydragnn"
NAME = "sc26_bench"
BRANCHES = 16


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ HydraGNN side
def _hydragnn(work: Path, src: str):
    """The fixture maker's HydraGNN helpers (make_fixtures.py), writing into ``work``,
    with HydraGNN's source on the path and its one-rank process group."""
    sys.path.insert(0, str(FIXTURES))
    import make_fixtures as mf

    mf.HERE = str(work)
    mf._setup_path(src)
    mf._init_dist()
    return mf


def _graphs(mf, atoms_list):
    """HydraGNN's graphs (radius 5 Å, cap 100) with charge 0, spin 1."""
    import torch

    return [mf.atoms_to_data(f"s{k}", a, 5.0, 100, torch.float32, graph_attr=(0.0, 1.0))
            for k, a in enumerate(atoms_list)]


def hydragnn_make(work: Path, src: str, structures: int) -> None:
    mf = _hydragnn(work, src)
    import ase
    import ase.io
    import torch
    from inference_random_structures import build_random_structure

    torch.set_default_dtype(torch.float32)
    config = mf.make_config(hidden_dim=128, num_conv_layers=4, num_radial=6, radius=5.0,
                            max_neighbours=100, num_branches=BRANCHES, shared=(2, 50),
                            head=(3, [128, 128, 128]), conditioning="concat_node",
                            precision="fp32")
    rng = np.random.default_rng(26)
    atoms_list = []
    for _ in range(structures):
        d = build_random_structure(14, 20, 5.0, 94, rng)
        atoms_list.append(ase.Atoms(numbers=d.x[:, 0].numpy().astype(np.int64),
                                    positions=d.pos.numpy().astype(np.float64), pbc=False))
    datas = _graphs(mf, atoms_list)
    config = mf.complete_config(config, datas[0])
    model = mf.build_model(config, 2026)
    mf.save_logdir(model, config, NAME)
    ase.io.write(work / "structures.extxyz", atoms_list)


def hydragnn_time(work: Path, src: str, repeats: int) -> dict:
    mf = _hydragnn(work, src)
    import ase.io
    import torch
    from torch_geometric.data import Batch

    torch.set_default_dtype(torch.float32)
    loaded, _ = mf.load_logdir(NAME)
    loaded.eval()
    atoms_list = ase.io.read(work / "structures.extxyz", ":")
    datas = _graphs(mf, atoms_list)
    baseline = _rss_mb()

    def run(branches):
        energies, forces = [], 0
        for k in branches:
            batch = Batch.from_data_list([d.clone() for d in datas])
            batch.dataset_name = torch.full((batch.num_graphs, 1), k, dtype=torch.long)
            batch.pos.requires_grad_(True)
            e = loaded(batch)[0].squeeze(-1)
            f = -torch.autograd.grad(e.sum(), batch.pos)[0]
            energies.append(e.detach())
            forces = forces + f / len(branches)
        return torch.stack(energies, 1), forces

    out = {}
    for label, branches in (("one branch", [0]), ("16 branches", list(range(BRANCHES)))):
        run(branches)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            energy, _ = run(branches)
            times.append(time.perf_counter() - start)
        out[label] = {"seconds": statistics.median(times), "energy": energy.numpy().tolist()}
    out["peak_mb"], out["baseline_mb"] = _rss_mb(), baseline
    return out


# ------------------------------------------------------------------ pygfm side
def pygfm_time(work: Path, repeats: int) -> dict:
    import ase.io
    import torch

    from pygfm.data import AtomicBatch
    from pygfm.interop.hydragnn import load

    torch.set_num_threads(1)
    model = load(work / NAME)
    atoms_list = ase.io.read(work / "structures.extxyz", ":")
    batch = AtomicBatch.from_atoms(atoms_list, dtype=torch.float32)
    attr = torch.tensor([[0.0, 1.0]] * len(atoms_list))
    baseline = _rss_mb()
    uniform = torch.full((len(atoms_list), BRANCHES), 1.0 / BRANCHES, dtype=torch.float64)
    out = {}
    for label, call in (
            ("one branch", lambda: model(batch, "branch-0", graph_attr=attr)),
            ("16 branches", lambda: model(batch, "all", graph_attr=attr, force_weights=uniform))):
        call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = call()
            times.append(time.perf_counter() - start)
        energy = result["energy"].detach()
        out[label] = {"seconds": statistics.median(times),
                      "energy": (energy[:, None] if energy.dim() == 1 else energy).tolist()}
    out["peak_mb"], out["baseline_mb"] = _rss_mb(), baseline
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hydragnn-python", default="/tmp/hydra-venv/bin/python")
    parser.add_argument("--hydragnn-src", default="/tmp/hydragnn-src")
    parser.add_argument("--structures", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the codes")
    parser.add_argument("--worker", choices=("make", "hydragnn", "pygfm"))
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.worker:
        work = Path(args.work)
        if args.worker == "make":
            hydragnn_make(work, args.hydragnn_src, args.structures)
            return
        result = hydragnn_time(work, args.hydragnn_src, args.repeats) \
            if args.worker == "hydragnn" else pygfm_time(work, args.repeats)
        print("RESULT " + json.dumps(result))
        return

    import torch

    env = dict(os.environ, OMP_NUM_THREADS="1")
    work = Path(tempfile.mkdtemp(prefix="pygfm-bench-hydragnn-"))
    me = [str(Path(__file__).resolve()), "--work", str(work), "--hydragnn-src",
          args.hydragnn_src, "--repeats", str(args.repeats)]
    subprocess.run([args.hydragnn_python, *me, "--worker", "make", "--structures",
                    str(args.structures)], check=True, env=env, cwd=work)

    def worker(which):
        python = args.hydragnn_python if which == "hydragnn" else sys.executable
        done = subprocess.run([python, *me, "--worker", which], capture_output=True, text=True,
                              env=env, cwd=work)
        if done.returncode:
            raise SystemExit(f"{which} worker failed:\n{done.stderr[-3000:]}")
        return json.loads(next(line for line in done.stdout.splitlines()
                               if line.startswith("RESULT "))[7:])

    runs = {"hydragnn": [], "pygfm": []}
    for _ in range(args.rounds):
        for which in ("hydragnn", "pygfm"):
            runs[which].append(worker(which))
    from _machine import cpu_model  # benchmarks/_machine.py, beside this script

    print(f"machine: {platform.node()}, {cpu_model()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, ISA "
          f"{torch.backends.cpu.get_cpu_capability()}; 1 thread per process; "
          f"{args.structures} SC26 random structures; work dir {work}")
    print("| task | HydraGNN s | pygfm s | speed-up | max |dE| (eV) | max |dE| / max |E| |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label in ("one branch", "16 branches"):
        h = statistics.median(r[label]["seconds"] for r in runs["hydragnn"])
        p = statistics.median(r[label]["seconds"] for r in runs["pygfm"])
        eh = np.array(runs["hydragnn"][0][label]["energy"])
        de = float(np.abs(eh - np.array(runs["pygfm"][0][label]["energy"])).max())
        print(f"| {label} | {h:.3f} | {p:.3f} | {h / p:.1f}x | {de:.2e} | "
              f"{de / np.abs(eh).max():.1e} |")
    for which in ("hydragnn", "pygfm"):
        peak = max(r["peak_mb"] for r in runs[which])
        base = min(r["baseline_mb"] for r in runs[which])
        print(f"{which}: peak RSS {peak:.0f} MB (after loading model and inputs: {base:.0f} MB)")


if __name__ == "__main__":
    main()

"""pygfm-data convert at scale: peak memory and throughput per rank (issue #16).

Question: does ``pygfm-data convert`` stream (peak resident memory bounded whatever
the input's size) and share the work evenly between MPI ranks, for

* a generated HDF5 file of the ANI-1x release layout (formula groups, levels
  side by side, NaN where CCSD(T) was not computed) of about ``--hdf5-gb`` GB,
  one group of which holds ``--huge-group`` conformers (a group must be split
  between ranks, not land on one), converted at level ``wb97x_dz``;
* a generated folder of ASE-LMDB files (fairchem's ``*.aselmdb``) with
  ``--lmdb-rows`` rows in all, written by the reference writer (ase-db-backends,
  through ``ase.db.connect``), energy, forces and a stress on half of the rows
  (partial labels), charge and spin in the row's info on a third.

For ``-n 1`` and ``-n 2`` ranks (``mpiexec -n P``) it runs the command a user
runs (``pygfm-data convert ... --overwrite``, progress off) and prints per rank: the
structures it wrote, the wall time, structures/s and its peak RSS (ru_maxrss), next
to the resident memory of a process that has only imported pygfm and the reader
libraries, and the input's size. Times include the dataset statistics pass that
``convert`` runs at the end (as a user gets it).

The generated inputs are kept in ``$TMPDIR/pygfm-bench-convert`` (reused when the
spec matches; writing a million ASE-LMDB rows with the reference writer takes
about 8 minutes on 2 cores). Time only on a quiet machine.

    python benchmarks/convert_scale.py [--hdf5-gb 2] [--lmdb-rows 1000000]
                                       [--ranks 1 2] [--only hdf5|lmdb]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import cpu_model  # benchmarks/_machine.py, beside this script

WORK = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "pygfm-bench-convert"
BYTES_PER_ATOM = 12 * 3  # coordinates + wb97x_dz and wb97x_tz forces, float32 xyz




# ------------------------------------------------------------------ generation

def _sites(rng, n: int, spacing: float) -> np.ndarray:
    """n positions on a jittered cubic grid (a quarter of the spacing at most), so
    that no pair is closer than half the spacing: generated structures are valid
    (pygfm-data convert refuses overlapping atoms)."""
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    chosen = grid[rng.choice(len(grid), size=n, replace=False)]
    return (chosen + rng.uniform(-0.25, 0.25, size=(n, 3))) * spacing


def make_ani1x(path: Path, gigabytes: float, huge_group: int, seed: int = 0) -> dict:
    """An ani1x-release.h5 layout of about ``gigabytes`` GB: formula groups of
    C/H/N/O molecules with 6-30 atoms, written in slices (bounded memory)."""
    import h5py

    rng = np.random.default_rng(seed)
    target = gigabytes * 1e9
    written, conformers, groups = 0, 0, 0
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        while written < target:
            n = int(rng.integers(6, 31))
            numbers = np.sort(rng.choice([1, 6, 7, 8], size=n, p=[0.5, 0.3, 0.1, 0.1]))[::-1]
            count = huge_group if groups == 0 else int(rng.integers(200, 20000))
            name = f"G{groups:05d}_" + "".join(
                f"{s}{k}" for s, k in zip("HCNO", np.bincount(numbers, minlength=9)[[1, 6, 7, 8]]))
            g = f.create_group(name)
            g["atomic_numbers"] = numbers.astype(np.uint8)
            datasets = {
                "coordinates": g.create_dataset("coordinates", (count, n, 3), np.float32),
                "wb97x_dz.forces": g.create_dataset("wb97x_dz.forces", (count, n, 3), np.float32),
                "wb97x_tz.forces": g.create_dataset("wb97x_tz.forces", (count, n, 3), np.float32),
            }
            energies = {key: g.create_dataset(key, (count,), np.float64)
                        for key in ("wb97x_dz.energy", "wb97x_tz.energy", "ccsd(t)_cbs.energy")}
            base = _sites(rng, n, 1.2)  # valid molecules: no two atoms closer than ~0.9 Å
            for start in range(0, count, 50_000):
                stop = min(count, start + 50_000)
                m = stop - start
                datasets["coordinates"][start:stop] = (base + rng.normal(size=(m, n, 3)) * 0.05)
                for key in ("wb97x_dz.forces", "wb97x_tz.forces"):
                    datasets[key][start:stop] = rng.normal(size=(m, n, 3)) * 0.05
                e = -40.0 * n + rng.normal(size=m)
                dz = e.copy()
                dz[rng.random(m) < 0.01] = np.nan  # a missing value: skipped
                energies["wb97x_dz.energy"][start:stop] = dz
                energies["wb97x_tz.energy"][start:stop] = e + 0.01
                cc = e - 0.02
                cc[rng.random(m) < 0.9] = np.nan  # CCSD(T) on a tenth only
                energies["ccsd(t)_cbs.energy"][start:stop] = cc
            written += count * (n * BYTES_PER_ATOM + 24)
            conformers += count
            groups += 1
    os.replace(tmp, path)
    return {"groups": groups, "conformers": conformers}


def _lmdb_part(job) -> int:
    path, rows, seed = job
    import ase
    import ase.db
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    tmp = Path(str(path) + ".partial")
    if tmp.exists():
        tmp.unlink()
    with ase.db.connect(tmp, type="aselmdb") as db:
        for i in range(rows):
            n = int(rng.integers(2, 41))
            side = int(np.ceil(n ** (1 / 3)))
            length = 2.2 * side
            atoms = ase.Atoms(numbers=rng.integers(1, 84, n), positions=_sites(rng, n, 2.2),
                              cell=np.eye(3) * length + rng.normal(size=(3, 3)) * 0.1, pbc=True)
            results = {"energy": float(-4.0 * n + rng.normal()),
                       "forces": rng.normal(size=(n, 3)) * 0.1}
            if i % 2 == 0:
                results["stress"] = rng.normal(size=6) * 0.01
            atoms.calc = SinglePointCalculator(atoms, **results)
            if i % 3 == 0:
                atoms.info.update(charge=int(rng.integers(-1, 2)), spin=int(rng.integers(1, 3)))
            db.write(atoms, data={"source": "bench", "row": i})
    os.replace(tmp, path)
    lock = Path(str(tmp) + "-lock")  # the writer's lock file, ours to remove
    if lock.exists():
        lock.unlink()
    return rows


def make_aselmdb(folder: Path, rows: int, rows_per_file: int = 25_000) -> dict:
    """``rows`` rows in files of ``rows_per_file`` (fairchem ships directories of
    many files; ase-db-backends' writer also slows down with the rows of a file:
    it checks each new id against a Python list of all ids)."""
    from multiprocessing import Pool

    files = max(1, -(-rows // rows_per_file))

    folder.mkdir(parents=True, exist_ok=True)
    share = [rows // files + (k < rows % files) for k in range(files)]
    jobs = [(folder / f"data{k:04d}.aselmdb", share[k], 100 + k) for k in range(files)]
    with Pool(min(files, os.cpu_count() or 1)) as pool:
        total = sum(pool.map(_lmdb_part, jobs))
    return {"files": files, "rows": total}


def ensure(kind: str, args) -> tuple[Path, dict]:
    WORK.mkdir(parents=True, exist_ok=True)
    if kind == "hdf5":
        spec = {"kind": "ani1x", "gb": args.hdf5_gb, "huge_group": args.huge_group, "v": 2}
        path = WORK / "ani1x-release.h5"
    else:
        spec = {"kind": "aselmdb", "rows": args.lmdb_rows, "v": 2}
        path = WORK / "omat-like"
    spec_file = WORK / f"{kind}.spec.json"
    if path.exists() and spec_file.exists():
        stored = json.loads(spec_file.read_text())
        if stored.get("spec") == spec:
            return path, stored["made"]
    start = time.perf_counter()
    print(f"generating {path} ({spec}) ...", flush=True)
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    made = (make_ani1x(path, args.hdf5_gb, args.huge_group) if kind == "hdf5"
            else make_aselmdb(path, args.lmdb_rows))
    made["seconds"] = round(time.perf_counter() - start, 1)
    spec_file.write_text(json.dumps({"spec": spec, "made": made}))
    return path, made


def input_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------ one rank

def worker(argv) -> None:
    """Run ``pygfm-data convert argv`` in this process (one MPI rank) and print one
    JSON line: structures written by this rank, wall seconds, peak RSS."""
    import h5py  # noqa: F401 - imported before the baseline, as the reader will
    import lmdb  # noqa: F401

    import pygfm.data.formats as formats
    from pygfm.cli.data import main
    from pygfm.data.adios import MANIFEST
    from pygfm.distributed import mpi_comm, rank_and_size

    formats.formats()  # every reader module imported before the baseline
    comm = mpi_comm()
    rank, size = rank_and_size(comm)
    baseline = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if comm is not None:
        comm.Barrier()
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"rank {rank}: pygfm-data convert exited with {code}")
    out = Path(argv[argv.index("-o") + 1])
    manifest = json.loads((out / MANIFEST).read_text())
    total = int(manifest["num_samples"])
    # shards are named shard-r<rank>-<k>.bp
    mine = sum(int(s["num_samples"]) for s in manifest["shards"]
               if int(s["path"].split("-")[1][1:]) == rank)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps({
        "rank": rank, "size": size, "code": code, "seconds": seconds, "total": total,
        "mine": mine, "baseline_mb": baseline / 2**20, "peak_mb": peak_kb / 1024}), flush=True)


# ------------------------------------------------------------------ driver

def run(kind: str, path: Path, ranks: int) -> list[dict]:
    out = WORK / f"out-{kind}"
    if kind == "hdf5":
        convert = [str(path), "--format", "ani1x", "--level", "wb97x_dz", "--dataset", "ani1x",
                   "--fidelity", "ωB97x/6-31G(d) (Gaussian 09)"]
    else:
        convert = [str(path), "--format", "aselmdb", "--dataset", "omat-like",
                   "--fidelity", "PBE (VASP)"]
    argv = ["convert", *convert, "-o", str(out), "--overwrite", "--quiet"]
    command = [sys.executable, __file__, "--worker", *argv]
    if ranks > 1:
        # the mpich wheel puts mpiexec beside the interpreter
        mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                               f"{os.environ.get('PATH', '')}")
        if mpiexec is None:
            raise SystemExit("--ranks > 1 needs mpiexec (pip install mpich mpi4py)")
        command = [mpiexec, "-n", str(ranks), *command]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if out.exists():  # our own output of an earlier run
        shutil.rmtree(out)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode or "RESULT " not in done.stdout:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    rows = [json.loads(line[7:]) for line in done.stdout.splitlines()
            if line.startswith("RESULT ")]
    return sorted(rows, key=lambda row: row["rank"])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hdf5-gb", type=float, default=2.0)
    parser.add_argument("--huge-group", type=int, default=1_000_000)
    parser.add_argument("--lmdb-rows", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", choices=("hdf5", "lmdb"))
    args = parser.parse_args()

    import torch

    print(f"machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, ISA {torch.backends.cpu.get_cpu_capability()}")
    kinds = [args.only] if args.only else ["hdf5", "lmdb"]
    table = []
    for kind in kinds:
        path, made = ensure(kind, args)
        size = input_bytes(path)
        print(f"{kind}: {path} {size / 1e9:.2f} GB, {made}", flush=True)
        for ranks in args.ranks:
            for row in run(kind, path, ranks):
                table.append((kind, size, row))
    print()
    print("| input | size | ranks | rank | structures written (this rank) | wall s | "
          "structures/s (this rank) | RSS after imports MB | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, size, row in table:
        mine = row["mine"]
        print(f"| {'ANI-1x layout HDF5' if kind == 'hdf5' else 'ASE-LMDB folder'} "
              f"| {size / 1e9:.2f} GB | {row['size']} | {row['rank']} | {mine:,.0f} "
              f"({row['total']:,} in all) | {row['seconds']:.1f} | "
              f"{mine / row['seconds']:,.0f} | {row['baseline_mb']:.0f} | "
              f"{row['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()

"""``pygfm-data``: convert structures to pygfm datasets, inspect, split and verify them.

  pygfm-data convert INPUT... --dataset NAME --fidelity TEXT -o DIR
  pygfm-data info DIR [--json]
  pygfm-data split DIR -o OUTDIR [--fractions 0.8 0.1 0.1] [--seed 0]
  pygfm-data stats DIR          (recompute statistics.json)
  pygfm-data verify DIR         (checksums and arrays of every shard)

``convert`` reads anything ``ase.io.read`` understands (extxyz, ASE db, VASP
OUTCAR, ...) and ADIOS2 files in HydraGNN's layout. Under ``mpiexec -n P`` each
rank converts every P-th structure and writes its own shard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ._errors import entry_point


def _structures(inputs, args, rank: int, size: int):
    """This rank's share of the input structures as Samples, input order."""
    from pygfm.data import Sample, is_hydragnn_file, read_hydragnn
    from pygfm.data.ase_input import iread_structures

    position = 0
    for path in inputs:
        if is_hydragnn_file(path):
            splits = args.hydragnn_splits.split(",") if args.hydragnn_splits else None
            source = read_hydragnn(path, splits=splits)
        else:
            source = iread_structures(path, index=args.index, format=args.format)
        try:
            for number, atoms in enumerate(source):
                if position % size == rank:
                    yield Sample.from_ase(atoms, dataset=str(path), index=number,
                                          energy_key=args.energy_key,
                                          forces_key=args.forces_key,
                                          stress_key=args.stress_key)
                position += 1
        except (ValueError, KeyError, TypeError) as error:
            # str() of a KeyError is its message in quotes
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise ValueError(str(message)) from error
        except Exception as error:  # a reader's own error: say which file
            raise ValueError(f"{path}: cannot read structures ({type(error).__name__}: "
                             f"{error})") from error


def convert(args) -> int:
    from pygfm._files import check_not_an_input
    from pygfm.data import write_dataset
    from pygfm.distributed import mpi_comm, rank_and_size

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such input: {', '.join(map(str, missing))}")
    check_not_an_input(args.output, args.inputs, option="-o")
    comm = mpi_comm()
    rank, size = rank_and_size(comm)
    fidelity = json.loads(args.fidelity) if args.fidelity.lstrip().startswith("{") else args.fidelity
    dataset = write_dataset(
        args.output, _structures(args.inputs, args, rank, size), name=args.dataset,
        fidelity=fidelity, description=args.description, shard_size=args.shard_size,
        overwrite=args.overwrite, comm=comm, progress=not args.quiet,
        statistics=not args.no_statistics)
    if rank == 0:
        print(f"wrote {dataset.path}: {len(dataset)} structures, "
              f"{int(dataset.num_atoms.sum())} atoms, labels {', '.join(dataset.labels) or 'none'}")
    return 0


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def info(args) -> int:
    from pygfm.data import open_dataset

    dataset = open_dataset(args.dataset)
    m, stats = dataset.manifest, dataset.statistics
    counts = dataset.num_atoms
    if args.json:
        print(json.dumps({"manifest": m, "statistics": stats}, indent=1, ensure_ascii=False))
        return 0
    n = len(dataset)
    print(f"dataset      {dataset.name}  ({dataset.path})")
    print(f"fidelity     {dataset.fidelity['text']}")
    if dataset.description:
        print(f"description  {dataset.description}")
    print(f"structures   {n}   atoms {int(counts.sum())}   per structure "
          f"min {counts.min() if n else 0} / mean {counts.mean() if n else 0:.1f} / "
          f"max {counts.max() if n else 0}")
    print(f"elements     {' '.join(dataset.elements)}")
    coverage = ", ".join(f"{label} {m['label_counts'].get(label, 0)}"
                         f" ({100 * m['label_counts'].get(label, 0) / max(n, 1):.0f}%)"
                         for label in ("energy", "forces", "stress"))
    print(f"labels       {coverage}")
    print(f"shards       {len(m['shards'])}   on disk {_disk_bytes(dataset.path) / 1e6:.2f} MB   "
          f"format v{m['format_version']}, written {m.get('created', '?')} by {m.get('writer', '?')}")
    if stats:
        e = stats["energy_per_atom"]
        if e["mean"] is not None:
            print(f"energy/atom  mean {e['mean']:.4f} eV, std {e['std']:.4f} eV; after per-element "
                  f"references: RMS {stats['energy_scale']:.4f} eV/atom "
                  f"(fit rank {stats['reference_fit_rank']} of {stats['reference_fit_elements']})")
            refs = ", ".join(f"{k} {v:.3f}" for k, v in stats["reference_energies"].items())
            print(f"references   {refs} (eV)")
        if stats["force_rms"] is not None:
            print(f"forces       RMS {stats['force_rms']:.4f} eV/Å")
        if stats["stress_rms"] is not None:
            print(f"stress       RMS {stats['stress_rms']:.5f} eV/Å³")
    else:
        print("statistics   none saved (run `pygfm-data stats DIR`)")
    return 0


def _check_parts(parts, source: Path, overwrite: bool) -> None:
    """Every part may be written before any is: none is (or holds) the source, and
    each existing one is replaced only with --overwrite and only if a dataset."""
    from pygfm._files import check_not_an_input
    from pygfm.data.adios import check_replaceable

    for part in parts:
        check_not_an_input(part, [source], option="-o")
        if part.exists() or part.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{part} exists; pass --overwrite to replace it")
            check_replaceable(part)


def split(args) -> int:
    from pygfm.data import open_dataset, write_dataset

    fractions = np.asarray(args.fractions, dtype=float)
    names = args.names.split(",")
    if len(names) != len(fractions):
        raise ValueError(f"--names gives {len(names)} parts for {len(fractions)} fractions")
    if (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"--fractions must be non-negative and sum to 1, got {args.fractions}")
    dataset = open_dataset(args.dataset)
    n = len(dataset)
    order = np.random.default_rng(args.seed).permutation(n)
    bounds = np.concatenate(([0], np.round(np.cumsum(fractions) * n).astype(int)))
    bounds[-1] = n
    output = Path(args.output)
    _check_parts([output / name for name in names], dataset.path, args.overwrite)
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        part = np.sort(order[lo:hi])  # keep the source order inside each part
        write_dataset(output / name, iter(dataset[part]), name=dataset.name,
                      fidelity=dataset.fidelity,
                      description=f"{name} part ({hi - lo} of {n}, seed {args.seed}) of "
                                  f"{dataset.path}",
                      overwrite=args.overwrite, progress=not args.quiet, total=hi - lo)
        print(f"{output / name}: {hi - lo} structures")
    return 0


def stats(args) -> int:
    from pygfm.data import open_dataset
    from pygfm.data.adios import STATISTICS, write_json_atomic
    from pygfm.data.statistics import compute_statistics

    dataset = open_dataset(args.dataset)
    result = compute_statistics(dataset)
    write_json_atomic(dataset.path / STATISTICS, result)
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


def verify(args) -> int:
    from pygfm.data import open_dataset

    dataset = open_dataset(args.dataset, verify=True)
    print(f"{dataset.path}: OK ({len(dataset)} structures, {len(dataset.manifest['shards'])} "
          "shards, checksums and arrays checked)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pygfm-data", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("convert", help="structures -> a pygfm dataset")
    p.add_argument("inputs", nargs="+", type=Path, help="files ase.io.read understands, or "
                   "HydraGNN .bp files")
    p.add_argument("--dataset", required=True, help="dataset name (names the model head)")
    p.add_argument("--fidelity", required=True,
                   help='level of theory, e.g. "PBE/def2-SVP (pyscf 2.14)", or a JSON object '
                        'with code, code_version, method, basis')
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--description", default="")
    p.add_argument("--format", default=None, help="ase.io format, if not clear from the name")
    p.add_argument("--index", default=":", help="ase.io index, default all structures")
    p.add_argument("--energy-key", default=None, help="take energy from atoms.info[KEY]")
    p.add_argument("--forces-key", default=None, help="take forces from atoms.arrays[KEY]")
    p.add_argument("--stress-key", default=None, help="take stress from atoms.info[KEY]")
    p.add_argument("--hydragnn-splits", default=None,
                   help="for HydraGNN files: comma-separated splits (default all)")
    p.add_argument("--shard-size", type=int, default=50_000, help="structures per shard")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-statistics", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=convert)

    p = commands.add_parser("info", help="counts, elements, labels, energy statistics")
    p.add_argument("dataset", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=info)

    p = commands.add_parser("split", help="deterministic train/val/test datasets")
    p.add_argument("dataset", type=Path)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.8, 0.1, 0.1])
    p.add_argument("--names", default="train,val,test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=split)

    p = commands.add_parser("stats", help="recompute and save normalization statistics")
    p.add_argument("dataset", type=Path)
    p.set_defaults(run=stats)

    p = commands.add_parser("verify", help="check checksums and arrays of every shard")
    p.add_argument("dataset", type=Path)
    p.set_defaults(run=verify)
    return parser


# RuntimeError: write_dataset's "another rank failed" (a usage error on that rank)
@entry_point("pygfm-data", usage_errors=(RuntimeError,))
def main(argv, context) -> int:
    args = build_parser().parse_args(argv)
    context.prog = f"pygfm-data {args.command}"
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""``pygfm-data``: convert structures to pygfm datasets, inspect, split and verify them.

  pygfm-data convert INPUT... --dataset NAME --fidelity TEXT -o DIR
  pygfm-data info DIR [--json]
  pygfm-data split DIR -o OUTDIR [--fractions 0.8 0.1 0.1] [--seed 0]
  pygfm-data stats DIR          (recompute statistics.json)
  pygfm-data verify DIR         (checksums and arrays of every shard)

  pygfm-data formats            (the readers ``convert --format`` knows)
  pygfm-data inspect FILE [--json]  (groups, keys, units, levels of an input)

``convert`` reads the published formats of :mod:`pygfm.data.formats` (detected
from the content, or ``--format NAME``), ADIOS2 files in HydraGNN's layout, and
anything ``ase.io.read`` understands (extxyz, ASE db, VASP OUTCAR, ...). A file
with several levels of theory gives one dataset per ``--level`` (or every level
with ``--all-levels``): ``-o DIR`` then holds ``DIR/<dataset>-<level-slug>``. Under
``mpiexec -n P`` each rank converts every P-th structure and writes its own shard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ._errors import entry_point


def _file_fidelity(args, level):
    """The fidelity every input states for ``level`` (None: the format's default
    level), from :attr:`Format.fidelity`; None when an input does not say or the
    inputs disagree."""
    from pygfm.data.convert import resolve_format
    from pygfm.data.formats import Format

    found = []
    for path in map(Path, args.inputs):
        fmt = resolve_format(path, args.format)
        found.append(fmt.fidelity(path, level) if isinstance(fmt, Format) else None)
    if found and found[0] is not None and all(f == found[0] for f in found):
        return found[0]
    return None


def _fidelities(args, levels: list) -> dict:
    """--fidelity values by level ("" when no level): plain TEXT (or a JSON object)
    for one dataset, or LEVEL=TEXT per level. Where none is given, the level of
    theory the file states (ANI's level names, SPICE's method: Format.fidelity);
    else a level is described by its own name, and a file of one level without
    one is an error."""
    given = args.fidelity or []
    plain = [f for f in given if f.lstrip().startswith("{") or "=" not in f]
    per_level = dict(f.split("=", 1) for f in given if f not in plain)
    unknown = sorted(set(per_level) - set(levels))
    if unknown:
        raise ValueError(f"--fidelity: no level {', '.join(map(repr, unknown))} is converted; "
                         f"the levels are {', '.join(levels) or 'none (one level per file)'}")
    if len(plain) > 1:
        raise ValueError("--fidelity: give one TEXT, or LEVEL=TEXT once per level")

    def parse(text):
        return json.loads(text) if text.lstrip().startswith("{") else text

    if not levels:
        if plain:
            return {"": parse(plain[0])}
        stated = _file_fidelity(args, None)
        if stated is None:
            raise ValueError("--fidelity: the level of theory of the labels is required (the "
                             "input does not state it), e.g. "
                             '--fidelity "PBE/def2-SVP (pyscf 2.14)"')
        return {"": stated}
    out = {}
    for level in levels:
        if level in per_level:
            out[level] = parse(per_level[level])
        elif plain and len(levels) == 1:
            out[level] = parse(plain[0])
        elif plain:
            out[level] = f"{plain[0]}, level {level}"
        else:
            out[level] = _file_fidelity(args, level) or level
    return out


def _levels(args, fmt_name, inputs) -> list:
    """The levels to convert: --level values, or every level of the inputs with
    --all-levels (in the order the files list them), or [] for one per file."""
    from pygfm.data.convert import resolve_format
    from pygfm.data.formats import Format

    if args.all_levels and args.level:
        raise ValueError("--level and --all-levels exclude each other")
    if not args.all_levels:
        return list(dict.fromkeys(args.level or []))
    found = []
    for path in inputs:
        fmt = resolve_format(path, fmt_name)
        if isinstance(fmt, Format):
            found.extend(fmt.levels(path))
    if not found:
        raise ValueError(f"--all-levels: {', '.join(map(str, inputs))} hold a single level of "
                         "theory; leave --all-levels out")
    return list(dict.fromkeys(found))


def convert(args) -> int:
    from pygfm._files import check_not_an_input
    from pygfm.data import write_dataset
    from pygfm.data.convert import (Coverage, check_label_keys, level_slug, parse_where,
                                    read_inputs)
    from pygfm.data.formats import LabelKeys, ReadOptions, parse_units
    from pygfm.distributed import mpi_comm, rank_and_size

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such input: {', '.join(map(str, missing))}")
    check_not_an_input(args.output, args.inputs, option="-o")
    units = parse_units(args.units)
    where = parse_where(args.where)
    keys = LabelKeys(energy=args.energy_key, forces=args.forces_key, stress=args.stress_key)
    levels = _levels(args, args.format, args.inputs)
    fidelities = _fidelities(args, levels)
    comm = mpi_comm()
    rank, size = rank_and_size(comm)
    splits = args.hydragnn_splits.split(",") if args.hydragnn_splits else None
    # several levels: -o DIR holds one dataset per level, DIR/<dataset>-<level-slug>
    jobs = ([(None, args.output, args.dataset)] if not levels else
            [(levels[0], args.output, args.dataset)] if len(levels) == 1 else
            [(level, args.output / f"{args.dataset}-{level_slug(level)}",
              f"{args.dataset}-{level_slug(level)}") for level in levels])
    if len(jobs) > 1 and args.output.exists() and not args.output.is_dir():
        raise FileExistsError(f"{args.output} is a file; -o names a folder for one dataset "
                              "per level")
    for level, output, name in jobs:
        options = ReadOptions(keys=keys, units=units, level=level, dataset=name)
        coverage = Coverage(keys)
        samples = read_inputs(args.inputs, format_name=args.format, options=options, rank=rank,
                              size=size, index=args.index, hydragnn_splits=splits,
                              coverage=coverage)
        if where is not None:  # left-out positions are id gaps, as skipped conformers
            samples = ((position, sample) for position, sample in samples if where(sample))
        dataset = write_dataset(
            output, samples, name=name, fidelity=fidelities[level or ""],
            description=" ".join(filter(None, [args.description] + [
                f"[--where {condition}]" for condition in args.where or ()])),
            shard_size=args.shard_size,
            overwrite=args.overwrite, comm=comm, progress=not args.quiet,
            statistics=not args.no_statistics,
            validate=lambda manifest: check_label_keys(manifest, coverage, args.inputs),
            skip_overlapping=args.skip_overlapping)
        if rank == 0:
            counts = dataset.manifest["label_counts"]
            partial = ", ".join(f"{label} {counts[label]} of {len(dataset)}"
                                for label in dataset.labels if counts[label] < len(dataset))
            print(f"wrote {dataset.path}: {len(dataset)} structures, "
                  f"{int(dataset.num_atoms.sum())} atoms, labels "
                  f"{', '.join(dataset.labels) or 'none'}"
                  + (f" (partial: {partial})" if partial else ""))
            skipped = dataset.manifest.get("skipped")
            if skipped:
                print(f"skipped {skipped['count']} structures with overlapping atoms "
                      f"(listed in the manifest); the first: {skipped['first'][0]}")
    return 0


def formats_command(args) -> int:
    from pygfm.data.formats import formats

    rows = [(f.name, f.description, " ".join(f.suffixes) or "-", " ".join(f.needs) or "-")
            for f in sorted(formats().values(), key=lambda f: f.name)]
    rows.append(("hydragnn", "HydraGNN ADIOS2 files (auto-detected)", ".bp", "adios2"))
    rows.append(("ase", "the fallback: anything ase.io reads (extxyz, ASE db, OUTCAR, ...); "
                 "--format extxyz (or any ase.io format name) reads with ase.io", "*", "ase"))
    if args.json:
        print(json.dumps([dict(zip(("name", "description", "suffixes", "needs"), row))
                          for row in rows], indent=1, ensure_ascii=False))
        return 0
    widths = [max(len(row[k]) for row in rows + [("name", "", "suffixes", "needs")])
              for k in range(4)]
    header = ("name", "description", "suffixes", "needs")
    print(f"{header[0]:<{widths[0]}}  {header[2]:<{widths[2]}}  {header[3]:<{widths[3]}}  "
          f"{header[1]}")
    for name, description, suffixes, needs in rows:
        print(f"{name:<{widths[0]}}  {suffixes:<{widths[2]}}  {needs:<{widths[3]}}  "
              f"{description}")
    return 0


def _print_tree(value, indent: int = 0) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item and not _flat(item):
                print(f"{pad}{key}:")
                _print_tree(item, indent + 1)
            else:
                print(f"{pad}{key}: {_short(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item and not _flat(item):
                print(f"{pad}-")
                _print_tree(item, indent + 1)
            else:
                print(f"{pad}- {_short(item)}")
    else:
        print(f"{pad}{_short(value)}")


def _flat(item) -> bool:
    values = item.values() if isinstance(item, dict) else item
    return all(not isinstance(v, (dict, list)) for v in values) and len(str(item)) <= 100


def _short(item) -> str:
    if isinstance(item, dict):
        return ", ".join(f"{k}: {v}" for k, v in item.items()) or "{}"
    if isinstance(item, list):
        return ", ".join(map(str, item)) or "[]"
    return str(item)


def inspect(args) -> int:
    from pygfm.data.convert import inspect_file

    if not args.file.exists():
        raise FileNotFoundError(f"no such input: {args.file}")
    result = inspect_file(args.file, args.format)
    if args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    else:
        print(f"{args.file}")
        _print_tree(result, 1)
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
    known = m.get("property_counts") or {}  # absent in datasets written before charge/spin
    if any(known.values()):
        print("properties   " + ", ".join(f"{name} {known.get(name, 0)} "
                                          f"({100 * known.get(name, 0) / max(n, 1):.0f}%)"
                                          for name in ("charge", "spin")))
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
    p.add_argument("inputs", nargs="+", type=Path, help="files of a format `pygfm-data "
                   "formats` lists, HydraGNN .bp files, or files ase.io.read understands")
    p.add_argument("--dataset", required=True, help="dataset name (names the model head)")
    p.add_argument("--fidelity", action="append", default=None, metavar="TEXT|LEVEL=TEXT",
                   help='level of theory, e.g. "PBE/def2-SVP (pyscf 2.14)", or a JSON object '
                        'with code, code_version, method, basis; with --level/--all-levels '
                        'LEVEL=TEXT per level (default: what the file states, as ANI and '
                        'SPICE files do; else the level name; required for a file that '
                        'does not say)')
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--description", default="")
    p.add_argument("--format", default="auto", help="a format of `pygfm-data formats`, "
                   "'auto' (detect from the content; the default), 'ase', 'hydragnn', or an "
                   "ase.io format name (extxyz, vasp-out, ...)")
    p.add_argument("--index", default=":", help="ase.io index, default all structures")
    p.add_argument("--units", default=None, metavar="energy=U,length=U,...",
                   help="units of the file where it does not say (energy: eV, hartree, "
                        "kcal/mol, ...; length: Å, bohr; forces_length; stress: eV/Å^3, GPa, "
                        "kbar); converted to eV, Å, eV/Å, eV/Å³")
    p.add_argument("--energy-key", default=None, help="the energy's key: atoms.info[KEY] for "
                   "ase.io files, the dataset/key name for the other formats")
    p.add_argument("--forces-key", default=None, help="the forces' key (atoms.arrays[KEY], "
                   "e.g. force, dft_forces); a structure without it has no forces")
    p.add_argument("--stress-key", default=None, help="the stress's key (atoms.info[KEY]); a "
                   "virial key (virial, REF_virial) is converted to stress -V/volume")
    p.add_argument("--skip-overlapping", action="store_true",
                   help="leave out structures with two atoms closer than 0.01 Å (counted "
                        "and named in the manifest) instead of stopping at the first")
    p.add_argument("--where", action="append", default=None, metavar="COND",
                   help="keep only the structures for which COND holds (repeat: all must): "
                        "FIELD OP VALUE, FIELD charge, spin (multiplicity) or natoms, OP one "
                        "of = != < <= > >=, VALUE a number or none (unknown); e.g. "
                        "--where charge=0 (OMol25's neutral part), --where charge!=0")
    p.add_argument("--level", action="append", default=None, metavar="NAME",
                   help="level of theory to convert from a file holding several "
                        "(repeatable; several give one dataset each under -o)")
    p.add_argument("--all-levels", action="store_true",
                   help="one dataset per level of theory in the inputs, under -o")
    p.add_argument("--hydragnn-splits", default=None,
                   help="for HydraGNN files: comma-separated splits (default all)")
    p.add_argument("--shard-size", type=int, default=50_000, help="structures per shard")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-statistics", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=convert)

    p = commands.add_parser("formats", help="the input formats convert reads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=formats_command)

    p = commands.add_parser("inspect", help="what an input file holds (groups, keys, levels)")
    p.add_argument("file", type=Path)
    p.add_argument("--format", default="auto", help="as for convert")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=inspect)

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

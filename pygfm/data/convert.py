"""What ``pygfm-data convert`` reads: input files resolved to a format, streamed as
``(position, Sample)`` pairs for one MPI rank, with partial labels masked.

Three kinds of input, chosen per file:

* a format of the registry (:mod:`pygfm.data.formats`: HDF5 layouts, LMDBs, JSON, ...),
  named with ``--format NAME`` or recognised by its content;
* HydraGNN's ADIOS2 ``.bp`` files;
* anything ``ase.io`` reads (extxyz, ASE db, OUTCAR, ...), the fallback. Labels come
  from the calculator or under any key (``REF_energy``, ``dft_forces``, a
  ``virial`` converted to stress with ASE's sign); a structure lacking a label has it
  masked (None), and a key found in no structure at all is an error at the end
  (:func:`check_label_keys`), naming the keys that do exist.

Positions count every structure of every input in order (the k-th structure of the
second file is at ``count(first) + k``), so the round robin of
:func:`pygfm.data.write_dataset` (rank r writes positions r, r+P, ...) spans files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from .formats import Format, LabelKeys, ReadOptions, Units, detect, formats, get_format
from .sample import LABELS, Sample, stress_from_virial

__all__ = ["ASE", "HYDRAGNN", "Coverage", "check_label_keys", "inspect_file", "level_slug",
           "parse_where", "read_inputs", "resolve_format"]

ASE = "ase"            # pseudo-format: ase.io.read
HYDRAGNN = "hydragnn"  # pseudo-format: HydraGNN ADIOS2 files
_KEYS_SHOWN = 40       # keys listed in an error message


def level_slug(level: str) -> str:
    """A level of theory as a file/dataset name part: ``wB97x/6-31G(d)`` ->
    ``wb97x-6-31g-d``, ``ccsd(t)_cbs`` -> ``ccsd-t-cbs``."""
    slug = re.sub(r"[^a-z0-9.+]+", "-", level.lower()).strip("-.")
    if not slug:
        raise ValueError(f"level {level!r} gives no usable name")
    return slug


_WHERE_FIELDS = {"charge": lambda s: s.charge, "spin": lambda s: s.spin,
                 "natoms": lambda s: s.num_atoms}
_WHERE = re.compile(r"^\s*([a-z_]+)\s*(==|=|!=|<=|>=|<|>)\s*(\S+)\s*$")
_COMPARE = {"=": lambda a, b: a == b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b}


def parse_where(conditions) -> "Callable[[Sample], bool] | None":
    """``--where`` conditions (all must hold) -> a test of a Sample, or None for none.

    A condition is FIELD OP VALUE: FIELD one of charge, spin (the multiplicity 2S+1),
    natoms; OP one of = != < <= > >=; VALUE a number, or ``none`` (unknown: only
    with = and !=). A structure whose charge or spin is unknown satisfies no
    comparison with a number: ``charge=0`` and ``charge!=0`` both leave it out
    (``charge=none`` selects it). OMol25's neutral part: ``charge=0``; the rest:
    ``charge!=0``."""
    tests = []
    for text in conditions or ():
        match = _WHERE.match(text)
        if not match or match.group(1) not in _WHERE_FIELDS:
            raise ValueError(f"--where {text!r}: expected FIELD OP VALUE with FIELD one of "
                             f"{', '.join(_WHERE_FIELDS)} and OP one of = != < <= > >=, "
                             "e.g. --where charge=0")
        field, op, raw = match.groups()
        if raw.lower() == "none":
            if op not in ("=", "==", "!="):
                raise ValueError(f"--where {text!r}: 'none' (unknown) compares only with = or !=")
            value = None
        else:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"--where {text!r}: {raw!r} is not a number or 'none'") from None
        get, compare = _WHERE_FIELDS[field], _COMPARE[op]

        def test(sample, get=get, compare=compare, value=value, op=op):
            have = get(sample)
            if value is None:  # charge=none / charge!=none: is it unknown?
                return (have is None) != (op == "!=")
            if have is None:  # unknown satisfies no comparison with a number
                return False
            return compare(float(have), value)
        tests.append(test)
    if not tests:
        return None
    return lambda sample: all(test(sample) for test in tests)


def resolve_format(path: Path, name: str | None) -> Format | str:
    """The registry Format for ``path``, or :data:`HYDRAGNN` / :data:`ASE`.

    ``name``: None or ``auto`` (detect from the content, then HydraGNN, then
    ase.io), a registry name, ``ase``/``hydragnn``, or an ase.io format name
    (``extxyz``, ``vasp-out``, ...: read with ase.io in that format)."""
    from .hydragnn import is_hydragnn_file

    if name in (None, "auto"):
        found = detect(path)
        if found is not None:
            return found
        return HYDRAGNN if is_hydragnn_file(path) else ASE
    if name in (ASE, HYDRAGNN):
        return name
    if name in formats():
        return get_format(name)
    from ase.io.formats import ioformats
    if name in ioformats:
        return ASE
    raise ValueError(f"--format: unknown format {name!r}; registry formats: "
                     f"{', '.join(sorted(formats())) or 'none'}; also 'auto', 'ase', "
                     "'hydragnn' or any ase.io format name (`pygfm-data formats` lists them)")


@dataclass
class Coverage:
    """Which explicit label keys were found, and the keys seen (for the error when
    a key is in no structure). Filled while reading on this rank."""
    keys: LabelKeys = field(default_factory=LabelKeys)
    info_keys: set = field(default_factory=set)
    array_keys: set = field(default_factory=set)
    registry_inputs: list = field(default_factory=list)

    def see(self, atoms) -> None:
        if len(self.info_keys) < 1000:  # bounded: a key per structure would grow forever
            self.info_keys.update(map(str, atoms.info))
            self.array_keys.update(map(str, atoms.arrays))
            calc = getattr(atoms, "calc", None)
            if calc is not None:
                self.info_keys.update(f"{name} (calculator)" for name in
                                      (getattr(calc, "results", None) or {}))


def check_label_keys(manifest: dict, coverage: Coverage, inputs) -> None:
    """Raise KeyError when a label key given on the command line holds a value in
    no structure of the inputs (``label_counts`` 0): almost always a typo, and a
    dataset silently without that label would train nothing."""
    for label in LABELS:
        key = getattr(coverage.keys, label)
        if key is None or manifest["label_counts"].get(label, 0):
            continue
        where = ", ".join(map(str, inputs))
        seen = []
        if coverage.info_keys:
            seen.append("info keys " + ", ".join(sorted(coverage.info_keys)[:_KEYS_SHOWN]))
        if coverage.array_keys:
            seen.append("per-atom arrays " + ", ".join(sorted(coverage.array_keys)[:_KEYS_SHOWN]))
        if coverage.registry_inputs:
            seen.append("`pygfm-data inspect FILE` lists the keys of "
                        + ", ".join(map(str, coverage.registry_inputs)))
        raise KeyError(f"--{label}-key {key!r}: no structure of {where} has a {label} under "
                       f"that key; keys that exist: {'; '.join(seen) or 'none'}")


def _scaled(sample: Sample, units: Units | None, virial: bool = False) -> Sample:
    """``sample`` read with ase.io in ``units`` -> eV, Å, eV/Å, eV/Å³. A stress made
    from a virial (``virial``: -V / volume, computed in the file's energy and
    length units) scales as energy / length³; a stress given as such, by
    ``units.stress``."""
    if units is None or units == Units():
        return sample
    length = units.length_factor
    stress_factor = units.energy_factor / length ** 3 if virial else units.stress_factor
    return replace(
        sample, positions=sample.positions * length, cell=sample.cell * length,
        energy=None if sample.energy is None else sample.energy * units.energy_factor,
        forces=None if sample.forces is None else sample.forces * units.forces_factor,
        stress=None if sample.stress is None else sample.stress * stress_factor)


def _ase_source(path: Path, kind: str, index: str, ase_format: str | None,
                hydragnn_splits):
    from .ase_input import iread_structures
    from .hydragnn import read_hydragnn

    if kind == HYDRAGNN:
        return read_hydragnn(path, splits=hydragnn_splits)
    return iread_structures(path, index=index, format=ase_format)


def read_inputs(inputs, *, format_name: str | None, options: ReadOptions, rank: int,
                size: int, index: str = ":", hydragnn_splits=None,
                coverage: Coverage | None = None) -> Iterator[tuple[int, Sample]]:
    """This rank's ``(position, Sample)`` pairs over all ``inputs``, in order.

    A registry format reads only this rank's positions; ase.io and HydraGNN inputs
    are read whole and only this rank's structures are turned into Samples.
    Errors name the file (and structure)."""
    coverage = coverage if coverage is not None else Coverage(options.keys)
    offset = 0
    ase_format = None if format_name in (None, "auto", ASE, HYDRAGNN) or \
        format_name in formats() else format_name
    for path in map(Path, inputs):
        kind = resolve_format(path, format_name)
        if offset is None:
            raise ValueError(f"{path}: under mpiexec a file whose reader cannot count its "
                             "structures ahead must be the last input; convert the files "
                             "one by one instead")
        if isinstance(kind, Format):
            coverage.registry_inputs.append(path)
            offset = yield from _read_registry(kind, path, options, rank, size, offset)
            continue
        if options.level is not None:
            raise ValueError(f"{path}: --level {options.level!r} is given but the file is "
                             f"read with {'HydraGNN' if kind == HYDRAGNN else 'ase.io'}, "
                             "which has one level per file")
        keys, number = options.keys, -1
        try:
            for number, atoms in enumerate(_ase_source(path, kind, index, ase_format,
                                                       hydragnn_splits)):
                position = offset + number
                if position % size == rank:
                    coverage.see(atoms)
                    sample = Sample.from_ase(atoms, dataset=str(path), index=number,
                                             energy_key=keys.energy, forces_key=keys.forces,
                                             stress_key=keys.stress, missing="mask")
                    yield position, _scaled(sample, options.units,
                                            virial=stress_from_virial(atoms, keys.stress))
            offset += number + 1
        except (ValueError, KeyError, TypeError) as error:
            # str() of a KeyError is its message in quotes
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise ValueError(str(message)) from error
        except Exception as error:  # a reader's own error: say which file
            raise ValueError(f"{path}: cannot read structures ({type(error).__name__}: "
                             f"{error})") from error


def _read_registry(fmt: Format, path: Path, options: ReadOptions, rank: int, size: int,
                   offset: int):
    """Yield the pairs of one registry-format file (positions shifted by ``offset``);
    returns the offset after it. The reader is asked for the positions k with
    (offset + k) % size == rank."""
    levels = fmt.levels(path)
    if options.level is not None and levels and options.level not in levels:
        raise ValueError(f"{path}: no level {options.level!r}; the {fmt.name} file has "
                         f"levels {', '.join(levels)}")
    # level None with several levels: the reader's documented default (ANI-1x: wb97x_dz)
    count = fmt.count(path, options)
    last = -1
    for k, sample in fmt.read(path, options, (rank - offset) % size, size):
        yield offset + k, sample
        last = k
    if count is None:
        # alone, the last position is the count; under MPI each rank saw only its share,
        # so a later input could not be placed (None: read_inputs refuses one)
        return offset + last + 1 if size == 1 else None
    return offset + count


def inspect_file(path: Path, format_name: str | None = None, frames: int = 10) -> dict:
    """What ``pygfm-data inspect`` shows: the registry format's ``inspect`` dict, or
    for ase.io files the keys of the first ``frames`` structures (where labels
    could be found, for ``--energy-key`` and friends)."""
    path = Path(path)
    kind = resolve_format(path, format_name)
    if isinstance(kind, Format):
        levels = kind.levels(path)
        return {"format": kind.name, "description": kind.description,
                **({"levels": levels} if levels else {}), **kind.inspect(path)}
    from .ase_input import iread_structures
    info, arrays, results, counts = {}, {}, {}, []
    charge = spin = 0
    source = (_ase_source(path, kind, ":", None, None) if kind == HYDRAGNN else
              iread_structures(path, index=f":{frames}",
                               format=None if format_name in (None, "auto", ASE) else format_name))
    try:
        for atoms in source:
            counts.append(len(atoms))
            for store, seen in ((atoms.info, info), (atoms.arrays, arrays),
                                (getattr(atoms.calc, "results", None) or {}, results)):
                for key, value in store.items():
                    seen[str(key)] = seen.get(str(key), 0) + 1
            charge += any(key in atoms.info for key in ("charge", "total_charge"))
            spin += any(key in atoms.info for key in ("spin", "multiplicity",
                                                      "spin_multiplicity"))
            if len(counts) >= frames:
                break
    except Exception as error:  # noqa: BLE001 - reported with the file's name
        raise ValueError(f"{path}: cannot read structures ({type(error).__name__}: "
                         f"{error})") from error
    return {"format": "hydragnn" if kind == HYDRAGNN else "ase.io",
            "structures_read": len(counts),
            "atoms_per_structure": counts,
            "info_keys (structures having it)": info,
            "per_atom_arrays": arrays,
            "calculator_results": results,
            "with_charge": charge, "with_spin": spin,
            "note": f"the first {frames} structures only" if len(counts) >= frames else
                    "every structure"}

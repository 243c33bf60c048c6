"""JSON files of pymatgen structures: MPtrj, Alexandria, and lists of records.

Three formats, told apart by content (plain, ``.bz2``, ``.gz`` or ``.xz`` JSON):

``mptrj``
    The Materials Project Trajectory set (CHGNet's ``MPtrj_2022.9_full.json``, one
    ~11 GB JSON object): ``{mp_id: {frame_id: frame}}`` where a frame holds
    ``structure`` (a pymatgen ``Structure.as_dict()``), ``uncorrected_total_energy``
    (eV, raw VASP), ``corrected_total_energy`` (eV, after MP2020 compatibility),
    ``energy_per_atom`` (eV/atom, the corrected energy per atom), ``ef_per_atom``,
    ``e_per_atom_relaxed``, ``ef_per_atom_relaxed``, ``force`` (eV/Å), ``stress``
    (kBar), ``magmom`` (μB) and ``bandgap`` (eV). Layout and units as the dataset's
    figshare record (doi:10.6084/m9.figshare.23713842) describes them.

    Energy: ``corrected_total_energy`` by default. The figshare record says the
    corrected ``energy_per_atom`` "is the energy label used to train CHGNet", and
    CHGNet's loader (chgnet/data/dataset.py, ``StructureJsonData``) defaults to it;
    pygfm stores total energies, and corrected_total_energy = energy_per_atom × n.
    ``--energy-key uncorrected_total_energy`` gives the raw VASP energy instead (the
    choice of matbench-discovery's MPtrj extxyz export, which MACE-MP-0 trained on).

    Stress: VASP, and pymatgen's parse of it, report stress in kBar with the sign of a
    pressure (positive in compression); ASE's sign is the opposite (positive in
    tension). CHGNet's loader multiplies MPtrj stress by -0.1 (kBar -> GPa and the
    sign), and matbench-discovery's export by -0.1 * ase.units.GPa. Here:
    stress [eV/Å³] = -stress [kBar] / 1602.1766208 (the default key is ``-stress``,
    see the key syntax below, with kBar units; an explicit ``--stress-key`` or
    ``--units`` replaces these, so write ``--stress-key=-stress --units stress=kbar``).
    ``magmom`` has no place in a :class:`~pygfm.data.Sample` and is not read.

``alexandria``
    Dumps of pymatgen ``ComputedStructureEntry`` dicts, as the Alexandria database
    publishes them (``alexandria_000.json.bz2``: ``{"entries": [entry, ...]}``; a
    plain list of entries is read too). Energy: the entry's ``energy`` (eV, the
    uncorrected total energy; ``--energy-key data.energy_corrected`` for the
    MP2020-compatible one where present). Forces: the sites' ``forces`` property or
    ``data.forces`` (eV/Å) where present. Stress is read only when asked for with a
    key, in the units and sign given (``--units``, a leading ``-``): no published
    description of an Alexandria stress field was found to base a default on.

``json-records``
    Other JSON holding pymatgen structures: a list of records, ``{id: record}``, an
    object with a list of records under a key, one record (a file written with
    ``json.dump(structure.as_dict())``) or JSON Lines. A record is a ``Structure`` /
    ``Molecule`` dict or a dict holding one under ``structure`` (or under any
    top-level key). Labels default to ``energy`` (eV), ``forces`` / ``force`` or the
    sites' ``forces`` property (eV/Å) and ``stress`` (eV/Å³, ASE's sign).

Keys (``--energy-key`` and friends) are dotted paths into a record
(``data.energy_corrected``, ``outputs.energy``); a path through a list maps over
it (``structure.sites.properties.forces`` is the per-site forces). A leading ``-``
negates the value (``--stress-key=-stress`` with ``--units stress=kbar`` reads
VASP-signed stress); a forces key naming a gradient (``gradient(s)``, ``*_grad``)
gives forces = -gradient. An energy key ending in ``per_atom`` is multiplied by
the number of atoms. A label that is null or holds a NaN is taken as missing.

Structures are parsed from the dict layout directly (``lattice.matrix`` rows are
the cell vectors in Å, ``lattice.pbc``, ``sites[].species[].element``, Cartesian
``xyz`` or fractional ``abc``), so reading needs no pymatgen. A disordered site
(several species or an occupancy below 1) is refused, naming the entry.

Streaming: a 10+ GB JSON object cannot be ``json.load``-ed. :class:`_JsonStream`
walks the outer containers token by token and decodes each record (an MPtrj frame,
an entry) on its own with the standard library's C decoder, holding a few 256 K
character chunks plus one record (measured: 1.3 MB of Python allocations at peak
while streaming a 12.6 MB file). This needs no third-party parser (ijson would be
an extra dependency for the same result). Every rank still scans the whole file, but only
builds the samples it owns.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np
from ase.data import atomic_numbers

from . import Format, ReadOptions, Units, register
from ..sample import Sample

__all__ = ["read_mptrj", "read_alexandria", "read_records"]

# MPtrj's stress is VASP's: kBar, positive in compression (see the module docstring)
MPTRJ_UNITS = Units(stress="kbar")

_DEFAULT_KEYS = {
    "mptrj": {"energy": ("corrected_total_energy",), "forces": ("force",),
              "stress": ("-stress",)},
    "alexandria": {"energy": ("energy",),
                   "forces": ("structure.sites.properties.forces", "data.forces"),
                   "stress": ()},
    "json-records": {"energy": ("energy", "total_energy", "energy_total", "data.energy"),
                     "forces": ("forces", "force", "structure.sites.properties.forces",
                                "sites.properties.forces", "data.forces"),
                     "stress": ("stress", "data.stress")},
}

_MAGIC = ((b"BZh", bz2.open), (b"\x1f\x8b", gzip.open), (b"\xfd7zXZ\x00", lzma.open))
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SYMBOL = re.compile(r"[A-Z][a-z]?")
_FIRST_KEY = re.compile(r'\{\s*"((?:[^"\\]|\\.)*)"')
_DECODER = json.JSONDecoder()
_HEAD_CHARS = 1 << 16


def _open_text(path: Path):
    """The file as text, decompressing bz2 / gzip / xz by their magic bytes."""
    with open(path, "rb") as raw:
        head = raw.read(6)
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            return opener(path, "rt", encoding="utf-8-sig")
    return open(path, "rt", encoding="utf-8-sig")


class _JsonStream:
    """Reads a JSON text a token at a time, decoding chosen values whole.

    The outer containers are walked with :meth:`members` / :meth:`items` (which
    yield a key or index and leave the stream at its value, for the caller to
    decode with :meth:`value`); values are decoded by ``json.JSONDecoder.
    raw_decode`` on a buffer that grows until the value is complete, so memory is
    the buffer (a few ``CHUNK`` of characters) plus the largest single value decoded.
    """

    CHUNK = 1 << 18  # characters read at a time
    MAX_VALUE = 1 << 30  # characters; no record of these datasets comes near

    def __init__(self, file, path: Path):
        self.file, self.path = file, path
        self.buf, self.pos, self.base, self.eof = "", 0, 0, False

    def error(self, message: str, at: int | None = None) -> ValueError:
        where = self.base + (self.pos if at is None else at)
        return ValueError(f"{self.path}: {message} (at character {where:,})")

    def _more(self, amount: int | None = None, trim: bool = True) -> bool:
        if self.eof:
            return False
        try:
            text = self.file.read(amount or self.CHUNK)
        except (EOFError, OSError, UnicodeDecodeError, lzma.LZMAError) as err:
            raise ValueError(f"{self.path}: cannot read past character "
                             f"{self.base + len(self.buf):,} ({type(err).__name__}: {err}); "
                             "is the file truncated or corrupt?") from None
        if not text:
            self.eof = True
            return False
        if self.pos and trim:  # drop what was consumed, so the buffer stays about CHUNK long
            self.base += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += text
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file), not consumed."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, chars: str, what: str) -> str:
        found = self.peek()
        if not found or found not in chars:
            raise self.error(f"expected {what}, found "
                             f"{repr(found) if found else 'the end of the file'}"
                             + ("; is the file truncated?" if not found else ""))
        self.pos += 1
        return found

    def value(self):
        """Decode the next JSON value whole."""
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
                # a number can end with the buffer and go on in the next chunk
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return obj
            except json.JSONDecodeError as err:
                # an error near the end of the buffer (or an open string) may only
                # mean the value goes on; anything else is a real syntax error
                incomplete = (err.pos >= len(self.buf) - 16
                              or err.msg.startswith("Unterminated string"))
                if self.eof or not incomplete:
                    truncated = "; is the file truncated?" if self.eof and incomplete else ""
                    raise self.error(f"invalid JSON: {err.msg}{truncated}", at=err.pos) from None
            if len(self.buf) - self.pos > self.MAX_VALUE:
                raise self.error(f"one JSON value is longer than {self.MAX_VALUE:,} characters")
            self._more(max(self.CHUNK, len(self.buf) - self.pos))

    def members(self) -> Iterator[str]:
        """Keys of the object that starts here; after each key (and its ':') the
        caller consumes the value."""
        self.expect("{", "an object ('{')")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                self.expect('"', "a key string")
            key = self.value()
            self.expect(":", f"':' after the key {key!r}")
            yield key
            if self.expect(",}", "',' or '}'") == "}":
                return

    def first_key(self) -> str | None:
        """The first key of the object that starts here, without consuming anything."""
        self.peek()
        while len(self.buf) - self.pos < 4096 and self._more(trim=False):
            pass
        match = _FIRST_KEY.match(self.buf, self.pos)
        return json.loads(f'"{match.group(1)}"') if match else None

    def items(self) -> Iterator[int]:
        """Indices of the array that starts here; after each, the caller consumes the item."""
        self.expect("[", "an array ('[')")
        if self.peek() == "]":
            self.pos += 1
            return
        index = 0
        while True:
            yield index
            index += 1
            if self.expect(",]", "',' or ']'") == "]":
                return

    def end(self) -> None:
        if self.peek():
            raise self.error("extra data after the top-level JSON value")


# --- structures --------------------------------------------------------------------

def _is_structure(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("sites"), list) and (
        "lattice" in value or value.get("@class") in ("Structure", "Molecule", "IStructure",
                                                      "IMolecule"))


def _find_structure(record: dict):
    """The Structure/Molecule dict of a record: itself, ``structure``, or another key."""
    if _is_structure(record):
        return record
    if _is_structure(record.get("structure")):
        return record["structure"]
    for value in record.values():
        if _is_structure(value):
            return value
    return None


def _atomic_number(symbol, where: str, site: int) -> int:
    match = _SYMBOL.match(symbol) if isinstance(symbol, str) else None
    name = match.group(0) if match else None
    if name in ("D", "T"):  # pymatgen's hydrogen isotopes
        return 1
    number = atomic_numbers.get(name, 0) if name else 0
    if number < 1:
        raise ValueError(f"{where}: site {site} has the species {symbol!r}, not an element")
    return number


def _structure_arrays(structure: dict, where: str):
    """numbers [n], positions [n, 3] Å, cell [3, 3] Å, pbc [3], charge, spin of a
    pymatgen Structure / Molecule dict."""
    sites = structure["sites"]
    if not sites:
        raise ValueError(f"{where}: the structure has no sites")
    lattice = structure.get("lattice")
    cell = np.zeros((3, 3))
    pbc = np.zeros(3, dtype=bool)
    if lattice is not None:
        try:
            cell = np.asarray(lattice["matrix"] if isinstance(lattice, dict) else lattice,
                              dtype=np.float64).reshape(3, 3)
            # pymatgen Structures are periodic unless lattice.pbc says otherwise
            pbc = np.asarray(lattice.get("pbc", (True, True, True)) if isinstance(lattice, dict)
                             else (True, True, True), dtype=bool).reshape(3)
        except (KeyError, TypeError, ValueError):
            keys = sorted(lattice) if isinstance(lattice, dict) else type(lattice).__name__
            raise ValueError(f"{where}: lattice has no [3, 3] 'matrix' and [3] 'pbc' "
                             f"(it has {keys})") from None
    numbers = np.empty(len(sites), dtype=np.int64)
    positions = np.empty((len(sites), 3))
    for index, site in enumerate(sites):
        species = site.get("species") if isinstance(site, dict) else None
        if not isinstance(species, list) or not species or not all(
                isinstance(one, dict) for one in species):
            keys = sorted(site) if isinstance(site, dict) else type(site).__name__
            raise ValueError(f"{where}: site {index} has no 'species' list of "
                             f"{{element, occu}} dicts (its keys: {keys})")
        try:
            occupancy = float(species[0].get("occu", 1.0))
        except (TypeError, ValueError):
            occupancy = math.nan
        if len(species) != 1 or abs(occupancy - 1.0) > 1e-6:
            raise ValueError(f"{where}: site {index} is disordered ("
                             + ", ".join(f"{s.get('element')}:{s.get('occu')}" for s in species)
                             + "); an atomistic sample needs one element per site")
        numbers[index] = _atomic_number(species[0].get("element"), where, index)
        coordinates = "xyz" if "xyz" in site else "abc" if lattice is not None else None
        try:
            point = np.asarray(site[coordinates], dtype=np.float64) if coordinates else None
        except (TypeError, ValueError):
            point = None
        if point is None or point.shape != (3,):
            raise ValueError(f"{where}: site {index} has no 3-vector 'xyz' (or 'abc' with a "
                             f"lattice); its keys: {sorted(site)}")
        positions[index] = point if coordinates == "xyz" else point @ cell
    charge = structure.get("charge")
    spin = structure.get("spin_multiplicity")
    return numbers, positions, cell, pbc, charge, spin


# --- labels ------------------------------------------------------------------------

class _Missing(KeyError):
    pass


def _lookup(node, parts: list[str], done: list[str]):
    for depth, part in enumerate(parts):
        if isinstance(node, list):
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            rest = parts[depth:]
            return [_lookup(element, rest, done + [part]) for element in node]
        if not isinstance(node, dict):
            raise _Missing(f"{'.'.join(done + parts[:depth]) or 'the record'} is a "
                           f"{type(node).__name__}, not an object")
        if part not in node:
            raise _Missing(f"no key {part!r} in {'.'.join(done + parts[:depth]) or 'the record'}"
                           f" (keys there: {sorted(node)})")
        node = node[part]
    return node


def _get(record: dict, key: str):
    """(value, sign) at dotted ``key``; a leading '-' gives sign -1."""
    sign = -1.0 if key.startswith("-") else 1.0
    return _lookup(record, key.lstrip("-").split("."), []), sign


def _as_array(value, shape, label: str, where: str):
    """float64 array or None (null or NaN anywhere: the label is missing)."""
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        # a null inside (e.g. one missing force) also means "missing"
        try:
            array = np.asarray([[math.nan if x is None else x for x in row] for row in value],
                               dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {label} is not numeric: {str(value)[:80]}") from None
    if np.isnan(array).any():
        return None
    if shape is not None and array.shape not in shape:
        raise ValueError(f"{where}: {label} has shape {array.shape}; expected "
                         + " or ".join(str(list(s)) for s in shape))
    return array


def _labels(record: dict, fmt: str, options: ReadOptions, units: Units, n: int,
            where: str) -> dict:
    found = {}
    for label in ("energy", "forces", "stress"):
        explicit = getattr(options.keys, label)
        candidates = (explicit,) if explicit is not None else _DEFAULT_KEYS[fmt][label]
        value, sign, used = None, 1.0, None
        for key in candidates:
            try:
                value, sign = _get(record, key)
            except _Missing as err:
                if explicit is not None:
                    raise KeyError(f"{where}: --{label}-key {key!r}: {err.args[0]}") from None
                continue
            used = key
            if value is not None:
                break
        if value is None:
            found[label] = None
            continue
        name = used.lstrip("-").rsplit(".", 1)[-1]
        if label == "energy":
            array = _as_array(value, ((),), f"energy ({used})", where)
            if array is not None:
                array = float(array) * sign * units.energy_factor
                if name.endswith("per_atom"):
                    array *= n
        elif label == "forces":
            array = _as_array(value, ((n, 3),), f"forces ({used})", where)
            if array is not None:
                gradient = name.lower() in ("gradient", "gradients") or name.endswith("_grad")
                array = array * (-sign if gradient else sign) * units.forces_factor
        else:
            array = _as_array(value, ((3, 3), (6,), (9,)), f"stress ({used})", where)
            if array is not None:
                array = array * sign * units.stress_factor
        found[label] = array
    return found


# --- layouts -----------------------------------------------------------------------
# Each yields (entry id, decoded record) in file order. Every record is decoded, also
# on ranks that do not own it: decoding is how the C decoder finds a value's end.

def _mptrj_records(stream: _JsonStream) -> Iterator[tuple[str, object]]:
    for mp_id in stream.members():
        if stream.peek() != "{":
            raise stream.error(f"entry {mp_id!r}: expected an object of frames "
                               "{frame_id: {...}} as in MPtrj")
        for frame_id in stream.members():
            yield f"{mp_id}/{frame_id}", stream.value()
    stream.end()


def _entry_name(record) -> str:
    """' (ID)' from a ComputedStructureEntry's entry_id or Alexandria's data.mat_id."""
    if isinstance(record, dict):
        data = record.get("data") if isinstance(record.get("data"), dict) else {}
        name = record.get("entry_id") or data.get("mat_id")
        if name:
            return f" ({name})"
    return ""


def _array_records(stream: _JsonStream, prefix: str) -> Iterator[tuple[str, object]]:
    for index in stream.items():
        yield f"{prefix}[{index}]", stream.value()


def _cse_records(stream: _JsonStream) -> Iterator[tuple[str, object]]:
    first = stream.peek()
    if first == "[":
        yield from _array_records(stream, "entries")
    elif first == "{":
        keys = []
        for key in stream.members():
            keys.append(key)
            if key == "entries" and stream.peek() == "[":
                yield from _array_records(stream, "entries")
            else:
                stream.value()
        if "entries" not in keys:
            raise ValueError(f"{stream.path}: no 'entries' list of ComputedStructureEntry "
                             f"dicts (top-level keys: {keys})")
    else:
        raise stream.error("expected a JSON object or array")
    stream.end()


# pymatgen's as_dict() begins with "@module": such a top-level object is one record
_RECORD_FIRST_KEYS = {"@module", "@class", "@version", "lattice", "sites", "structure", "charge"}


def _is_json_lines(path: Path) -> bool:
    """True when the first non-blank line is a whole JSON object holding a structure
    (JSON Lines, or a one-line file of one record)."""
    with _open_text(path) as file:
        line = ""
        for _ in range(1000):
            line = file.readline(1 << 24)
            if not line or line.strip():
                break
        if not line.lstrip().startswith("{"):
            return False
        try:
            record = json.loads(line)
        except ValueError:  # a pretty-printed or a one-line container
            return False
        return isinstance(record, dict) and _find_structure(record) is not None


def _generic_records(stream: _JsonStream, json_lines: bool) -> Iterator[tuple[str, object]]:
    if json_lines:
        index = 0
        while stream.peek():
            yield f"line {index + 1}", stream.value()
            index += 1
        return
    first = stream.peek()
    if first == "[":
        yield from _array_records(stream, "")
        stream.end()
        return
    if first != "{":
        raise stream.error("expected a JSON object or array")
    if stream.first_key() in _RECORD_FIRST_KEYS:
        yield "record", stream.value()
        stream.end()
        return
    # a container: {id: record}, {key: [record, ...]}; members holding no structure
    # (a version, a list of element names, metadata) are passed over. A member
    # object is decoded whole, so {id: {id: record}} files belong to --format mptrj.
    count, keys = 0, []
    for key in stream.members():
        if len(keys) < 20:  # enough to name in an error
            keys.append(key)
        if stream.peek() == "[":
            items = stream.items()
            for index in items:
                item = stream.value()
                if index == 0 and not (isinstance(item, dict) and _find_structure(item)):
                    for _ in items:  # not a list of records: pass over the rest
                        stream.value()
                    break
                count += 1
                yield f"{key}[{index}]", item
            continue
        value = stream.value()
        if isinstance(value, dict) and _find_structure(value) is not None:
            count += 1
            yield key, value
        elif isinstance(value, dict) and any(isinstance(v, dict) and _find_structure(v)
                                             for v in value.values()):
            for sub, item in value.items():
                count += 1
                yield f"{key}/{sub}", item
    stream.end()
    if not count:
        raise ValueError(f"{stream.path}: no records with pymatgen structures (dicts with "
                         f"'lattice' and 'sites'); top-level keys: {keys}")


def _records(path: Path, fmt: str, stream: _JsonStream):
    if fmt == "mptrj":
        return _mptrj_records(stream)
    if fmt == "alexandria":
        return _cse_records(stream)
    return _generic_records(stream, _is_json_lines(path))


# --- reading -----------------------------------------------------------------------

def _read(fmt: str, path, options: ReadOptions | None = None, rank: int = 0,
          size: int = 1) -> Iterator[tuple[int, Sample]]:
    path = Path(path)
    options = options or ReadOptions()
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} of size {size} is not a valid MPI position")
    units = options.units or (MPTRJ_UNITS if fmt == "mptrj" else Units())
    dataset = options.dataset or path.name
    with _open_text(path) as file:
        stream = _JsonStream(file, path)
        for position, (entry, record) in enumerate(_records(path, fmt, stream)):
            if position % size != rank:
                continue
            where = f"{path}: entry {entry}{_entry_name(record)}"
            if not isinstance(record, dict):
                raise ValueError(f"{where} is a {type(record).__name__}, not a record object")
            yield position, _sample(record, fmt, options, units, dataset, position, where)


def _sample(record: dict, fmt: str, options: ReadOptions, units: Units, dataset: str,
            position: int, where: str) -> Sample:
    structure = record.get("structure") if fmt == "mptrj" else _find_structure(record)
    if not _is_structure(structure):
        raise ValueError(f"{where}: no pymatgen Structure or Molecule dict (a dict with "
                         f"'lattice' and 'sites')"
                         + (" under 'structure', as MPtrj frames have" if fmt == "mptrj" else "")
                         + f"; the record's keys: {sorted(record)}")
    numbers, positions, cell, pbc, charge, spin = _structure_arrays(structure, where)
    positions = positions * units.length_factor
    cell = cell * units.length_factor
    labels = _labels(record, fmt, options, units, len(numbers), where)
    try:
        return Sample(numbers=numbers, positions=positions, cell=cell, pbc=pbc,
                      dataset=dataset, index=position,
                      charge=None if charge is None else float(charge),
                      spin=None if spin is None else float(spin), **labels)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def read_mptrj(path, options: ReadOptions | None = None, rank: int = 0, size: int = 1):
    """MPtrj frames as ``(position, Sample)`` (eV, Å, eV/Å, eV/Å³ in ASE's sign);
    positions count frames over the file, rank ``r`` of ``size`` gets k % size == r."""
    return _read("mptrj", path, options, rank, size)


def read_alexandria(path, options: ReadOptions | None = None, rank: int = 0, size: int = 1):
    """ComputedStructureEntry dumps (Alexandria) as ``(position, Sample)``."""
    return _read("alexandria", path, options, rank, size)


def read_records(path, options: ReadOptions | None = None, rank: int = 0, size: int = 1):
    """Records holding pymatgen structures as ``(position, Sample)``."""
    return _read("json-records", path, options, rank, size)


# --- sniffing and inspecting -------------------------------------------------------

def _head(path: Path) -> str:
    with _open_text(path) as file:
        return file.read(_HEAD_CHARS)


_STRUCTURE_CLASS = re.compile(r'"@class"\s*:\s*"I?(Structure|Molecule)"')
_MPTRJ_ENERGY = re.compile(r'"(un)?corrected_total_energy"\s*:')
# {"mp-id": {"frame-id": {  -- the second key is a frame id, not a field of a record
_MPTRJ_NESTING = re.compile(r'\{\s*"(?:[^"\\]|\\.)*"\s*:\s*\{\s*"((?:[^"\\]|\\.)*)"\s*:\s*\{')
_RECORD_FIELDS = _RECORD_FIRST_KEYS | {"structure", "data", "entries", "outputs", "energy"}


def _kind(path: Path) -> str | None:
    """Which of the three formats the content is, or None."""
    try:
        head = _head(Path(path)).lstrip()
    except (OSError, EOFError, UnicodeDecodeError, lzma.LZMAError):
        return None  # unreadable, binary or a broken archive: not one of ours
    if not head or head[0] not in "[{":
        return None
    if not (_STRUCTURE_CLASS.search(head) or ('"lattice"' in head and '"sites"' in head)):
        return None
    if '"ComputedStructureEntry"' in head:
        return "alexandria"
    nesting = _MPTRJ_NESTING.match(head)
    if nesting and nesting.group(1) not in _RECORD_FIELDS and _MPTRJ_ENERGY.search(head):
        return "mptrj"
    return "json-records"


def _inspect(fmt: str, path) -> dict:
    path = Path(path)
    info = {"format": fmt, "path": str(path), "default_keys": {
        label: list(keys) for label, keys in _DEFAULT_KEYS[fmt].items()},
        "units": "kBar stress, VASP sign (negated)" if fmt == "mptrj" else "eV, Å, eV/Å, eV/Å^3"}
    with _open_text(path) as file:
        stream = _JsonStream(file, path)
        for entry, record in _records(path, fmt, stream):
            info["first_entry"] = entry
            if isinstance(record, dict):
                info["record_keys"] = sorted(record)
                if isinstance(record.get("data"), dict):
                    info["data_keys"] = sorted(record["data"])
                structure = _find_structure(record)
                if structure is not None:
                    info["num_atoms"] = len(structure["sites"])
                    info["site_properties"] = sorted(
                        structure["sites"][0].get("properties") or {})
            break
    return info


def _format(name: str, description: str) -> Format:
    return Format(
        name=name, description=description, suffixes=(".json", ".json.bz2", ".json.gz",
                                                       ".json.xz", ".jsonl"),
        sniff=lambda path: _kind(path) == name,
        inspect=lambda path: _inspect(name, path),
        read=lambda path, options=None, rank=0, size=1: _read(name, path, options, rank,
                                                              size))


register(_format("mptrj", "MPtrj JSON {mp_id: {frame_id: frame}} (CHGNet), stress in kBar"))
register(_format("alexandria", "pymatgen ComputedStructureEntry dumps (Alexandria .json.bz2)"))
register(_format("json-records", "JSON records with pymatgen Structure/Molecule dicts"))

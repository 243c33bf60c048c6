"""ASE databases and fairchem's ASE-LMDB files as pygfm samples (issue #16).

Two formats:

``aselmdb``
    The LMDB backend of ASE's database that fairchem v2 publishes its datasets in
    (OMat24, OMol25, ODAC23, OC25, ...): one ``*.aselmdb`` file, or a directory of
    them (read in sorted name order, positions running on from file to file, as
    fairchem's ``AseDBDataset`` concatenates a folder). The reference writer is the
    PyPI package ``ase-db-backends`` (``ase_db_backends.aselmdb.LMDBDatabase``);
    this module reads its layout directly with ``lmdb`` so that a rank touches only
    its own rows and never holds the list of all ids:

    - an LMDB environment in a single file (``subdir=False``), with a ``-lock``
      file beside it that a reader does not need;
    - key ``b"<id>"`` (ASCII decimal, ids 1-based) -> zlib-compressed ASE-JSON
      (``ase.io.jsonio.encode``) of the row dict: ``numbers``, ``positions``,
      ``cell``, ``pbc``, calculator results (``energy``, ``forces``, ``stress``
      Voigt, ...) at the top level, ``key_value_pairs``, ``data``;
    - key ``b"nextid"`` -> the next id to write, ``b"deleted_ids"`` -> the list
      of deleted ids, ``b"metadata"`` -> a dict; all zlib-compressed ASE-JSON.
      The rows are ids ``1 .. nextid-1`` less the deleted ones, in that order
      (``LMDBDatabase._load_ids`` in ase-db-backends 0.11.0).

``asedb``
    ASE's own backends through ``ase.db``: SQLite (``*.db``), JSON (``*.json``)
    and PostgreSQL (a ``postgresql://`` URL, through ``ase.db.connect`` and the
    ``psycopg2`` that ase-db-backends needs; it cannot be tested here without a
    server, so no test pretends to). A JSON database is one JSON document and is
    decoded whole (as ASE itself does); SQLite and PostgreSQL rows are fetched one
    at a time by id.

Positions are 0-based in database order (ascending id); ids are ASE's 1-based row
ids and appear in messages. Rank ``r`` of ``P`` builds only the rows at positions
``k % P == r``.

Labels and units: energy in eV, forces in eV/Å, stress in eV/Å³ with ASE's sign.

- Without a key, labels come from the row's calculator results (ASE's units, eV
  and Å), then from ``data`` and ``key_value_pairs`` under the usual names
  (``energy``, ``forces``, ``stress``, ...). An explicit key (``--energy-key``
  ...) names a key of ``key_value_pairs`` or ``data`` (fairchem copies ``data``
  into ``atoms.info``, so an ``info`` key is a ``data`` key here) or a
  calculator property (``free_energy``). A key found in none of the first rows
  is a KeyError naming the keys that exist; a row that lacks it later gets the
  label None (masked), as does a label holding NaN.
- A forces key naming a gradient (``gradient``, ``gradients``, ``*_grad``,
  ``*_gradient``) gives forces = -gradient.
- Units of ``data``/``key_value_pairs`` values come from the database's metadata
  where the writer stored them: schnetpack's ``ASEAtomsData`` writes
  ``metadata = {"_distance_unit": "Ang", "_property_unit_dict": {"energy":
  "kcal/mol", "forces": "kcal/mol/Ang", ...}}`` and keeps positions in
  ``_distance_unit`` and properties in ``row.data``; nabla2DFT's energy databases
  use that layout with ``{"energy": "Hartree", "forces": "Hartree/Ang"}``
  (``nablaDFT/dataset/nablaDFT_dataset.py``, ``_check_metadata``; energy as a
  [1] array, forces [n, 3] in ``row.data``). Without metadata values are taken as
  eV, Å. ``--units`` (``ReadOptions.units``) overrides both for every label and
  for positions.
- ``charge`` and ``spin`` come from ``data`` then ``key_value_pairs``
  (``charge``/``total_charge``; ``spin``/``spin_multiplicity``/
  ``multiplicity``). OMol25's rows carry ``data["charge"]`` (total charge) and
  ``data["spin"]``, the spin multiplicity 2S+1 that fairchem's UMA reads from
  ``atoms.info["spin"]`` after ``atoms.info.update(row.data)``
  (fairchem ``AseDBDataset.get_atoms``). A value that is not one number (per-atom
  charges under that name) or is NaN leaves it None.

Memory: nothing grows with the number of rows (no list of ids or rows; the
ids are a generator over ``1 .. nextid-1``). An LMDB file is memory-mapped, so
the pages a rank has read count in its RSS as clean file-backed pages that the
kernel drops under pressure, as with fairchem's own reader.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..sample import ENERGY_KEYS, FORCES_KEYS, STRESS_KEYS, Sample
from . import Format, ReadOptions, register
from .units import Units

__all__ = ["ASELMDB", "ASEDB"]

_LMDB_MAGIC = 0xBEEFC0DE  # MDB_MAGIC, the uint32 after the 16-byte page header of a meta page
_SQLITE_MAGIC = b"SQLite format 3\x00"
_JSON_START = re.compile(rb'^\s*\{\s*"(\d+|ids|nextid|metadata)"\s*:')
_POSTGRES = ("postgresql:", "postgres:")
_CHARGE_KEYS = ("charge", "total_charge")
_SPIN_KEYS = ("spin", "spin_multiplicity", "multiplicity")  # 2S+1, as OMol25 stores it
_CALCULATOR = ("energy", "free_energy", "forces", "stress")
_PROBE_ROWS = 32  # rows an explicit key must appear in at least once


def _import_lmdb():
    try:
        import lmdb
    except ImportError as exc:  # lmdb is not a pygfm dependency
        raise ImportError("reading ASE-LMDB files needs the lmdb package: "
                          "pip install lmdb (or ase-db-backends)") from exc
    return lmdb


def _decode(blob: bytes):
    from ase.io.jsonio import decode
    return decode(zlib.decompress(blob).decode("utf-8"))


# ---------------------------------------------------------------- units


@dataclass(frozen=True)
class _Scale:
    """Factors to eV, Å, eV/Å, eV/Å³ for one file, per label kind, with the
    metadata's per-key units (None: no metadata for that key)."""
    length: float = 1.0
    override: Units | None = None
    property_units: dict | None = None
    where: str = ""

    def factor(self, kind: str, key: str | None) -> float:
        if self.override is not None:
            return {"energy": self.override.energy_factor,
                    "forces": self.override.forces_factor,
                    "stress": self.override.stress_factor}[kind]
        if key is None or not self.property_units or key not in self.property_units:
            return 1.0  # a calculator result, or no unit stored: ASE's eV, Å
        return _unit_factor(kind, self.property_units[key],
                            f"{self.where}: metadata _property_unit_dict[{key!r}]")


def _unit_factor(kind: str, text, where: str) -> float:
    """'kcal/mol', 'Hartree/Bohr', 'kcal/mol/Ang', 'eV/Ang^3', 'GPa' -> factor."""
    if not isinstance(text, str):
        raise ValueError(f"{where} is {text!r}, not a unit name; give the units with "
                         "--units energy=...,length=...")
    try:
        if kind == "energy":
            return Units(energy=text).energy_factor
        if kind == "length":
            return Units(length=text).length_factor
        if kind == "stress":
            try:
                return Units(stress=text).stress_factor
            except ValueError:
                energy, _, length = text.rpartition("/")
                length = re.sub(r"(\^|\*\*)?3$", "", length.strip())
                return Units(energy=energy).energy_factor / Units(length=length).length_factor ** 3
        energy, sep, length = text.rpartition("/")  # kcal/mol/Ang: the last '/' splits
        if not sep:
            raise ValueError(f"{text!r} is not ENERGY/LENGTH")
        return Units(energy=energy).energy_factor / Units(length=length).length_factor
    except ValueError as exc:
        raise ValueError(f"{where}: cannot read the unit {text!r} ({exc}); give the units "
                         "with --units") from None


def _scale(metadata: dict, options: ReadOptions, where: str) -> _Scale:
    if options.units is not None:
        return _Scale(length=options.units.length_factor, override=options.units, where=where)
    metadata = metadata if isinstance(metadata, dict) else {}
    length = 1.0
    if "_distance_unit" in metadata:
        length = _unit_factor("length", metadata["_distance_unit"],
                              f"{where}: metadata _distance_unit")
    units = metadata.get("_property_unit_dict")
    return _Scale(length=length, property_units=units if isinstance(units, dict) else None,
                  where=where)


# ---------------------------------------------------------------- sources


_REMAP_ROWS = 50_000  # rows passed (any rank's) before the file is mapped afresh


class _LmdbFile:
    """One ASE-LMDB file opened read-only, without a lock file (the files are
    published read-only; ase-db-backends' ``readonly=True`` does the same).

    LMDB reads through a memory map, and every page touched stays in the
    process's resident set until the map is closed: reading a 3 GB folder kept
    3.3 GB resident. The reader therefore renews the map every _REMAP_ROWS rows and
    when it moves to the next file (:meth:`release`), so that resident memory stays
    bounded whatever the size of the files."""

    def __init__(self, path: Path):
        lmdb = _import_lmdb()
        self.path = path
        if not path.is_file():
            raise ValueError(f"{path}: no such ASE-LMDB file")
        if not _has_lmdb_magic(path):
            raise ValueError(f"{path}: not an LMDB file (no LMDB meta page)")
        try:
            self.env = lmdb.open(str(path), subdir=False, readonly=True, lock=False,
                                 readahead=False, meminit=False, max_readers=1)
        except lmdb.Error as exc:
            raise ValueError(f"{path}: not a readable LMDB file ({exc})") from None
        try:
            # pages past the end of a truncated file would be a SIGBUS through the
            # memory map, not an exception: check the size the meta page promises
            info, stat = self.env.info(), self.env.stat()
            needed = (info["last_pgno"] + 1) * stat["psize"]
            size = path.stat().st_size
            if size < needed:
                raise ValueError(f"{path}: truncated LMDB file ({size} bytes; its meta page "
                                 f"says it holds {needed})")
            self.txn = self.env.begin(buffers=False)
            nextid = self.txn.get(b"nextid")
            if nextid is None:
                keys = [bytes(key)[:40] for key, _ in zip(self.txn.cursor().iternext(values=False),
                                                          range(8))]
                raise ValueError(f"{path}: not an ASE-LMDB file (ase-db-backends layout): "
                                 f"no 'nextid' key; first keys: {keys}")
            self.nextid = int(self._value(b"nextid", nextid))
            deleted = self.txn.get(b"deleted_ids")
            self.deleted = (set(int(i) for i in self._value(b"deleted_ids", deleted))
                            if deleted is not None else set())
            metadata = self.txn.get(b"metadata")
            self.metadata = self._value(b"metadata", metadata) if metadata is not None else {}
        except BaseException:
            self.env.close()
            raise

    def _value(self, key: bytes, blob: bytes):
        try:
            return _decode(blob)
        except (zlib.error, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"{self.path}: key {key.decode('ascii', 'replace')!r} is not "
                             f"zlib-compressed ASE-JSON as ase-db-backends writes it ({exc})") from None

    @property
    def count(self) -> int:
        return self.nextid - 1 - sum(1 for i in self.deleted if 1 <= i < self.nextid)

    def ids(self) -> Iterator[int]:
        # a generator, not a list: a million-row file costs no id list
        return (i for i in range(1, self.nextid) if i not in self.deleted)

    def row(self, row_id: int):
        from ase.calculators.calculator import all_properties
        from ase.db.row import AtomsRow
        blob = self.txn.get(str(row_id).encode("ascii"))
        if blob is None:
            raise ValueError(f"{self.path}: row id {row_id} is missing (nextid is "
                             f"{self.nextid} and it is not among the deleted ids)")
        dct = self._value(str(row_id).encode("ascii"), blob)
        if not isinstance(dct, dict) or "numbers" not in dct:
            raise ValueError(f"{self.path}: row id {row_id} is not an ASE row "
                             f"(keys: {sorted(dct) if isinstance(dct, dict) else type(dct).__name__})")
        for key in all_properties:  # as ase-db-backends does: properties as arrays
            if isinstance(dct.get(key), list):
                dct[key] = np.array(dct[key])
        dct["id"] = row_id
        return AtomsRow(dct)

    def release(self) -> None:
        """Close and reopen the memory map: the pages read so far leave the
        resident set (they stay in the page cache, the kernel's to keep or drop)."""
        lmdb = _import_lmdb()
        self.txn.abort()
        self.env.close()
        self.env = lmdb.open(str(self.path), subdir=False, readonly=True, lock=False,
                             readahead=False, meminit=False, max_readers=1)
        self.txn = self.env.begin(buffers=False)

    def close(self):
        self.txn.abort()
        self.env.close()


class _AseDb:
    """An SQLite/PostgreSQL database through ase.db, or a JSON one decoded once."""

    def __init__(self, name: str):
        self.name = name
        self.kind = _asedb_kind(name)
        if self.kind is None:
            raise ValueError(f"{name}: not an ASE database (SQLite with ASE's 'systems' "
                             "table, ASE JSON, or a postgresql:// URL)")
        if self.kind == "json":
            from ase.io.jsonio import decode
            try:
                with open(name, encoding="utf-8") as handle:
                    self.rows = decode(handle.read())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{name}: not a readable ASE JSON database ({exc})") from None
            if not isinstance(self.rows, dict) or ("ids" not in self.rows and 1 not in self.rows):
                keys = sorted(map(str, self.rows)) if isinstance(self.rows, dict) else []
                raise ValueError(f"{name}: not an ASE JSON database: no 'ids' and no row 1 "
                                 f"(keys: {keys[:20]})")
            self.id_list = [int(i) for i in self.rows.get("ids", [1])]
            self.metadata = self.rows.get("metadata", {})
            return
        import ase.db
        try:
            self.db = ase.db.connect(name, type="db" if self.kind == "sqlite" else "postgresql",
                                     create_indices=False, use_lock_file=False)
            self.metadata = self.db.metadata
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{name}: not a readable SQLite ASE database ({exc})") from None

    @property
    def count(self) -> int:
        if self.kind == "json":
            return len(self.id_list)
        try:
            return self.db.count()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.name}: not a readable SQLite ASE database ({exc})") from None

    def ids(self) -> Iterator[int]:
        if self.kind == "json":
            yield from self.id_list
            return
        try:
            with self.db.managed_connection() as con:
                cursor = con.cursor()
                cursor.execute("SELECT id FROM systems ORDER BY id")
                if not hasattr(cursor, "fetchmany"):
                    # ase-db-backends' PostgreSQL cursor wrapper has only fetchall
                    # (psycopg2 holds the result client-side anyway: 8 bytes an id)
                    yield from (int(row_id) for (row_id,) in cursor.fetchall())
                    return
                while True:
                    chunk = cursor.fetchmany(4096)  # sqlite3 streams the ids
                    if not chunk:
                        return
                    for (row_id,) in chunk:
                        yield int(row_id)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.name}: not a readable SQLite ASE database ({exc})") from None

    def row(self, row_id: int):
        if self.kind == "json":
            from ase.db.row import AtomsRow
            if row_id not in self.rows:
                raise ValueError(f"{self.name}: row id {row_id} is listed in 'ids' but missing")
            return AtomsRow({**self.rows[row_id], "id": row_id})
        try:
            return self.db.get(id=row_id)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.name}: row id {row_id} cannot be read ({exc})") from None
        except KeyError:
            raise ValueError(f"{self.name}: row id {row_id} vanished while reading") from None

    def close(self):
        pass


def _has_lmdb_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except OSError:
        return False
    return len(head) == 24 and struct.unpack_from("<I", head, 16)[0] == _LMDB_MAGIC


def _lmdb_files(path: Path) -> list[Path]:
    """The ASE-LMDB files of a file or directory, in reading order."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in
                       (".aselmdb", ".lmdb") and _has_lmdb_magic(p))
        if not files:
            listing = sorted(p.name for p in path.iterdir())[:20]
            raise ValueError(f"{path}: a directory without *.aselmdb files "
                             f"(it holds: {listing})")
        return files
    return [path]


@contextmanager
def _lmdb_sources(path: Path):
    opened = []
    try:
        for file in _lmdb_files(path):
            opened.append(_LmdbFile(file))
        yield opened
    finally:
        for source in opened:
            source.close()


@contextmanager
def _asedb_sources(path):
    source = _AseDb(_name(path))
    try:
        yield [source]
    finally:
        source.close()


def _name(path) -> str:
    text = str(path)
    for scheme in _POSTGRES:  # Path() folds 'postgresql://' into 'postgresql:/'
        if text.startswith(scheme) and not text.startswith(scheme + "//"):
            text = scheme + "//" + text[len(scheme):].lstrip("/")
    return text


def _asedb_kind(name: str) -> str | None:
    if name.startswith(_POSTGRES):
        return "postgresql"
    path = Path(name)
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(_SQLITE_MAGIC):
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = {row[0] for row in
                          con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            finally:
                con.close()
        except sqlite3.DatabaseError:
            return None
        return "sqlite" if {"systems", "information"} <= tables else None
    return "json" if _JSON_START.match(head) else None


# ---------------------------------------------------------------- rows -> samples


def _is_gradient(key: str) -> bool:
    key = key.lower()
    return key in ("gradient", "gradients") or key.endswith(("_grad", "_gradient", "_gradients"))


def _stores(row) -> tuple[dict, dict]:
    data = row.data  # decoded lazily by AtomsRow (SQLite keeps it as a blob)
    return (dict(data) if isinstance(data, dict) else {}), dict(row.key_value_pairs)


def _available(row) -> dict:
    data, kvp = _stores(row)
    return {"calculator": [k for k in _CALCULATOR if row.get(k) is not None],
            "key_value_pairs": sorted(kvp), "data": sorted(data)}


def _find(row, key: str | None, defaults: tuple[str, ...], calculator: tuple[str, ...]):
    """(value, key it came from or None for a calculator result, found)."""
    data, kvp = _stores(row)
    if key is not None:
        if key in kvp:
            return kvp[key], key, True
        if key in data:
            return data[key], key, True
        if key in _CALCULATOR and row.get(key) is not None:
            return row.get(key), None, True
        return None, key, False
    for name in calculator:
        if row.get(name) is not None:
            return row.get(name), None, True
    for store in (data, kvp):
        for name in defaults:
            if name in store:
                return store[name], name, True
    return None, None, False


def _finite_or_none(value):
    array = np.asarray(value, dtype=np.float64)
    return array if np.isfinite(array).all() else None


def _row_sample(row, position: int, scale: _Scale, options: ReadOptions, where: str) -> Sample:
    keys = options.keys
    energy, energy_from, _ = _find(row, keys.energy, ENERGY_KEYS, ("energy", "free_energy"))
    forces, forces_from, _ = _find(row, keys.forces, FORCES_KEYS, ("forces",))
    stress, stress_from, _ = _find(row, keys.stress, STRESS_KEYS, ("stress",))
    if energy is not None:
        energy = _finite_or_none(energy)
        if energy is not None:
            if energy.size != 1:
                raise ValueError(f"{where}: energy has shape {energy.shape}; expected one number")
            energy = float(energy.reshape(-1)[0]) * scale.factor("energy", energy_from)
    if forces is not None:
        forces = _finite_or_none(forces)
        if forces is not None:
            sign = -1.0 if forces_from is not None and _is_gradient(forces_from) else 1.0
            forces = sign * scale.factor("forces", forces_from) * forces
    if stress is not None:
        stress = _finite_or_none(stress)
        if stress is not None:
            stress = stress * scale.factor("stress", stress_from)
    data, kvp = _stores(row)
    charge = spin = None
    for names, target in ((_CHARGE_KEYS, "charge"), (_SPIN_KEYS, "spin")):
        for store in (data, kvp):
            found = next((store[n] for n in names if n in store), None)
            if found is not None:
                found = np.asarray(found, dtype=np.float64)
                if found.size != 1:
                    break  # per-atom values under that name are not a total: unknown
                value = float(found.reshape(-1)[0])
                if math.isfinite(value):
                    if target == "charge":
                        charge = value
                    else:
                        spin = value
                break
    try:
        return Sample(numbers=row.numbers, positions=np.asarray(row.positions) * scale.length,
                      cell=np.asarray(row.cell, dtype=np.float64) * scale.length, pbc=row.pbc,
                      energy=energy, forces=forces, stress=stress, dataset=options.dataset,
                      index=position, charge=charge, spin=spin)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _positions(sources) -> Iterator[tuple[int, object, int]]:
    """(position, source, row id) over every row, in database order."""
    position = 0
    for source in sources:
        for row_id in source.ids():
            yield position, source, row_id
            position += 1


def _check_keys(sources, options: ReadOptions):
    """An explicit key must exist in at least one of the first rows (the same rows
    on every rank); rows without it later are masked."""
    wanted = {label: key for label, key in (("energy", options.keys.energy),
                                            ("forces", options.keys.forces),
                                            ("stress", options.keys.stress)) if key is not None}
    if not wanted:
        return
    first = None
    for position, source, row_id in _positions(sources):
        if position >= _PROBE_ROWS or not wanted:
            break
        row = source.row(row_id)
        first = first or (source, row_id, row)
        for label, key in list(wanted.items()):
            if _find(row, key, (), ())[2]:
                del wanted[label]
    if wanted and first is not None:
        source, row_id, row = first
        label, key = next(iter(wanted.items()))
        raise KeyError(f"{source.path if hasattr(source, 'path') else source.name}: no {label} "
                       f"under the key {key!r} in the first {_PROBE_ROWS} rows; row id {row_id} "
                       f"has {_available(row)}")


def _read(opener, path, options: ReadOptions | None, rank: int, size: int):
    options = options or ReadOptions()
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} of {size}: expected 0 <= rank < size")
    with opener(path) as sources:
        _check_keys(sources, options)
        scales = {id(s): _scale(s.metadata, options, str(getattr(s, "path", None) or s.name))
                  for s in sources}
        previous = None
        for position, source, row_id in _positions(sources):
            if source is not previous:  # a file finished: its pages leave the resident set
                if previous is not None and hasattr(previous, "release"):
                    previous.release()
                previous = source
            elif position % _REMAP_ROWS == 0 and hasattr(source, "release"):
                source.release()  # the rows of every rank share pages: bound them by rows too
            if position % size != rank:
                continue  # another rank's row: not decoded
            label = getattr(source, "path", None) or source.name
            where = f"{label}: row id {row_id} (position {position})"
            yield position, _row_sample(source.row(row_id), position, scales[id(source)],
                                        options, where)


def read_aselmdb(path, options: ReadOptions | None = None, rank: int = 0, size: int = 1
                 ) -> Iterator[tuple[int, Sample]]:
    """Rows of an ASE-LMDB file or directory as ``(position, Sample)`` in eV, Å,
    eV/Å, eV/Å³ for positions ``k % size == rank``; see the module docstring."""
    yield from _read(_lmdb_sources, Path(path), options, rank, size)


def read_asedb(path, options: ReadOptions | None = None, rank: int = 0, size: int = 1
               ) -> Iterator[tuple[int, Sample]]:
    """Rows of an ASE SQLite/JSON database or a ``postgresql://`` URL as
    ``(position, Sample)``; see the module docstring."""
    yield from _read(_asedb_sources, path, options, rank, size)


def _inspect(opener, path, name: str) -> dict:
    with opener(path) as sources:
        first = None
        for _, source, row_id in _positions(sources):
            first = (row_id, source.row(row_id))
            break
        metadata = sources[0].metadata
        units = metadata.get("_property_unit_dict") if isinstance(metadata, dict) else None
        return {
            "format": name,
            "files": [str(getattr(s, "path", None) or s.name) for s in sources],
            "backend": getattr(sources[0], "kind", "aselmdb"),
            "num_structures": sum(s.count for s in sources),
            "metadata": json.loads(json.dumps(metadata, default=str)),
            "units": {"distance": (metadata or {}).get("_distance_unit", "Å (ASE)"),
                      "properties": units or "eV, eV/Å, eV/Å^3 (ASE; no metadata)"},
            "first_row": None if first is None else {
                "id": first[0], "num_atoms": len(first[1].numbers), **_available(first[1])},
        }


def _sniff_aselmdb(path: Path) -> bool:
    path = Path(path)
    if path.is_dir():
        try:
            return any(_sniff_aselmdb(p) for p in _lmdb_files(path)[:1])
        except ValueError:
            return False
    if not _has_lmdb_magic(path):
        return False
    try:
        source = _LmdbFile(path)
    except ImportError:
        return path.suffix == ".aselmdb"  # then read() says which package to install
    except ValueError:
        return False
    source.close()
    return True


def _count(opener):
    def count(path, options=None) -> int:
        with opener(path) as sources:
            return sum(s.count for s in sources)
    return count


ASELMDB = register(Format(
    name="aselmdb",
    description="ASE-LMDB (ase-db-backends; fairchem v2: OMat24, OMol25, ODAC23, OC25): "
                "a .aselmdb file or a directory of them",
    suffixes=(".aselmdb",),
    sniff=_sniff_aselmdb,
    inspect=lambda path: _inspect(_lmdb_sources, Path(path), "aselmdb"),
    read=read_aselmdb,
    count=_count(_lmdb_sources),
    needs=("ase", "lmdb"),
))

ASEDB = register(Format(
    name="asedb",
    description="ASE database (ase.db): SQLite .db, JSON .json, postgresql:// URL; units "
                "from schnetpack/nabla2DFT metadata",
    suffixes=(".db", ".json"),
    sniff=lambda path: _asedb_kind(_name(path)) is not None,
    inspect=lambda path: _inspect(_asedb_sources, path, "asedb"),
    read=read_asedb,
    count=_count(_asedb_sources),
    needs=("ase",),
))

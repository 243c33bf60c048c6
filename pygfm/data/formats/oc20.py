"""Open Catalyst OC20 / OC22 files as FAIR Chem publishes them (issue #16).

Two formats:

``oc20-lmdb``
    The legacy LMDB of pickled PyG ``Data`` objects that fairchem's (formerly
    ocp's) ``LmdbDataset`` reads: one ``*.lmdb`` file (LMDB ``subdir=False``) or a
    folder of them read in sorted name order, as ``LmdbDataset`` does. Keys are the
    ASCII indices ``b"0"``, ``b"1"``, ... of each file; a key ``b"length"`` holds
    the pickled count (scripts/preprocess_ef.py writes it; without it the count is
    the number of entries). Fields (ocpmodels AtomsToGraphs and the IS2RE writers):
    ``pos`` [N,3] Å, ``cell`` [1,3,3] Å, ``atomic_numbers`` [N] (float), ``natoms``,
    ``y`` or ``energy`` (eV), ``force`` or ``forces`` [N,3] (eV/Å), ``fixed``,
    ``tags``, ``sid``, ``fid``; IS2RE/IS2RS entries hold ``y_init``, ``y_relaxed``
    and ``pos_relaxed`` instead of ``y``/``force``. PyG 1.x pickled ``Data`` with
    its fields in ``__dict__``; PyG 2.x keeps them in ``_store`` (a
    ``GlobalStorage``), the difference fairchem's ``pyg2_data_transform`` bridges.
    Both are read here.

``oc20-extxyz``
    The S2EF distribution: ``N.extxyz`` (or ``N.extxyz.xz``, LZMA) trajectories of
    5,000 frames with a sidecar ``N.txt`` (or ``N.txt.xz``) whose line *i* is
    ``system_id,frame_number,reference_energy`` for frame *i* (FAIR Chem's
    DATASET.md). Frames carry ``Properties=species:S:1:pos:R:3:move_mask:L:1:
    tags:I:1:forces:R:3`` and ``energy=``, ``free_energy=`` (eV) in the comment
    line. A folder is read in numeric order of ``N``; one file may be given too.

Energies (read this before training):

* OC20 S2EF and IS2RE **LMDBs hold adsorption energies**: ``y`` is the DFT total
  energy minus the clean-slab and gas-phase references (preprocess_ef.py subtracts
  the sidecar's ``reference_energy`` with ``--ref-energy``; fairchem's FAQ: "the
  OC20 S2EF/IS2RE LMDBs have adsorption energies"). OC22 LMDBs hold total
  energies. The file does not say which, so name the dataset accordingly
  (``oc20-s2ef-ads``, ``oc22-total``). Turning OC20 adsorption energies back into
  totals needs ``oc20_ref.pkl`` and is not done here.
* ``oc20-extxyz`` level ``total`` (default) is the frame's ``energy`` (DFT total,
  eV); level ``adsorption`` is ``energy - reference_energy``, the LMDB's ``y``.
* IS2RE LMDB, level ``relaxed`` (default where ``pos_relaxed`` exists):
  energy ``y_relaxed`` at ``pos_relaxed`` (the pair a DFT calculation gave);
  level ``initial``: ``y_init`` at ``pos``. Neither has forces. ``y_relaxed``
  with the initial ``pos`` is the IS2RE *task* target, not a label of that
  structure, so it is never paired with ``pos``.

Safety: a pickle can run any code when loaded. Entries are unpickled by
:class:`RestrictedUnpickler`, which resolves only the PyG ``Data``/storage classes
(to stand-ins: torch_geometric need not be installed), torch's tensor rebuild
functions (tensor bytes are loaded with ``torch.load(weights_only=True)``), numpy
arrays and builtin containers; any other class is a ValueError naming it.

Tags (0 subsurface, 1 surface, 2 adsorbate), ``fixed``, ``sid`` and ``fid`` are
not carried: a :class:`~pygfm.data.Sample` has no fields for them. Cells are
periodic in all three directions (OC20 slabs have vacuum along z inside the cell).
"""

from __future__ import annotations

import io
import lzma
import pickle
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..sample import Sample
from . import Format, ReadOptions, register

__all__ = ["RestrictedUnpickler", "loads_restricted"]

_LENGTH_KEY = b"length"
_ENERGY_KEYS = ("y", "energy")
_FORCES_KEYS = ("force", "forces")
_LEVELS_IS2RE = ("relaxed", "initial")
_LEVELS_EXTXYZ = ("total", "adsorption")


# ---------------------------------------------------------------- unpickling

class _PygData:
    """Stand-in for ``torch_geometric.data.Data`` (any PyG version): keeps the
    pickled state; :meth:`fields` gives the stored attributes."""

    def __setstate__(self, state):
        self.state = state

    def fields(self) -> dict:
        state = getattr(self, "state", None)
        if not isinstance(state, dict):
            return {}
        store = state.get("_store")
        # PyG 2.x: attributes live in a GlobalStorage; PyG 1.x: in __dict__
        mapping = store.mapping() if isinstance(store, _PygStorage) else state
        return {key: value for key, value in mapping.items()
                if value is not None and not key.startswith("_")}


class _PygStorage:
    """Stand-in for PyG 2.x ``GlobalStorage`` (state ``_mapping``, ``_parent``)."""

    def __setstate__(self, state):
        self.state = state

    def mapping(self) -> dict:
        state = getattr(self, "state", None)
        mapping = state.get("_mapping") if isinstance(state, dict) else None
        return dict(mapping) if isinstance(mapping, dict) else {}


class _PygMarker:
    """Stand-in for classes PyG pickles only as references (DataEdgeAttr, ...)."""


def _load_tensor_bytes(data: bytes):
    # torch pickles a storage as torch.save() bytes; weights_only=True keeps the
    # inner unpickling restricted too
    import torch
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _torch_global(name: str):
    import torch._utils
    return getattr(torch._utils, name)


def _numpy_global(module: str, name: str):
    import importlib
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        # numpy 2 renamed numpy.core to numpy._core; files pickled with either exist
        other = module.replace("numpy._core", "numpy.core") if "_core" in module \
            else module.replace("numpy.core", "numpy._core")
        return getattr(importlib.import_module(other), name)


_PYG = {("torch_geometric.data.data", "Data"): _PygData,
        ("torch_geometric.data", "Data"): _PygData,
        ("torch_geometric.data.storage", "GlobalStorage"): _PygStorage,
        ("torch_geometric.data.storage", "BaseStorage"): _PygStorage,
        ("torch_geometric.data.data", "DataEdgeAttr"): _PygMarker,
        ("torch_geometric.data.data", "DataTensorAttr"): _PygMarker}
_TORCH = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}
_NUMPY = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numpy", "ndarray"),
          ("numpy", "dtype")}
_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str",
             "bytes", "bytearray", "bool", "slice"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what OC20/OC22 LMDB entries hold (see the
    module docstring); anything else raises ValueError naming the class."""

    where = "pickle"

    def find_class(self, module: str, name: str):
        if (module, name) in _PYG:
            return _PYG[(module, name)]
        if (module, name) in _TORCH:
            return _torch_global(name)
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_tensor_bytes
        if module == "collections" and name == "OrderedDict":
            import collections
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            import builtins
            return getattr(builtins, name)
        if module.startswith("numpy") and (module.rsplit(".", 1)[-1], name) in _NUMPY:
            return _numpy_global(module, name)
        raise ValueError(f"{self.where}: refusing to unpickle {module}.{name}: an OC20 LMDB "
                         "entry holds only torch_geometric Data, tensors, numpy arrays and "
                         "builtin containers (unpickling other classes could run code)")


def loads_restricted(data: bytes, where: str = "pickle"):
    """``pickle.loads`` through :class:`RestrictedUnpickler`; a truncated or foreign
    pickle is a ValueError naming ``where``."""
    unpickler = RestrictedUnpickler(io.BytesIO(data))
    unpickler.where = where
    try:
        return unpickler.load()
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad entry
        raise ValueError(f"{where}: not a readable pickle ({type(exc).__name__}: {exc})") \
            from None


# ---------------------------------------------------------------- LMDB

def _lmdb():
    try:
        import lmdb
    except ImportError:
        raise ImportError("reading OC20 LMDB files needs the 'lmdb' package "
                          "(pip install lmdb)") from None
    return lmdb


def _lmdb_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.glob("*.lmdb") if p.is_file())
        if not files:
            raise ValueError(f"{path}: no *.lmdb files in this folder")
        return files
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    return [path]


class _LmdbFile:
    """One opened LMDB file: its entry count and entries by index."""

    def __init__(self, path: Path):
        self.path = path
        self.txn = None
        try:
            self.env = _lmdb().open(str(path), subdir=False, readonly=True, lock=False,
                                    readahead=False, meminit=False, max_readers=1)
        except Exception as exc:  # noqa: BLE001 - lmdb.Error subclasses
            raise ValueError(f"{path}: not an LMDB file ({type(exc).__name__}: {exc})") \
                from None
        with self.env.begin() as txn:
            raw = txn.get(_LENGTH_KEY)
            entries = self.env.stat()["entries"]
        if raw is not None:
            length = loads_restricted(raw, f"{path}, key 'length'")
            if not isinstance(length, (int, np.integer)) or length < 0:
                raise ValueError(f"{path}: key 'length' holds {length!r}, not a count")
            self.length = int(length)
        else:
            self.length = int(entries)

    def keys_sample(self, limit: int = 8) -> list[str]:
        with self.env.begin() as txn:
            keys = []
            for key in txn.cursor().iternext(values=False):
                keys.append(bytes(key).decode("ascii", "replace"))
                if len(keys) == limit:
                    break
        return keys

    def fields(self, index: int) -> dict:
        """The stored fields of entry ``index`` (tensors as numpy arrays)."""
        if self.txn is None:  # one read transaction serves every entry of the file
            self.txn = self.env.begin()
        raw = self.txn.get(str(index).encode("ascii"))
        if raw is None:
            raise KeyError(f"{self.path}: no entry under the key {str(index)!r} (the file "
                           f"counts {self.length}; keys there include {self.keys_sample()})")
        where = f"{self.path}, key {str(index)!r}"
        obj = loads_restricted(bytes(raw), where)
        if not isinstance(obj, _PygData):
            raise ValueError(f"{where}: holds a {type(obj).__name__}, not a torch_geometric "
                             "Data object")
        return {key: _to_numpy(value) for key, value in obj.fields().items()}

    def close(self):
        if self.txn is not None:
            self.txn.abort()
            self.txn = None
        self.env.close()


def _to_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _first(fields: dict, names, where: str, what: str, required: bool):
    for name in names:
        if name in fields:
            return fields[name]
    if required:
        raise KeyError(f"{where}: no {what} (looked for {', '.join(names)}; the entry "
                       f"holds {sorted(fields)})")
    return None


def _is2re(fields: dict) -> bool:
    return "y_relaxed" in fields or "y_init" in fields


def _lmdb_levels(path) -> list[str]:
    """``relaxed``/``initial`` for an IS2RE/IS2RS file, [] for S2EF."""
    files = _lmdb_files(Path(path))
    db = _LmdbFile(files[0])
    try:
        if db.length == 0:
            return []
        fields = db.fields(0)
    finally:
        db.close()
    if not _is2re(fields):
        return []
    return list(_LEVELS_IS2RE) if "pos_relaxed" in fields else ["initial"]


def _energy_value(value, where: str) -> float | None:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size != 1:
        raise ValueError(f"{where}: energy has {array.size} values, expected 1")
    return float(array[0]) if np.isfinite(array[0]) else None


def _lmdb_sample(fields: dict, options: ReadOptions, level: str | None, where: str,
                 position: int) -> Sample:
    units = options.units
    length_factor = 1.0 if units is None else units.length_factor
    energy_factor = 1.0 if units is None else units.energy_factor
    forces_factor = 1.0 if units is None else units.forces_factor
    keys = options.keys
    numbers = np.rint(np.asarray(_first(fields, ("atomic_numbers",), where,
                                        "atomic numbers", True), dtype=np.float64))
    energy = forces = None
    if level == "relaxed":
        pos = _first(fields, ("pos_relaxed",), where, "relaxed positions (pos_relaxed; "
                     "use --level initial)", True)
        energy = _first(fields, (keys.energy or "y_relaxed",), where, "relaxed energy", True)
    elif level == "initial":
        pos = _first(fields, ("pos",), where, "positions", True)
        energy = _first(fields, (keys.energy or "y_init",), where, "initial energy", True)
    else:
        pos = _first(fields, ("pos",), where, "positions", True)
        energy = _first(fields, (keys.energy,) if keys.energy else _ENERGY_KEYS, where,
                        "energy", keys.energy is not None)
        forces = _first(fields, (keys.forces,) if keys.forces else _FORCES_KEYS, where,
                        "forces", keys.forces is not None)
    cell = np.asarray(fields.get("cell", np.zeros((3, 3))), dtype=np.float64).reshape(3, 3)
    pbc = fields.get("pbc")
    pbc = (np.asarray(pbc, dtype=bool).reshape(-1)[:3] if pbc is not None
           else np.full(3, bool(np.abs(cell).sum() > 0)))
    energy = None if energy is None else _energy_value(energy, where)
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64) * forces_factor
        if not np.isfinite(forces).all():  # missing values are masked, never stored
            forces = None
    return Sample(numbers=numbers, positions=np.asarray(pos, dtype=np.float64) * length_factor,
                  cell=cell * length_factor, pbc=pbc,
                  energy=None if energy is None else energy * energy_factor, forces=forces,
                  dataset=options.dataset, index=position)


def _lmdb_level(path: Path, options: ReadOptions) -> str | None:
    levels = _lmdb_levels(path)
    level = options.level
    if level is None:
        return levels[0] if levels else None
    if level not in levels:
        raise ValueError(f"{path}: no level {level!r}; this file has "
                         f"{levels or 'one level (an S2EF file: energy y, forces force)'}")
    return level


def _read_lmdb(path, options: ReadOptions | None = None, rank: int = 0,
               size: int = 1) -> Iterator[tuple[int, Sample]]:
    """Entries of an OC20/OC22 LMDB (file or folder) as Samples in eV, Å, eV/Å.
    Positions count entries over the files in sorted order; rank r fetches only
    keys k with k % size == r (random access by key, balanced by index)."""
    path = Path(path)
    options = options or ReadOptions()
    level = _lmdb_level(path, options)
    offset = 0
    for file in _lmdb_files(path):
        db = _LmdbFile(file)
        try:
            first = (rank - offset) % size
            for index in range(first, db.length, size):
                where = f"{file}, key {str(index)!r}"
                fields = db.fields(index)
                yield offset + index, _lmdb_sample(fields, options, level, where,
                                                   offset + index)
            offset += db.length
        finally:
            db.close()


def _count_lmdb(path, options=None) -> int:
    total = 0
    for file in _lmdb_files(Path(path)):
        db = _LmdbFile(file)
        total += db.length
        db.close()
    return total


def _sniff_lmdb(path: Path) -> bool:
    path = Path(path)
    files = sorted(path.glob("*.lmdb")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        return False
    with files[0].open("rb") as handle:
        # LMDB's meta page holds the magic 0xBEEFC0DE (little-endian) at byte 16
        if handle.read(20)[16:20] != b"\xde\xc0\xef\xbe":
            return False
    env = _lmdb().open(str(files[0]), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            raw = txn.get(b"0")
    finally:
        env.close()
    # a pickle (protocol >= 2 starts with 0x80) naming PyG's Data class
    return raw is not None and raw[:1] == b"\x80" and b"torch_geometric" in bytes(raw[:4096])


def _inspect_lmdb(path) -> dict:
    path = Path(path)
    files = _lmdb_files(path)
    db = _LmdbFile(files[0])
    try:
        fields = db.fields(0) if db.length else {}
    finally:
        db.close()
    return {"format": "oc20-lmdb", "files": [str(f) for f in files],
            "num_structures": _count_lmdb(path),
            "fields": {key: list(np.shape(value)) for key, value in fields.items()},
            "levels": _lmdb_levels(path),
            "energy": "adsorption energy for OC20 S2EF/IS2RE, total energy for OC22 (eV)"}


# ---------------------------------------------------------------- extxyz + txt

_XYZ_SUFFIXES = (".extxyz.xz", ".extxyz")


def _open_text(path: Path):
    return lzma.open(path, "rt") if path.suffix == ".xz" else path.open("r")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _XYZ_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _sidecar(path: Path) -> Path | None:
    for suffix in (".txt", ".txt.xz"):
        candidate = path.with_name(_stem(path) + suffix)
        if candidate.is_file():
            return candidate
    return None


def _xyz_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path}: no such file or folder")
    files = [p for p in path.iterdir() if p.is_file() and p.name.endswith(_XYZ_SUFFIXES)]
    if not files:
        raise ValueError(f"{path}: no *.extxyz or *.extxyz.xz files in this folder")

    def order(p: Path):
        stem = _stem(p)
        return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)
    return sorted(files, key=order)


def _frames(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(frame index, the frame's lines) without parsing them: the atom count line
    says how many lines to take, so other ranks' frames are skipped cheaply."""
    with _open_text(path) as handle:
        index = 0
        while True:
            head = handle.readline()
            if not head:
                return
            if not head.strip():
                continue
            try:
                natoms = int(head.split()[0])
            except ValueError:
                raise ValueError(f"{path}, frame {index}: expected an atom count, found "
                                 f"{head.strip()[:60]!r}") from None
            lines = [head]
            for _ in range(natoms + 1):
                line = handle.readline()
                if not line:
                    raise ValueError(f"{path}, frame {index}: the file ends inside the frame "
                                     f"({natoms} atoms announced; truncated?)")
                lines.append(line)
            yield index, lines
            index += 1


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _sidecar_rows(path: Path | None) -> Iterator[list[str] | None]:
    if path is None:
        while True:
            yield None
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                yield [part.strip() for part in line.split(",")]
    while True:
        yield None  # fewer lines than frames: reported where a frame needs one


def _frame_energy(atoms, key: str, where: str) -> float | None:
    results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
    if key in results:
        value = results[key]
    elif key in atoms.info:
        value = atoms.info[key]
    else:
        raise KeyError(f"{where}: no energy under the key {key!r} (the frame has "
                       f"{sorted(set(results) | set(atoms.info))})")
    value = float(value)
    return value if np.isfinite(value) else None


def _extxyz_levels(path) -> list[str]:
    return list(_LEVELS_EXTXYZ)


def _read_extxyz(path, options: ReadOptions | None = None, rank: int = 0,
                 size: int = 1) -> Iterator[tuple[int, Sample]]:
    """Frames of OC20/OC22 S2EF ``*.extxyz[.xz]`` files with their ``*.txt[.xz]``
    sidecars as Samples in eV, Å, eV/Å (level ``total``: the DFT energy; level
    ``adsorption``: energy - reference_energy)."""
    import ase.io
    path = Path(path)
    options = options or ReadOptions()
    level = options.level or "total"
    if level not in _LEVELS_EXTXYZ:
        raise ValueError(f"{path}: no level {level!r}; OC20 extxyz levels are "
                         f"{list(_LEVELS_EXTXYZ)}")
    units = options.units
    energy_key = options.keys.energy or "energy"
    forces_key = options.keys.forces or "forces"
    position = 0
    for file in _xyz_files(path):
        sidecar = _sidecar(file)
        if level == "adsorption" and sidecar is None:
            raise ValueError(f"{file}: level 'adsorption' needs the sidecar "
                             f"{_stem(file)}.txt (system_id,frame_number,reference_energy)")
        rows = _sidecar_rows(sidecar)
        for index, lines in _frames(file):
            row = next(rows)
            mine = position % size == rank
            if mine:
                where = f"{file}, frame {index}"
                try:
                    atoms = ase.io.read(io.StringIO("".join(lines)), format="extxyz")
                except Exception as exc:  # noqa: BLE001 - ase raises many kinds
                    raise ValueError(f"{where}: not a readable extxyz frame "
                                     f"({type(exc).__name__}: {exc})") from None
                energy = _frame_energy(atoms, energy_key, where)
                if level == "adsorption" and energy is not None:
                    if row is None or len(row) < 3 or not _NUMBER.match(row[2]):
                        raise ValueError(f"{sidecar}, line {index + 1}: expected "
                                         f"system_id,frame_number,reference_energy for {where}"
                                         f", found {row!r}")
                    energy -= float(row[2])
                forces = atoms.calc.results.get(forces_key) if atoms.calc is not None else None
                if forces is None:
                    forces = atoms.arrays.get(forces_key)
                if forces is not None and not np.isfinite(forces).all():
                    forces = None  # missing values are masked, never stored
                factor_e = 1.0 if units is None else units.energy_factor
                factor_f = 1.0 if units is None else units.forces_factor
                factor_l = 1.0 if units is None else units.length_factor
                sample = Sample(numbers=atoms.numbers, positions=atoms.positions * factor_l,
                                cell=atoms.cell.array * factor_l, pbc=atoms.pbc,
                                energy=None if energy is None else energy * factor_e,
                                forces=None if forces is None else np.asarray(forces) * factor_f,
                                dataset=options.dataset, index=position)
                yield position, sample
            position += 1


def _count_extxyz(path, options=None) -> int | None:
    total = 0
    for file in _xyz_files(Path(path)):
        sidecar = _sidecar(file)
        if sidecar is None:
            return None
        with _open_text(sidecar) as handle:
            total += sum(1 for line in handle if line.strip())
    return total


def _sniff_extxyz(path: Path) -> bool:
    path = Path(path)
    try:
        file = _xyz_files(path)[0]
    except ValueError:
        return False
    if not file.name.endswith(_XYZ_SUFFIXES) or _sidecar(file) is None:
        return False
    with _open_text(file) as handle:
        handle.readline()
        comment = handle.readline()
    # OC20's frames mark fixed atoms in move_mask and adsorbate/surface in tags
    return "move_mask" in comment and "tags" in comment


def _inspect_extxyz(path) -> dict:
    path = Path(path)
    files = _xyz_files(path)
    with _open_text(files[0]) as handle:
        handle.readline()
        comment = handle.readline().strip()
    sidecar = _sidecar(files[0])
    first_row = None
    if sidecar is not None:
        with _open_text(sidecar) as handle:
            first_row = handle.readline().strip()
    return {"format": "oc20-extxyz", "files": [str(f) for f in files],
            "num_structures": _count_extxyz(path), "comment_line": comment,
            "sidecar_first_line": first_row, "levels": list(_LEVELS_EXTXYZ),
            "energy": "total: DFT energy (eV); adsorption: energy - reference_energy"}


register(Format(
    name="oc20-lmdb",
    description="OC20/OC22 LMDB of pickled PyG Data (S2EF: y, force; IS2RE: y_init/"
                "y_relaxed, levels initial/relaxed); OC20 energies are adsorption energies",
    suffixes=(".lmdb",), sniff=_sniff_lmdb, inspect=_inspect_lmdb, read=_read_lmdb,
    levels=_lmdb_levels, count=_count_lmdb, needs=("lmdb", "torch")))

register(Format(
    name="oc20-extxyz",
    description="OC20/OC22 S2EF *.extxyz[.xz] with *.txt sidecars (levels total, "
                "adsorption = energy - reference_energy)",
    suffixes=(".extxyz", ".extxyz.xz"), sniff=_sniff_extxyz, inspect=_inspect_extxyz,
    read=_read_extxyz, levels=_extxyz_levels, count=_count_extxyz, needs=("ase",)))

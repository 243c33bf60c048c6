"""Readers of datasets as their authors publish them (issue #16).

Each family of files is a :class:`Format`: it recognises its files by their
content (:attr:`Format.sniff`), describes one for a user choosing keys
(:attr:`Format.inspect`), lists the levels of theory a file holds side by side
(:attr:`Format.levels`) and reads it as :class:`~pygfm.data.Sample` objects in eV,
Å, eV/Å and eV/Å³ (:attr:`Format.read`). ``pygfm-data convert`` picks the format
with :func:`detect` (or ``--format NAME``), and ``pygfm-data formats`` lists
:data:`FORMATS`.

Work is shared between MPI ranks by structure position: ``read(..., rank=r,
size=P)`` yields ``(position, sample)`` for the positions ``k`` with ``k % P ==
r``, in increasing order, positions counting every structure of the file (and
level) in the file's order; a structure with nothing at the level read may be
skipped (write_dataset keeps the order, and the manifest says ``id_gaps``). A
reader skips the other ranks' structures without building them (an HDF5 group of a million conformers is read as array slices, so one
huge group is split across ranks too).

A reader module registers its formats with :func:`register` at import; the
modules are listed in :data:`_MODULES` and imported on first use, so that
``import pygfm`` does not import h5py, lmdb or pymatgen.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..sample import Sample
from .units import Units, parse_units

__all__ = ["Format", "FORMATS", "LabelKeys", "ReadOptions", "Units", "detect", "get_format",
           "formats", "parse_units", "register"]


@dataclass(frozen=True)
class LabelKeys:
    """Where the labels are, named as the source file names them (an HDF5 dataset
    in each group, an LMDB / ASE-db / JSON key, a dotted path into a record). None:
    the format's default. A forces key naming a gradient (``gradients``,
    ``..._grad``) gives forces = -gradient (the reader decides and says so)."""
    energy: str | None = None
    forces: str | None = None
    stress: str | None = None


@dataclass(frozen=True)
class ReadOptions:
    """What a user may choose when reading: keys, units (None: the file's own or the
    format's documented default), the level of theory (None: the only one, or the
    format's default) and the dataset name stamped on the samples (for messages)."""
    keys: LabelKeys = field(default_factory=LabelKeys)
    units: Units | None = None
    level: str | None = None
    dataset: str | None = None


@dataclass(frozen=True)
class Format:
    """One family of files.

    ``sniff(path) -> bool`` from the content (magic bytes, layout), cheap;
    ``inspect(path) -> dict`` groups/keys/units/counts for ``pygfm-data inspect``;
    ``levels(path) -> list[str]`` the levels of theory in the file ([] when one);
    ``read(path, options, rank, size) -> iterator of (position, Sample)``;
    ``count(path, options) -> int | None`` structures in the file (for progress);
    ``fidelity(path, level) -> dict | None`` the level of theory as the file (its
    level names, attributes) or its publishers state it: a fidelity object
    (``method``, ``basis``, ``code``, ``text``) that ``convert`` stores when no
    ``--fidelity`` is given; None where the file does not say.
    """
    name: str
    description: str
    suffixes: tuple[str, ...]
    sniff: Callable[[Path], bool]
    inspect: Callable[[Path], dict]
    read: Callable[..., Iterator[tuple[int, Sample]]]
    levels: Callable[[Path], list[str]] = lambda path: []
    count: Callable[..., int | None] = lambda path, options: None
    fidelity: Callable[..., dict | None] = lambda path, level: None
    needs: tuple[str, ...] = ()  # Python packages it imports (named in errors)


FORMATS: dict[str, Format] = {}
# reader modules, imported on first use (each registers its formats)
_MODULES: tuple[str, ...] = ("oc20", "hdf5", "pymatgen_json", "asedb", "tfrecord")
_loaded = False
# reader modules that failed to import: {module: why}
UNAVAILABLE: dict[str, str] = {}


def register(fmt: Format) -> Format:
    if fmt.name in FORMATS:
        raise ValueError(f"a format named {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def formats() -> dict[str, Format]:
    """Every known format, by name (importing the reader modules once)."""
    global _loaded
    if not _loaded:
        for module in _MODULES:
            try:
                importlib.import_module(f"{__name__}.{module}")
            except ImportError as error:  # one broken reader must not hide the others
                UNAVAILABLE[module] = f"{type(error).__name__}: {error}"
        _loaded = True
    return FORMATS


def get_format(name: str) -> Format:
    known = formats()
    if name not in known:
        broken = "".join(f"; reader module {m} failed to import ({why})"
                         for m, why in UNAVAILABLE.items())
        raise ValueError(f"unknown format {name!r}; known formats: "
                         f"{', '.join(sorted(known))}{broken}")
    return known[name]


def detect(path) -> Format | None:
    """The format whose ``sniff`` recognises ``path``'s content, or None (then the
    caller falls back to ase.io). A sniffer that fails counts as "not mine"."""
    path = Path(path)
    for fmt in formats().values():
        try:
            if fmt.sniff(path):
                return fmt
        except Exception:  # noqa: BLE001 - a sniffer must never stop detection
            continue
    return None

"""HDF5 datasets as their authors publish them: ANI-1, ANI-1x, ANI-2x, SPICE, QM7-X and
Transition1x (issue #16).

Every one of these stores a molecule (or a formula, or an atom count) as an HDF5
group holding the arrays of many conformers; a reader takes this rank's conformers
of a group as one strided array slice (``dataset[first::size]``, in chunks), never one
structure at a time and never the whole group. Positions count every conformer of the
file in file order (groups as h5py lists them -- by name, which is the order the
publishers' own readers see -- and conformers in the group's order); a
conformer without any label of the chosen level (NaN in the file) is skipped, and a
single NaN label is masked (None), never stored.

Layouts, units and sources (facts from the publishers' readers and READMEs):

* ``ani1`` -- ANI-1 release ``ani_gdb_s0X.h5`` (isayev/ANI1_dataset, README and
  ``readers/lib/pyanitools.py``): nested groups (``/gdb11_s01/gdb11_s01-0``) whose leaf
  holds ``coordinates`` [C, N, 3] in Å, ``energies`` [C] in hartree, ``species`` [N]
  as bytes (``b"C"``) and ``smiles``. ``coordinatesHE``/``energiesHE`` (high-energy
  conformers, left out of the ANI-1 training set by its authors) are not read.
  Level: ωB97x/6-31G(d), Gaussian 09.
* ``ani1x`` -- ``ani1x-release.h5`` (aiqm/ANI1x_datasets ``dataloader.py``; the table
  of Smith et al., Sci. Data 7, 134 (2020)): one group per formula with
  ``atomic_numbers`` [N], ``coordinates`` [C, N, 3] (Å) and, side by side, one
  ``LEVEL.energy`` [C] (hartree) per level of theory and ``LEVEL.forces`` [C, N, 3]
  (hartree/Å) where the level has forces, NaN where a conformer was not computed at
  that level. ``*.corr_energy`` datasets are correlation energies, not levels.
* ``ani2x`` -- torchani's grouped files (ANI-2x release ``ANI-2x-wB97X-631Gd.h5``
  and its siblings; torchani ``ANIDataset`` "by_num_atoms"/"by_formula" grouping):
  depth-one groups with ``species`` [C, N] atomic numbers (one row per conformer,
  since a group mixes molecules), ``coordinates`` (Å), ``energies`` (hartree),
  ``forces`` (hartree/Å). One level per file, named by the file.
* ``spice`` -- ``SPICE-*.hdf5`` (openmm/spice-dataset ``downloader/downloader.py`` and
  its README): one group per molecule with ``smiles`` [1], ``subset`` [1],
  ``atomic_numbers`` [N] int16, ``conformations`` [C, N, 3] float32 and
  ``dft_total_energy`` [C], ``dft_total_gradient`` [C, N, 3], each with a ``units``
  attribute (``bohr``, ``hartree``, ``hartree/bohr``) that this reader obeys. Forces
  are -gradient. The charge is the sum of the SMILES formal charges (else the rounded
  sum of ``mbis_charges``); the spin multiplicity is the lowest the electron count
  allows (QCArchive's default, which SPICE's calculations used). Level:
  ωB97M-D3BJ/def2-TZVPPD, Psi4.
* ``qm7x`` -- QM7-X ``1000.hdf5`` ... ``8000.hdf5`` (Hoja et al., Sci. Data 8, 43
  (2021), README on zenodo 4288677): ``/IDMOL/IDCONF`` with one conformer per group:
  ``atNUM`` [N], ``atXYZ`` [N, 3] (Å), energies [1] in eV (``ePBE0+MBD``, ``ePBE0``,
  ``eDFTB+MBD``), forces [N, 3] in eV/Å (``totFOR`` = PBE0+MBD, ``pbe0FOR``).
  Levels: ``pbe0+mbd`` (default), ``pbe0``, ``dftb+mbd`` (energies only).
* ``transition1x`` -- ``Transition1x.h5`` (Schreiner et al., Sci. Data 9, 779 (2022);
  gitlab.com/matschreiner/Transition1x ``dataloader.py``): ``/SPLIT/FORMULA/RXN`` with
  ``atomic_numbers`` [N], ``positions`` [C, N, 3] (Å), ``wB97x_6-31G(d).energy`` [C]
  (eV), ``wB97x_6-31G(d).forces`` [C, N, 3] (eV/Å), and subgroups ``reactant``,
  ``product``, ``transition_state`` of one conformer each. As the publishers' loader
  does, a reaction gives its reactant, its product, then its path (the transition
  state is the path's climbing image and is not read twice). The splits ``train``,
  ``val`` and ``test`` are read in that order; ``data`` (a partial copy of them) only
  when the file has no other split.

ANI-1, ANI-1x, ANI-2x, QM7-X and Transition1x are neutral closed-shell sets: charge
0, spin multiplicity 1 (None where the electron count is odd, which would contradict
that).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..sample import Sample
from . import Format, ReadOptions, Units, register

__all__ = ["fidelity", "HDF5_MAGIC"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# conformers of one group read per h5py call on one rank: bounds memory for a group
# of a million conformers (4096 x 60 atoms x 3 x 8 B ~ 6 MB per array)
CHUNK = 4096

ANI_UNITS = Units(energy="hartree", length="Å")  # forces hartree/Å
EV_UNITS = Units(energy="eV", length="Å")

_SYMBOLS = ("X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni "
            "Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe "
            "Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg "
            "Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg "
            "Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og").split()
_NUMBER = {symbol: z for z, symbol in enumerate(_SYMBOLS) if z}

# ANI-1x level prefixes -> fidelity (method, basis, code), from the data descriptor's table
ANI1X_LEVELS = {
    "wb97x_dz": ("ωB97x", "6-31G(d)", "Gaussian 09"),
    "wb97x_tz": ("ωB97x", "def2-TZVPP", "ORCA"),
    "ccsd(t)_cbs": ("CCSD(T)*", "CBS", "ORCA"),
    "hf_dz": ("HF", "cc-pVDZ", "ORCA"),
    "hf_tz": ("HF", "cc-pVTZ", "ORCA"),
    "hf_qz": ("HF", "cc-pVQZ", "ORCA"),
}
ANI1X_DEFAULT_LEVEL = "wb97x_dz"
# ANI-2x release files are named ANI-2x-<LEVEL>.h5
ANI2X_FILE_LEVELS = {
    "wb97x-631gd": ("ωB97X", "6-31G(d)", "Gaussian 09"),
    "wb97md3bj-def2tzvpp": ("ωB97M-D3BJ", "def2-TZVPP", "ORCA"),
    "wb97mv-def2tzvpp": ("ωB97M-V", "def2-TZVPP", "ORCA"),
}
# QM7-X level -> (energy key, forces key or None, method, code)
QM7X_LEVELS = {
    "pbe0+mbd": ("ePBE0+MBD", "totFOR", "PBE0+MBD", "FHI-aims"),
    "pbe0": ("ePBE0", "pbe0FOR", "PBE0", "FHI-aims"),
    "dftb+mbd": ("eDFTB+MBD", None, "DFTB3+MBD", "DFTB+"),
}
QM7X_DEFAULT_LEVEL = "pbe0+mbd"
T1X_LEVEL = "wB97x_6-31G(d)"
T1X_SPLITS = ("train", "val", "test")
SPICE_ENERGY, SPICE_GRADIENT = "dft_total_energy", "dft_total_gradient"


# ---------------------------------------------------------------- file access

def _h5py():
    try:
        import h5py
    except ImportError as error:  # a reader's library is optional (pip install h5py)
        raise ImportError("reading HDF5 datasets needs h5py: pip install h5py") from error
    return h5py


def _is_hdf5(path: Path) -> bool:
    """HDF5 magic at 0 or at a user-block offset (512, 1024, 2048, ...)."""
    try:
        with open(path, "rb") as handle:
            for offset in (0, 512, 1024, 2048, 4096):
                handle.seek(offset)
                if handle.read(8) == HDF5_MAGIC:
                    return True
    except OSError:
        return False
    return False


def _open(path: Path):
    h5py = _h5py()
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as error:  # truncated or not HDF5: h5py's message is cryptic
        raise ValueError(f"{path}: not a readable HDF5 file (truncated or damaged?): "
                         f"{error}") from error


def _keys(group) -> str:
    return ", ".join(sorted(group.keys())) or "none"


def _need(path, group, key: str):
    """``group[key]``, or a KeyError naming the file, the group and the keys it has."""
    if key not in group:
        raise KeyError(f"{path}: group {group.name} has no {key!r}; its keys: {_keys(group)}")
    return group[key]


def _first_group(group):
    h5py = _h5py()
    for key in group:
        item = group.get(key)
        if isinstance(item, h5py.Group):
            return item
    return None


def _labelled_groups(path, f, options: ReadOptions, positions: str, energy: str,
                     forces: str):
    """(group, conformer count, energy key, forces key or None) for each molecule group
    at the top of ``f``; the default keys ``energy``/``forces`` give way to the user's.
    An energy key a group lacks, or a forces key the user named, is a KeyError
    listing the group's keys; default forces a group lacks are simply absent."""
    energy_key = options.keys.energy or energy
    forces_key = options.keys.forces or forces
    explicit_forces = options.keys.forces is not None
    h5py = _h5py()
    for name in f:
        group = f[name]
        if not isinstance(group, h5py.Group):
            continue
        count = _need(path, group, positions).shape[0]
        _need(path, group, energy_key)
        present = forces_key if (explicit_forces or forces_key in group) else None
        if present is not None:
            _need(path, group, present)
        yield group, count, energy_key, present


def _single_level(path, options: ReadOptions, name: str | None = None) -> None:
    """A file of one level of theory: a ``level`` other than its own is a mistake."""
    if options.level is not None and options.level != name:
        raise KeyError(f"{path}: holds one level of theory ({name or 'unnamed'}); "
                       f"level {options.level!r} does not apply")


def _reader(blocks, level=None, single: str | None = None):
    """A Format's ``read(path, options, rank, size)`` over ``blocks(path, file, options
    [, level])``: ``level(path, options)`` picks and checks the level of a file with
    several; without it the file has one (named ``single``) and --level must match."""
    def read(path, options: ReadOptions | None = None, rank: int = 0, size: int = 1):
        options = options or ReadOptions()
        if level is None:
            _single_level(path, options, single)
            extra = ()
        else:
            extra = (level(path, options),)
        with _open(path) as f:
            yield from _samples(path, blocks(path, f, options, *extra), options, rank, size)
    return read


def _is_gradient(key: str) -> bool:
    name = key.lower()
    return "gradient" in name or name.endswith("_grad") or name.endswith(".grad")


def _units_text(text) -> str:
    return text.decode() if isinstance(text, bytes) else str(text)


# ---------------------------------------------------------------- blocks of conformers

@dataclass
class _Block:
    """The conformers of one group: where the arrays are and how to label them.

    ``numbers`` is an [N] array, or the name of a dataset read with the conformers
    ([C, N] in torchani's grouping); ``stacked`` False: the group holds one conformer
    with no leading axis (QM7-X). ``closed_shell``: a neutral closed-shell set, charge 0
    and multiplicity 1 (None where a conformer's electron count is odd). ``group`` None:
    the group is ``parent[name]``, opened only by the rank that reads it (QM7-X has a
    group per conformer; opening millions of them on every rank would dominate)."""
    group: object
    count: int
    positions: str
    numbers: object
    energy: str | None
    forces: str | None
    units: Units
    charge: float | None = None
    spin: float | None = None
    stacked: bool = True
    closed_shell: bool = False
    parent: object = None
    name: str | None = None

    def read(self, path, selection: slice) -> dict:
        """Arrays of the selected conformers as stored (leading axis = conformer)."""
        if self.group is None:
            self.group = self.parent[self.name]
        keys = {"positions": self.positions, "energy": self.energy, "forces": self.forces}
        if isinstance(self.numbers, str):
            keys["numbers"] = self.numbers
        out = {}
        for name, key in keys.items():
            if key is None:
                continue
            dataset = _need(path, self.group, key)
            try:
                values = dataset[selection] if self.stacked else dataset[()][None]
            except (OSError, ValueError, TypeError) as error:
                raise ValueError(f"{path}: cannot read {key} of group {self.group.name} "
                                 f"(truncated or damaged file?): {error}") from error
            out[name] = np.asarray(values)
        if "energy" in out:
            out["energy"] = out["energy"].astype(np.float64).reshape(-1)
        return out


def _checked(path, error):
    """The error to raise for ``error``: our own messages (they name the file) as they
    are; anything from inside h5py (a damaged file gives OSError, RuntimeError, even
    KeyError) as a ValueError naming the file."""
    if isinstance(error, FileNotFoundError) or (
            isinstance(error, (KeyError, ValueError)) and str(path) in str(error)):
        return error
    return ValueError(f"{path}: cannot read (damaged HDF5 file?): "
                      f"{type(error).__name__}: {error}")


_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError)


def _guard(function):
    @functools.wraps(function)
    def guarded(path, *args, **kwargs):
        try:
            return function(path, *args, **kwargs)
        except _H5_ERRORS as error:
            checked = _checked(path, error)
            if checked is error:
                raise
            raise checked from error
    return guarded


def _guard_iter(function):
    @functools.wraps(function)
    def guarded(path, *args, **kwargs):
        try:
            yield from function(path, *args, **kwargs)
        except _H5_ERRORS as error:
            checked = _checked(path, error)
            if checked is error:
                raise
            raise checked from error
    return guarded


def _samples(path, blocks: Iterator[_Block], options: ReadOptions, rank: int, size: int
             ) -> Iterator[tuple[int, Sample]]:
    """(position, Sample) for this rank's positions, reading strided array slices."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in 0..{size - 1}")
    offset = 0
    for block in blocks:
        units = options.units or block.units
        gradient = block.forces is not None and _is_gradient(block.forces)
        sign = -1.0 if gradient else 1.0
        first = (rank - offset) % size
        for start in range(first, block.count, size * CHUNK):
            stop = min(block.count, start + size * CHUNK)
            data = block.read(path, slice(start, stop, size))
            for row, local in enumerate(range(start, stop, size)):
                sample = _sample(path, block, data, row, offset + local, units, sign, options)
                if sample is not None:
                    yield offset + local, sample
        offset += block.count


def _sample(path, block: _Block, data, row, position, units: Units, sign, options):
    numbers = data["numbers"][row] if "numbers" in data else block.numbers
    positions = data["positions"][row].astype(np.float64)
    if not np.isfinite(positions).all():  # a conformer the file never computed
        return None
    energy = forces = None
    if "energy" in data and np.isfinite(data["energy"][row]):
        energy = float(data["energy"][row]) * units.energy_factor
    if "forces" in data:
        raw = data["forces"][row].astype(np.float64)
        if np.isfinite(raw).all():
            forces = sign * raw * units.forces_factor
    if energy is None and forces is None:
        return None  # nothing at this level: skipped, not stored
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    if numbers.shape[0] != positions.shape[0]:
        raise ValueError(f"{path}: group {block.group.name}: {numbers.shape[0]} atomic "
                         f"numbers but positions of {positions.shape[0]} atoms")
    charge, spin = block.charge, block.spin
    if block.closed_shell:
        charge, spin = 0.0, (1.0 if int(numbers.sum()) % 2 == 0 else None)
    return Sample(numbers=numbers, positions=positions * units.length_factor, energy=energy,
                  forces=forces, dataset=options.dataset or str(path), index=position,
                  charge=charge, spin=spin)


def _species_numbers(path, group, species) -> np.ndarray:
    """ANI-1's species (bytes symbols) or torchani's atomic numbers -> int64."""
    values = np.asarray(species)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    symbols = [s.decode() if isinstance(s, bytes) else str(s) for s in values.reshape(-1)]
    unknown = sorted({s for s in symbols if s not in _NUMBER})
    if unknown:
        raise ValueError(f"{path}: group {group.name}: species {unknown} are not elements")
    return np.array([_NUMBER[s] for s in symbols], dtype=np.int64).reshape(values.shape)


# ---------------------------------------------------------------- ANI-1 (pyanitools)

def _ani1_leaves(group):
    """Leaf groups holding datasets, depth first in file order (as pyanitools walks)."""
    h5py = _h5py()
    for key in group:
        item = group[key]
        if not isinstance(item, h5py.Group):
            continue
        if any(item.get(k, getclass=True) is h5py.Dataset for k in item):
            yield item
        else:
            yield from _ani1_leaves(item)


def _first_leaf(group):
    h5py = _h5py()
    item = group
    for _ in range(8):
        child = _first_group(item)
        if child is None:
            return item if item is not group else None
        if any(child.get(k, getclass=True) is h5py.Dataset for k in child):
            return child
        item = child
    return None


def _sniffer(test):
    """``sniff(path)`` of a layout: an HDF5 file whose opened content passes ``test``."""
    @functools.wraps(test)
    def sniff(path: Path) -> bool:
        if not _is_hdf5(path):
            return False
        with _open(path) as f:
            return bool(test(f))
    return sniff


@_sniffer
def _sniff_ani1(f) -> bool:
    leaf = _first_leaf(f)
    return (leaf is not None and {"species", "coordinates", "energies"} <= set(leaf)
            and leaf["species"].ndim == 1)


def _ani1_blocks(path, f, options: ReadOptions):
    energy_key = options.keys.energy or "energies"
    forces_key = options.keys.forces
    for leaf in _ani1_leaves(f):
        coordinates = _need(path, leaf, "coordinates")
        _need(path, leaf, energy_key)
        if forces_key:
            _need(path, leaf, forces_key)
        numbers = _species_numbers(path, leaf, _need(path, leaf, "species")[()])
        yield _Block(leaf, coordinates.shape[0], "coordinates", numbers, energy_key,
                     forces_key, ANI_UNITS, closed_shell=True)


_read_ani1 = _reader(_ani1_blocks)


# ---------------------------------------------------------------- ANI-1x

@_sniffer
def _sniff_ani1x(f) -> bool:
    group = _first_group(f)
    return (group is not None and {"atomic_numbers", "coordinates"} <= set(group)
            and any(k.endswith(".energy") for k in group))


def _ani1x_levels(path) -> list[str]:
    """Levels of theory with total energies in the file (``LEVEL.energy``), from its
    first group (every group of the release holds every level, NaN where missing)."""
    with _open(path) as f:
        group = _first_group(f)
        if group is None:
            raise ValueError(f"{path}: no groups; root keys: {_keys(f)}")
        return sorted(k[: -len(".energy")] for k in group if k.endswith(".energy"))


def _ani1x_level(path, options: ReadOptions) -> str:
    level = options.level or ANI1X_DEFAULT_LEVEL
    known = _ani1x_levels(path)
    if level not in known:
        raise KeyError(f"{path}: no level {level!r}; levels in the file: {', '.join(known)}")
    return level


def _ani1x_blocks(path, f, options: ReadOptions, level: str):
    for group, count, energy_key, forces in _labelled_groups(
            path, f, options, "coordinates", f"{level}.energy", f"{level}.forces"):
        numbers = _need(path, group, "atomic_numbers")[()].astype(np.int64)
        yield _Block(group, count, "coordinates", numbers, energy_key, forces, ANI_UNITS,
                     closed_shell=True)


_read_ani1x = _reader(_ani1x_blocks, level=_ani1x_level)


# ---------------------------------------------------------------- ANI-2x (torchani groups)

@_sniffer
def _sniff_ani2x(f) -> bool:
    group = _first_group(f)
    return (group is not None and {"species", "coordinates", "energies"} <= set(group)
            and group["species"].ndim == 2)


def _ani2x_blocks(path, f, options: ReadOptions):
    for group, count, energy_key, forces in _labelled_groups(
            path, f, options, "coordinates", "energies", "forces"):
        species = _need(path, group, "species")
        if species.dtype.kind not in "iu":
            raise ValueError(f"{path}: group {group.name}: species are {species.dtype}, "
                             "expected atomic numbers")
        yield _Block(group, count, "coordinates", "species", energy_key, forces, ANI_UNITS,
                     closed_shell=True)


_read_ani2x = _reader(_ani2x_blocks)


# ---------------------------------------------------------------- SPICE

_BRACKET = re.compile(r"\[([^\]]*)\]")
_CHARGE = re.compile(r"(\++|-+)(\d*)")


def smiles_charge(smiles: str) -> int:
    """Total formal charge of a SMILES string: the charges of its bracket atoms
    (``[N+:2]``, ``[O-]``, ``[Ca+2]``, ``[Fe++]``); '-' outside brackets is a bond."""
    total = 0
    for atom in _BRACKET.findall(smiles):
        match = _CHARGE.search(atom)
        if match:
            run, digits = match.groups()
            magnitude = int(digits) if digits else len(run)
            total += magnitude if run[0] == "+" else -magnitude
    return total


def _string(dataset) -> str:
    value = dataset[()]
    value = value.reshape(-1)[0] if isinstance(value, np.ndarray) else value
    return value.decode() if isinstance(value, bytes) else str(value)


@_sniffer
def _sniff_spice(f) -> bool:
    group = _first_group(f)
    return group is not None and {"conformations", "atomic_numbers"} <= set(group)


def _spice_units(path, group, energy_key, forces_key) -> Units:
    """Units from the datasets' ``units`` attributes, SPICE's defaults where absent."""
    length = _units_text(group["conformations"].attrs.get("units", "bohr"))
    energy = _units_text(group[energy_key].attrs.get("units", "hartree"))
    forces_length = length
    if forces_key is not None:
        text = _units_text(group[forces_key].attrs.get("units", f"{energy}/{length}"))
        force_energy, sep, forces_length = text.partition("/")
        if not sep or force_energy.strip().lower() != energy.strip().lower():
            raise ValueError(f"{path}: group {group.name}: {forces_key} is in {text!r}, "
                             f"not {energy}/length like {energy_key}")
    try:
        return Units(energy=energy, length=length, forces_length=forces_length.strip())
    except ValueError as error:
        raise ValueError(f"{path}: group {group.name}: {error}") from error


def _spice_blocks(path, f, options: ReadOptions):
    for group, count, energy_key, forces in _labelled_groups(
            path, f, options, "conformations", SPICE_ENERGY, SPICE_GRADIENT):
        numbers = _need(path, group, "atomic_numbers")[()].astype(np.int64)
        if "smiles" in group:
            charge = float(smiles_charge(_string(group["smiles"])))
        elif "mbis_charges" in group:
            charge = float(np.rint(np.nansum(group["mbis_charges"][0])))
        else:
            charge = None
        spin = None
        if charge is not None:
            electrons = int(numbers.sum()) - int(charge)
            spin = 1.0 if electrons % 2 == 0 else 2.0
        units = _spice_units(path, group, energy_key, forces)
        yield _Block(group, count, "conformations", numbers, energy_key, forces, units, charge,
                     spin)


_read_spice = _reader(_spice_blocks)


# ---------------------------------------------------------------- QM7-X

@_sniffer
def _sniff_qm7x(f) -> bool:
    molecule = _first_group(f)
    conformer = None if molecule is None else _first_group(molecule)
    return conformer is not None and {"atNUM", "atXYZ"} <= set(conformer)


def _qm7x_level(path, options: ReadOptions):
    level = (options.level or QM7X_DEFAULT_LEVEL).lower()
    if level not in QM7X_LEVELS:
        raise KeyError(f"{path}: no level {options.level!r}; QM7-X levels: "
                       f"{', '.join(QM7X_LEVELS)}")
    return level


def _qm7x_blocks(path, f, options: ReadOptions, level: str):
    energy_default, forces_default, _, _ = QM7X_LEVELS[level]
    energy_key = options.keys.energy or energy_default
    forces_key = options.keys.forces or forces_default
    h5py = _h5py()
    for molecule in f.values():
        if not isinstance(molecule, h5py.Group):
            continue
        # names only: a conformer's group is opened (and its keys checked) by its rank
        for name in molecule:
            yield _Block(None, 1, "atXYZ", "atNUM", energy_key, forces_key, EV_UNITS,
                         stacked=False, closed_shell=True, parent=molecule, name=name)


def _qm7x_count(path, options: ReadOptions | None = None) -> int:
    h5py = _h5py()
    with _open(path) as f:
        return sum(len(m) for m in f.values() if isinstance(m, h5py.Group))


_read_qm7x = _reader(_qm7x_blocks, level=_qm7x_level)


# ---------------------------------------------------------------- Transition1x

def _t1x_splits(path, f) -> list[str]:
    present = [s for s in T1X_SPLITS if s in f]
    if present:
        return present
    if "data" in f:
        return ["data"]
    raise KeyError(f"{path}: none of the splits train, val, test, data; root keys: {_keys(f)}")


@_sniffer
def _sniff_t1x(f) -> bool:
    if not f.keys() or not set(f.keys()) <= {"data", *T1X_SPLITS}:
        return False
    formula = _first_group(f[next(iter(f))])
    reaction = None if formula is None else _first_group(formula)
    return reaction is not None and "positions" in reaction and "atomic_numbers" in reaction


def _t1x_blocks(path, f, options: ReadOptions):
    energy_key = options.keys.energy or f"{T1X_LEVEL}.energy"
    forces_key = options.keys.forces or f"{T1X_LEVEL}.forces"
    h5py = _h5py()
    for split in _t1x_splits(path, f):
        for formula in f[split].values():
            for reaction in formula.values():
                if not isinstance(reaction, h5py.Group):
                    continue
                numbers = _need(path, reaction, "atomic_numbers")[()].astype(np.int64)
                # the publishers' order: reactant, product, then the path
                for group in (_need(path, reaction, "reactant"),
                              _need(path, reaction, "product"), reaction):
                    positions = _need(path, group, "positions")
                    _need(path, group, energy_key)
                    _need(path, group, forces_key)
                    yield _Block(group, positions.shape[0], "positions", numbers, energy_key,
                                 forces_key, EV_UNITS, closed_shell=True)


_read_t1x = _reader(_t1x_blocks, single=T1X_LEVEL)


# ---------------------------------------------------------------- counts, inspect, fidelity

def _counter(blocks: Callable) -> Callable:
    def count(path, options: ReadOptions | None = None) -> int:
        options = options or ReadOptions()
        with _open(path) as f:
            return sum(block.count for block in blocks(path, f, options))
    return count


def _inspector(name: str, blocks: Callable, levels: Callable, count: Callable) -> Callable:
    def inspect(path) -> dict:
        """What ``pygfm-data inspect`` shows: layout, keys of the first group, units,
        levels, conformer count (metadata only, no arrays read)."""
        with _open(path) as f:
            try:
                block = next(iter(blocks(path, f, ReadOptions())), None)
            except KeyError:  # no default level or keys: still describe the file
                block = None
            if block is not None and block.group is None:
                block.group = block.parent[block.name]
            example = block.group if block is not None else _first_group(f)
            units = None if block is None else block.units
            top = sorted(f.keys())
            info = {
                "format": name, "path": str(path), "groups": len(top), "root_keys": top[:20],
                "example_group": None if example is None else example.name,
                "example_keys": [] if example is None else sorted(example.keys()),
                "levels": levels(path),
                "units": None if units is None else {
                    "energy": units.energy, "length": units.length,
                    "forces_length": units.forces_length or units.length},
                "forces_from_gradient": bool(block and block.forces
                                             and _is_gradient(block.forces)),
            }
        try:
            info["conformers"] = count(path, ReadOptions())
        except KeyError:
            info["conformers"] = None
        return info
    return inspect


def _text(method, basis, code) -> str:
    head = f"{method}/{basis}" if basis else method
    return f"{head} ({code})" if code else head


def _fid(method, basis, code, level=None) -> dict:
    """A fidelity object as the dataset manifest stores it (``level``: the file's
    name for it, kept out of the object: the dataset name carries it)."""
    return {"method": method, "basis": basis, "code": code,
            "text": _text(method, basis, code)}


def fidelity(path, level: str | None = None, format: str | None = None) -> dict | None:
    """The fidelity object (``method``, ``basis``, ``code``, ``text``) of a file's level
    of theory, as far as the file (its level names, its name) and its publishers say;
    None where unknown. ``format`` defaults to the one the file's content shows."""
    path = Path(path)
    name = format or next((n for n, sniff in _SNIFFERS if sniff(path)), None)
    if name == "ani1x":
        level = level or ANI1X_DEFAULT_LEVEL
        if level in ANI1X_LEVELS:
            return _fid(*ANI1X_LEVELS[level], level=level)
        return None  # a level the data descriptor does not list: the file says only its name
    if name == "ani1":
        return _fid("ωB97x", "6-31G(d)", "Gaussian 09")
    if name == "ani2x":
        stem = path.stem.lower()
        for key, value in ANI2X_FILE_LEVELS.items():
            if stem.endswith(key):
                return _fid(*value)
        return None
    if name == "spice":
        return _fid("ωB97M-D3BJ", "def2-TZVPPD", "Psi4")
    if name == "qm7x":
        level = (level or QM7X_DEFAULT_LEVEL).lower()
        if level not in QM7X_LEVELS:
            return None
        _, _, method, code = QM7X_LEVELS[level]
        out = _fid(method, None, code, level=level)
        if code == "FHI-aims":  # numeric atom-centred orbitals, "tight" settings
            out["basis"] = "tight"
            out["text"] = f"{method} ({code}, tight)"
        return out
    if name == "transition1x":
        return _fid("ωB97x", "6-31G(d)", "ORCA")
    return None


def _no_levels(path) -> list[str]:
    return []


def _qm7x_levels(path) -> list[str]:
    return list(QM7X_LEVELS)


def _level_blocks(blocks, resolve):
    def with_level(path, f, options):
        return blocks(path, f, options, resolve(path, options))
    return with_level


_ani1x_blocks_any = _level_blocks(_ani1x_blocks, _ani1x_level)
_qm7x_blocks_any = _level_blocks(_qm7x_blocks, _qm7x_level)

# detection order: layouts checked most specific first; each sniff looks at the first
# group or two only, so detection stays cheap on a 10 GB file
_SNIFFERS = (("transition1x", _sniff_t1x), ("qm7x", _sniff_qm7x), ("spice", _sniff_spice),
             ("ani1x", _sniff_ani1x), ("ani2x", _sniff_ani2x), ("ani1", _sniff_ani1))

_SPECS = {
    "transition1x": ("Transition1x reaction paths (wB97x/6-31G(d), eV, Å)", (".h5",),
                     _read_t1x, _t1x_blocks, _no_levels),
    "qm7x": ("QM7-X conformers (PBE0+MBD, eV, Å; levels pbe0+mbd, pbe0, dftb+mbd)",
             (".hdf5",), _read_qm7x, _qm7x_blocks_any, _qm7x_levels),
    "spice": ("SPICE 1/2 (wB97M-D3BJ/def2-TZVPPD, units from the file, forces = -gradient)",
              (".hdf5",), _read_spice, _spice_blocks, _no_levels),
    "ani1x": ("ANI-1x/ANI-1ccx release (levels side by side, hartree, Å)", (".h5",),
              _read_ani1x, _ani1x_blocks_any, _ani1x_levels),
    "ani2x": ("ANI-2x release and torchani-grouped files (hartree, Å)", (".h5",),
              _read_ani2x, _ani2x_blocks, _no_levels),
    "ani1": ("ANI-1 release (pyanitools layout, species as bytes, hartree, Å)", (".h5",),
             _read_ani1, _ani1_blocks, _no_levels),
}

for _name, _sniff in _SNIFFERS:
    _description, _suffixes, _read, _blocks, _levels = _SPECS[_name]
    _count = _qm7x_count if _name == "qm7x" else _counter(_blocks)
    register(Format(name=_name, description=_description, suffixes=_suffixes, sniff=_sniff,
                    inspect=_guard(_inspector(_name, _blocks, _levels, _count)),
                    read=_guard_iter(_read), levels=_guard(_levels), count=_guard(_count),
                    fidelity=_guard(lambda path, level, _name=_name: fidelity(path, level, _name)),
                    needs=("h5py",)))

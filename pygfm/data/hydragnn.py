"""Read datasets stored in HydraGNN's ADIOS2 layout as ``ase.Atoms``.

HydraGNN (ORNL/HydraGNN, ``AdiosWriter`` in
``hydragnn/utils/datasets/adiosdataset.py``) stores lists of PyG ``Data``
objects in one ADIOS2 BP file. Per split label (``trainset``, ``valset``,
``testset``) and per key ``k`` of the ``Data`` objects there is one global
array ``<label>/<k>`` (all samples concatenated along one *variable dimension*,
recorded in the attribute ``<label>/<k>/variable_dim``) and two int arrays
``<label>/<k>/variable_count`` and ``<label>/<k>/variable_offset`` (one entry
per sample) that cut it back into samples; attributes ``<label>/ndata`` and
``<label>/keys`` give the number of samples and the key names, and the
file-level attribute ``dataset_name`` (when present) names the dataset.
docs/hydragnn-format.md describes the layout and its variants with source
references.

Quantity mapping (``keys=``): every quantity pygfm wants is taken from a key
of the file; the defaults (:data:`DEFAULT_KEYS`) follow what HydraGNN's
foundation-model preprocessing scripts write and are tried in order:

* ``numbers`` (required): ``atomic_numbers``, ``x[:,0]``, ``z``
* ``positions`` (required): ``pos``
* ``cell``: ``cell`` (zeros when absent)
* ``pbc``: ``pbc`` (all False when absent)
* ``energy``: ``energy``, ``total_energy``
* ``energy_per_atom``: ``energy_per_atom``, ``total_energy_per_atom``; used
  only when no energy key is found (energy = value * number of atoms)
* ``forces``: ``forces``, ``force``
* ``stress``: ``stress`` (3x3, or 6 values in ASE's Voigt order)
* ``charge_spin``: ``graph_attr`` (two values: ``info["charge"]``,
  ``info["spin"]``)

``y`` is never used by default: HydraGNN's scripts store either the total or
the per-atom energy there depending on a command-line flag. Pass e.g.
``keys={"energy": "y"}`` or ``keys={"energy_per_atom": "y"}`` when you know
which.

A spec is a key name, optionally with a column selection of a two-dimensional
per-sample array: ``"x[:,0]"`` (one column), ``"x[:,4:7]"`` (a column range).
In ``keys=`` a value may be

* a string: that key, which must then exist in every selected split;
* a list/tuple of strings: tried in order, like the defaults;
* ``None``: do not read that quantity;
* for ``pbc`` only, a bool or three bools: a constant (e.g. ``True`` for the
  Alexandria example files, which store a cell but no ``pbc``).

Quantities not named in ``keys=`` keep their defaults.

Units: HydraGNN's foundation-model datasets store positions and cells in Å,
energies in eV, forces in eV/Å and stress in eV/Å^3 (tension positive, ASE's
sign); the reader does not convert units (older example files may differ, see
the docs).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_KEYS",
    "SPLIT_ORDER",
    "hydragnn_splits",
    "is_hydragnn_file",
    "read_hydragnn",
]

#: Canonical order of HydraGNN's split labels; other labels follow, sorted.
SPLIT_ORDER = ("trainset", "valset", "testset")

#: Default key specs per quantity, tried in order (see the module docstring).
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "numbers": ("atomic_numbers", "x[:,0]", "z"),
    "positions": ("pos",),
    "cell": ("cell",),
    "pbc": ("pbc",),
    "energy": ("energy", "total_energy"),
    "energy_per_atom": ("energy_per_atom", "total_energy_per_atom"),
    "forces": ("forces", "force"),
    "stress": ("stress",),
    "charge_spin": ("graph_attr",),
}

_REQUIRED = ("numbers", "positions")

# Written by HydraGNN's examples/multidataset/energy*_linear_regression.py.
_FIT_ATTRIBUTE = "energy_linear_regression_coeff"

# Samples per ADIOS2 read: each needed global array is read once per chunk of
# this many consecutive samples (one selection spanning their extents).
_CHUNK_SAMPLES = 2048

_SPEC_RE = re.compile(
    r"^(?P<name>[^\[\]\s]+)"
    r"(?:\[\s*:\s*,\s*(?P<a>-?\d+)?\s*(?P<colon>:)?\s*(?P<b>-?\d+)?\s*\])?$"
)

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------
# specs


@dataclass(frozen=True)
class _Spec:
    text: str
    key: str
    columns: int | slice | None  # None: the whole per-sample array


def _parse_spec(text: str, quantity: str) -> _Spec:
    if not isinstance(text, str):
        raise TypeError(f"read_hydragnn: keys[{quantity!r}]: expected a key name, "
                        f"got {text!r}")
    spec = text.strip()
    match = _SPEC_RE.match(spec)
    if match is not None and "[" in spec and match["colon"] is None and \
            (match["a"] is None or match["b"] is not None):
        match = None
    if match is None:
        raise ValueError(f"read_hydragnn: keys[{quantity!r}]: cannot parse {text!r}; "
                         "use a key name, 'key[:,i]' or 'key[:,i:j]'")
    if "[" not in spec:
        return _Spec(spec, match["name"], None)
    a = None if match["a"] is None else int(match["a"])
    b = None if match["b"] is None else int(match["b"])
    return _Spec(spec, match["name"], slice(a, b) if match["colon"] else a)


@dataclass(frozen=True)
class _Choice:
    """How one quantity is looked up: specs in order, or a pbc constant."""

    specs: tuple[_Spec, ...] = ()
    strict: bool = False  # a single user-given key: must exist
    constant: tuple[bool, bool, bool] | None = None


def _choices(keys: Mapping | None) -> dict[str, _Choice]:
    choices = {q: _Choice(tuple(_parse_spec(s, q) for s in specs))
               for q, specs in DEFAULT_KEYS.items()}
    if keys is None:
        return choices
    if not isinstance(keys, Mapping):
        raise TypeError(f"read_hydragnn: keys must be a dict, got {type(keys).__name__}")
    for quantity, value in keys.items():
        if quantity not in DEFAULT_KEYS:
            raise ValueError(f"read_hydragnn: keys: unknown quantity {quantity!r}; "
                             f"known: {', '.join(DEFAULT_KEYS)}")
        if value is None:
            if quantity in _REQUIRED:
                raise ValueError(f"read_hydragnn: keys[{quantity!r}] cannot be None: "
                                 f"{quantity} are required")
            choices[quantity] = _Choice()
        elif quantity == "pbc" and (isinstance(value, (bool, np.bool_)) or (
                isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(v, (bool, np.bool_)) for v in value))):
            flags = (bool(value),) * 3 if isinstance(value, (bool, np.bool_)) else \
                tuple(bool(v) for v in value)
            choices[quantity] = _Choice(constant=flags)
        elif isinstance(value, str):
            choices[quantity] = _Choice((_parse_spec(value, quantity),), strict=True)
        elif isinstance(value, (list, tuple)) and value:
            choices[quantity] = _Choice(tuple(_parse_spec(v, quantity) for v in value))
        else:
            raise TypeError(f"read_hydragnn: keys[{quantity!r}]: expected a key name, a "
                            f"list of key names or None, got {value!r}")
    return choices


# --------------------------------------------------------------------------
# file access


def _adios2():
    try:
        import adios2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading HydraGNN ADIOS2 files needs the adios2 Python package "
                          "(pip install adios2)") from exc
    if not hasattr(adios2, "FileReader"):  # pragma: no cover - adios2 < 2.10
        raise ImportError(f"reading HydraGNN ADIOS2 files needs adios2 >= 2.10 "
                          f"(found {getattr(adios2, '__version__', 'unknown')})")
    return adios2


def _clean(message: str) -> str:
    text = _ANSI_RE.sub("", str(message)).strip()
    return text.splitlines()[0] if text else "unknown error"


def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "md.idx")):
        raise ValueError(f"{path}: not a HydraGNN ADIOS2 dataset: a directory without "
                         "md.idx is not an ADIOS2 BP4/BP5 file")
    adios2 = _adios2()
    try:
        return adios2.FileReader(path)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a HydraGNN ADIOS2 dataset: ADIOS2 cannot open it "
                         f"({_clean(exc)})") from None


def _read_strings(reader, name: str) -> list[str]:
    value = reader.read_attribute_string(name)
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


@dataclass
class _Layout:
    path: str
    variables: dict
    attributes: dict
    ndata: dict[str, int]       # split -> number of samples, in SPLIT_ORDER order
    keys: dict[str, list[str]]  # split -> its <split>/keys attribute
    dataset_name: str | None


def _scan(reader, path: str) -> _Layout:
    attributes = reader.available_attributes()
    variables = reader.available_variables()
    labels = [name[: -len("/ndata")] for name in attributes
              if name.endswith("/ndata") and name[: -len("/ndata")] + "/keys" in attributes]
    if not labels:
        raise ValueError(f"{path}: not a HydraGNN ADIOS2 dataset: no '<split>/ndata' and "
                         "'<split>/keys' attributes")
    labels.sort(key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    ndata, keys = {}, {}
    for label in labels:
        value = np.asarray(reader.read_attribute(f"{label}/ndata"))
        if value.size != 1 or value.dtype.kind not in "iu" or int(value.reshape(-1)[0]) < 0:
            raise ValueError(f"{path}: split {label!r}: attribute {label}/ndata is "
                             f"{value.tolist()!r}, not a non-negative integer")
        ndata[label] = int(value.reshape(-1)[0])
        keys[label] = _read_strings(reader, f"{label}/keys")
    dataset_name = None
    if "dataset_name" in attributes:
        if attributes["dataset_name"].get("Type") == "string":
            names = _read_strings(reader, "dataset_name")
            dataset_name = names[0] if names else None
        else:
            value = np.asarray(reader.read_attribute("dataset_name")).reshape(-1)
            dataset_name = str(value[0].item()) if value.size else None
    return _Layout(path, variables, attributes, ndata, keys, dataset_name)


def _looks_like_bp(path: str) -> bool:
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "md.idx"))
    return os.path.isfile(path) and path.lower().endswith(".bp")


def is_hydragnn_file(path) -> bool:
    """True when ``path`` is an ADIOS2 BP file (a BP4/BP5 directory, or a
    BP3 ``*.bp`` file) holding at least one split in HydraGNN's layout: the
    attributes ``<split>/ndata`` and ``<split>/keys`` and, for a listed key,
    the variables ``<split>/<key>`` and ``<split>/<key>/variable_count``.
    Reads metadata only; never raises for a file that is not one (a
    ``.bp`` path needs the adios2 package)."""
    path = os.fspath(path)
    if not _looks_like_bp(path):
        return False
    try:
        with _open(path) as reader:
            layout = _scan(reader, path)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, TypeError):
        return False
    for label, keys in layout.keys.items():
        for key in keys:
            if f"{label}/{key}" in layout.variables and \
                    f"{label}/{key}/variable_count" in layout.variables:
                return True
    return False


def hydragnn_splits(path) -> dict[str, int]:
    """Number of samples per split label (``<split>/ndata``), in the order
    trainset, valset, testset, then any other labels sorted. Raises
    FileNotFoundError / ValueError like :func:`read_hydragnn`."""
    path = os.fspath(path)
    with _open(path) as reader:
        return dict(_scan(reader, path).ndata)


# --------------------------------------------------------------------------
# plan: which variable gives which quantity, per split


@dataclass(frozen=True)
class _Source:
    spec: _Spec
    variable: str
    shape: tuple[int, ...]
    vdim: int


@dataclass
class _SplitPlan:
    label: str
    ndata: int
    sources: dict[str, _Source]
    pbc_constant: tuple[bool, bool, bool] | None


def _where(path: str, label: str, key: str | None = None, index: int | None = None) -> str:
    text = f"{path}: split {label!r}"
    if key is not None:
        text += f", key {key!r}"
    if index is not None:
        text += f", sample {index}"
    return text


def _source(reader, layout: _Layout, label: str, spec: _Spec) -> _Source:
    path, key = layout.path, spec.key
    variable = f"{label}/{key}"
    where = _where(path, label, key)
    for suffix in ("/variable_count", "/variable_offset"):
        if variable + suffix not in layout.variables:
            raise ValueError(f"{where}: variable {variable}{suffix} is missing")
    if variable + "/variable_dim" not in layout.attributes:
        raise ValueError(f"{where}: attribute {variable}/variable_dim is missing")
    shape = tuple(int(n) for n in reader.inquire_variable(variable).shape())
    vdim = np.asarray(reader.read_attribute(variable + "/variable_dim")).reshape(-1)
    if vdim.size != 1 or not 0 <= int(vdim[0]) < max(len(shape), 1) or len(shape) == 0:
        raise ValueError(f"{where}: variable_dim {vdim.tolist()} does not fit the shape "
                         f"{list(shape)} of {variable}")
    for suffix in ("/variable_count", "/variable_offset"):
        n = [int(x) for x in reader.inquire_variable(variable + suffix).shape()]
        if n != [layout.ndata[label]]:
            raise ValueError(f"{where}: {variable}{suffix} has shape {n} but "
                             f"{label}/ndata is {layout.ndata[label]}")
    return _Source(spec, variable, shape, int(vdim[0]))


def _plan(reader, layout: _Layout, label: str, choices: dict[str, _Choice]) -> _SplitPlan:
    sources: dict[str, _Source] = {}
    for quantity, choice in choices.items():
        if choice.constant is not None or not choice.specs:
            continue
        found = None
        for spec in choice.specs:
            if f"{label}/{spec.key}" in layout.variables:
                found = spec
                break
            if choice.strict:
                raise ValueError(f"{_where(layout.path, label, spec.key)}: no such key "
                                 f"(asked for {quantity}); the split holds: "
                                 f"{', '.join(layout.keys[label]) or 'nothing'}")
        if found is None:
            if quantity in _REQUIRED:
                tried = ", ".join(repr(s.text) for s in choice.specs)
                raise ValueError(f"{_where(layout.path, label)}: no key for the required "
                                 f"{quantity} (tried {tried}); the split holds: "
                                 f"{', '.join(layout.keys[label]) or 'nothing'}; "
                                 f"pass keys={{{quantity!r}: ...}}")
            continue
        sources[quantity] = _source(reader, layout, label, found)
    if "energy" in sources:
        sources.pop("energy_per_atom", None)
    return _SplitPlan(label, layout.ndata[label], sources, choices["pbc"].constant)


# --------------------------------------------------------------------------
# reading


def _chunk_arrays(reader, path: str, plan: _SplitPlan, source: _Source,
                  start: int, stop: int) -> list[np.ndarray]:
    """Per-sample arrays of one key for samples start..stop-1, from one read."""
    n = stop - start
    key = source.spec.key
    counts = np.asarray(reader.read(source.variable + "/variable_count", [start], [n]),
                        dtype=np.int64).reshape(-1)
    offsets = np.asarray(reader.read(source.variable + "/variable_offset", [start], [n]),
                         dtype=np.int64).reshape(-1)
    extent = source.shape[source.vdim]
    ends = offsets + counts
    bad = np.flatnonzero((counts < 0) | (offsets < 0) | (ends > extent))
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"{_where(path, plan.label, key, start + j)}: variable_offset {offsets[j]} and "
            f"variable_count {counts[j]} fall outside the {extent} entries of "
            f"{source.variable} along its variable dimension {source.vdim}")
    used = counts > 0
    if not used.any():
        lo = hi = 0
    else:
        lo, hi = int(offsets[used].min()), int(ends[used].max())
    block_shape = list(source.shape)
    block_shape[source.vdim] = hi - lo
    if hi > lo:
        sel_start = [0] * len(source.shape)
        sel_start[source.vdim] = lo
        block = np.asarray(reader.read(source.variable, sel_start, block_shape))
        block = block.reshape(block_shape)
    else:
        dtype = reader.inquire_variable(source.variable).type()
        block = np.zeros(block_shape, dtype=_numpy_dtype(dtype))
    index = [slice(None)] * len(source.shape)
    arrays = []
    for offset, count in zip(offsets.tolist(), counts.tolist()):
        index[source.vdim] = slice(offset - lo, offset - lo + count)
        arrays.append(block[tuple(index)])
    return arrays


def _numpy_dtype(adios_type: str):
    return {"float": np.float32, "double": np.float64, "int32_t": np.int32,
            "int64_t": np.int64, "uint8_t": np.uint8, "int8_t": np.int8,
            "int16_t": np.int16, "uint16_t": np.uint16, "uint32_t": np.uint32,
            "uint64_t": np.uint64}.get(adios_type, np.float64)


def _select(array: np.ndarray, spec: _Spec, where: str) -> np.ndarray:
    if spec.columns is None:
        return array
    if array.ndim != 2:
        raise ValueError(f"{where}: {spec.text!r} selects columns but the sample has "
                         f"shape {list(array.shape)}")
    try:
        return array[:, spec.columns]
    except IndexError:
        raise ValueError(f"{where}: {spec.text!r} selects columns outside the sample's "
                         f"{array.shape[1]} columns") from None


def _one_value(array: np.ndarray, where: str, what: str) -> float:
    if array.size != 1:
        raise ValueError(f"{where}: expected one {what} value per sample, got shape "
                         f"{list(array.shape)}")
    return float(array.reshape(-1)[0])


def _atoms(path: str, plan: _SplitPlan, index: int, samples: dict[str, np.ndarray],
           dataset_name: str | None):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    def where(quantity: str) -> str:
        return _where(path, plan.label, plan.sources[quantity].spec.key, index)

    def get(quantity: str) -> np.ndarray:
        return _select(samples[quantity], plan.sources[quantity].spec, where(quantity))

    positions = np.asarray(get("positions"), dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{where('positions')}: positions must have shape [N, 3], got "
                         f"{list(positions.shape)}")
    natoms = positions.shape[0]
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        raise ValueError(f"{where('positions')}: non-finite position of atom {int(bad[0])}")

    numbers = np.asarray(get("numbers"))
    if numbers.ndim == 2 and numbers.shape[1] == 1:
        numbers = numbers[:, 0]
    if numbers.ndim != 1:
        raise ValueError(f"{where('numbers')}: atomic numbers must have shape [N] or "
                         f"[N, 1], got {list(numbers.shape)}; select a column, e.g. "
                         "keys={'numbers': 'x[:,0]'}")
    if numbers.shape[0] != natoms:
        raise ValueError(f"{where('numbers')}: {numbers.shape[0]} atomic numbers for "
                         f"{natoms} positions")
    values = numbers.astype(np.float64)
    ok = np.isfinite(values) & (values == np.round(values)) & (values >= 1) & (values <= 118)
    bad = np.flatnonzero(~ok)
    if bad.size:
        j = int(bad[0])
        raise ValueError(f"{where('numbers')}: atomic number {numbers[j].item()!r} of atom "
                         f"{j} is not an integer in 1..118")
    numbers = values.astype(np.int64)

    cell = np.zeros((3, 3))
    if "cell" in plan.sources:
        raw = np.asarray(get("cell"), dtype=np.float64)
        if raw.size != 9:
            raise ValueError(f"{where('cell')}: a cell needs 9 values, got shape "
                             f"{list(raw.shape)}")
        cell = raw.reshape(3, 3)
        if not np.isfinite(cell).all():
            raise ValueError(f"{where('cell')}: non-finite cell")

    if plan.pbc_constant is not None:
        pbc = np.array(plan.pbc_constant, dtype=bool)
    elif "pbc" in plan.sources:
        raw = np.asarray(get("pbc")).reshape(-1)
        if raw.size == 1:
            raw = np.repeat(raw, 3)
        if raw.size != 3:
            raise ValueError(f"{where('pbc')}: pbc needs 1 or 3 values, got {raw.size}")
        pbc = raw != 0
    else:
        pbc = np.zeros(3, dtype=bool)
    # HydraGNN's scripts store eye(3) as the cell of a non-periodic structure
    # ("cell needs to be defined because ADIOS requires consistency").
    if not pbc.any() and np.array_equal(cell, np.eye(3)):
        cell = np.zeros((3, 3))

    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)

    results = {}
    if "energy" in plan.sources:
        results["energy"] = _one_value(np.asarray(get("energy")), where("energy"), "energy")
    elif "energy_per_atom" in plan.sources:
        results["energy"] = _one_value(np.asarray(get("energy_per_atom")),
                                       where("energy_per_atom"), "energy_per_atom") * natoms
    if "forces" in plan.sources:
        forces = np.asarray(get("forces"), dtype=np.float64)
        if forces.shape != (natoms, 3):
            raise ValueError(f"{where('forces')}: forces must have shape [{natoms}, 3], got "
                             f"{list(forces.shape)}")
        results["forces"] = forces
    if "stress" in plan.sources:
        raw = np.asarray(get("stress"), dtype=np.float64)
        if raw.size == 9:
            s = raw.reshape(3, 3)
            results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], (s[1, 2] + s[2, 1]) / 2,
                                          (s[0, 2] + s[2, 0]) / 2, (s[0, 1] + s[1, 0]) / 2])
        elif raw.size == 6:
            results["stress"] = raw.reshape(6)
        else:
            raise ValueError(f"{where('stress')}: stress needs 9 (3x3) or 6 (Voigt) "
                             f"values, got shape {list(raw.shape)}")
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)

    atoms.info["hydragnn_split"] = plan.label
    atoms.info["hydragnn_index"] = index
    if dataset_name is not None:
        atoms.info["dataset_name"] = dataset_name
    if "charge_spin" in plan.sources:
        attr = np.asarray(get("charge_spin")).reshape(-1)
        if attr.size == 2:
            for name, value in zip(("charge", "spin"), attr.tolist()):
                atoms.info[name] = int(value) if float(value).is_integer() else value
        else:
            atoms.info["hydragnn_graph_attr"] = attr.astype(np.float64)
    return atoms


def _iterate(path: str, plans: list[_SplitPlan], dataset_name: str | None,
             progress: bool) -> Iterator:
    bar = None
    if progress:
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is almost always there
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=sum(p.ndata for p in plans), unit="structure",
                       desc=f"reading {os.path.basename(path.rstrip(os.sep))}")
    try:
        with _open(path) as reader:
            for plan in plans:
                if bar is not None:
                    bar.set_postfix_str(plan.label)
                for start in range(0, plan.ndata, _CHUNK_SAMPLES):
                    stop = min(start + _CHUNK_SAMPLES, plan.ndata)
                    chunks = {q: _chunk_arrays(reader, path, plan, s, start, stop)
                              for q, s in plan.sources.items()}
                    for j in range(stop - start):
                        samples = {q: arrays[j] for q, arrays in chunks.items()}
                        yield _atoms(path, plan, start + j, samples, dataset_name)
                        if bar is not None:
                            bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def read_hydragnn(path, *, splits: str | Iterable[str] | None = None,
                  keys: Mapping | None = None, progress: bool = False) -> Iterator:
    """Iterate over the samples of a HydraGNN ADIOS2 dataset as ``ase.Atoms``.

    Every structure carries positions (Å), atomic numbers, cell (zeros when
    the file has none, or HydraGNN's identity placeholder for a non-periodic
    structure) and pbc (False when absent); energy (eV), forces (eV/Å) and
    stress (eV/Å^3, ASE's Voigt order) when present, as a
    ``SinglePointCalculator``; ``atoms.info`` holds ``hydragnn_split``,
    ``hydragnn_index`` (index within the split), ``dataset_name`` when the
    file has that attribute, and ``charge``/``spin`` from a two-valued
    ``graph_attr``.

    ``splits``: a label or labels to read (default: all, trainset, valset,
    testset first). ``keys``: overrides of the quantity -> key mapping (see
    the module docstring). ``progress``: show a tqdm progress bar.

    The file's layout, the splits and the key mapping are checked when this
    is called (FileNotFoundError / ValueError naming the file, split and
    key); per-sample problems (offsets or counts outside an array, shapes,
    non-finite positions, atomic numbers that are not integers in 1..118)
    raise ValueError naming the sample while iterating. Each needed array is
    read once per chunk of consecutive samples.
    """
    path = os.fspath(path)
    choices = _choices(keys)
    with _open(path) as reader:
        layout = _scan(reader, path)
        if splits is None:
            labels = list(layout.ndata)
        else:
            labels = [splits] if isinstance(splits, str) else list(splits)
            for label in labels:
                if label not in layout.ndata:
                    raise ValueError(f"{path}: split {label!r} not found; the file holds: "
                                     f"{', '.join(layout.ndata)}")
        plans = [_plan(reader, layout, label, choices) for label in labels]
    if _FIT_ATTRIBUTE in layout.attributes and any(
            {"energy", "energy_per_atom"} & set(p.sources) for p in plans):
        warnings.warn(
            f"{path}: the file has the attribute {_FIT_ATTRIBUTE!r}: HydraGNN's "
            "examples/multidataset/energy_linear_regression.py stores 'energy' and "
            "energy_per_atom_linear_regression.py stores 'energy_per_atom' minus a linear "
            "fit on the composition, so the energies read may be such residuals "
            "(see docs/hydragnn-format.md)", UserWarning, stacklevel=2)
    return _iterate(path, plans, layout.dataset_name, progress)

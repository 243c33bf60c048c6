"""pygfm datasets on disk: a directory of ADIOS2 BP5 shards plus a JSON manifest.

The format is specified in ``docs/data-format.md``. In short::

    DIR/
      pygfm-dataset.json        manifest: format, version, name, fidelity, units,
                                elements, labels, counts, shards with byte sizes and
                                CRC32 checksums of their files
      statistics.json           per-dataset normalization statistics (optional)
      shard-r0000-00000.bp/     one or more BP5 shards per writing rank; each holds
                                the arrays of a SampleBlock and the same metadata as
                                attributes

A dataset's k-th sample is the one with the k-th smallest ``sample_id``; ids are
the positions of the samples in the writer's input (0..S-1, or with gaps where a
format reader skipped structures), so the order does not depend on how many
ranks wrote the dataset.

Writing is atomic: everything goes to a hidden ``.NAME.partial-*`` directory that
is renamed to ``DIR`` only when complete, so an interrupted conversion never
leaves something that reads as a dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from .._files import atomic_write_json, is_temporary, replace_path
from .block import PER_ATOM, PROPERTIES, SampleBlock
from .sample import LABELS, Sample

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "AtomicDataset", "open_dataset",
           "write_dataset", "write_json_atomic", "normalize_fidelity", "DatasetError",
           "check_replaceable"]

FORMAT_NAME = "pygfm-atomic-dataset"
FORMAT_VERSION = 1
MANIFEST = "pygfm-dataset.json"
STATISTICS = "statistics.json"
UNITS = {"positions": "Å", "cell": "Å", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DatasetError(ValueError):
    """A dataset directory that is missing, incomplete, corrupt or of another version."""


def normalize_fidelity(fidelity) -> dict:
    """``"PBE/def2-SVP (pyscf)"`` or a dict with code, code_version, method, basis ->
    a dict with keys code, code_version, method, basis, text (strings or None)."""
    if isinstance(fidelity, str):
        if not fidelity.strip():
            raise ValueError("fidelity: an empty description")
        return {"code": None, "code_version": None, "method": None, "basis": None,
                "text": fidelity.strip()}
    if isinstance(fidelity, dict):
        unknown = set(fidelity) - {"code", "code_version", "method", "basis", "text"}
        if unknown:
            raise ValueError(f"fidelity: unknown keys {sorted(unknown)}")
        out = {key: (None if fidelity.get(key) is None else str(fidelity[key]))
               for key in ("code", "code_version", "method", "basis", "text")}
        if not (out["code"] or out["method"] or out["text"]):
            raise ValueError("fidelity: give at least one of code, method, text")
        if out["text"] is None:
            parts = [p for p in (out["method"], out["basis"]) if p]
            text = "/".join(parts)
            if out["code"]:
                code = out["code"] + (f" {out['code_version']}" if out["code_version"] else "")
                text = f"{text} ({code})" if text else code
            out["text"] = text
        return out
    raise TypeError(f"fidelity: expected a string or a dict, got {type(fidelity).__name__}")


def write_json_atomic(path: Path, content: dict) -> None:
    """Write JSON atomically (:func:`pygfm._files.atomic_write_json`); kept for callers."""
    atomic_write_json(path, content)


def _file_digest(path: Path) -> tuple[int, int]:
    """(size in bytes, CRC32) of a file."""
    crc, size = 0, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def _adios():
    try:
        import adios2
    except ImportError as error:  # pragma: no cover - adios2 is a dependency
        raise ImportError("pygfm datasets need the adios2 package: pip install adios2") from error
    return adios2


def _adios_message(error: Exception) -> str:
    return _ANSI.sub("", str(error)).strip().splitlines()[0][:300]


def _write_shard(path: Path, block: SampleBlock, attributes: dict) -> dict:
    """Write one non-empty block as a BP5 file; returns its manifest entry."""
    adios2 = _adios()
    io = adios2.Adios().declare_io(f"pygfm-write-{uuid.uuid4().hex}")
    io.set_engine("BP5")
    io.set_parameters({"Profile": "Off"})
    with adios2.Stream(io, str(path), "w") as stream:
        for name, value in block.arrays.items():
            stream.write(name, np.ascontiguousarray(value))
        for name, value in attributes.items():
            stream.write_attribute(name, value)
    files = {}
    for item in sorted(path.iterdir()):
        size, crc = _file_digest(item)
        files[item.name] = {"bytes": size, "crc32": crc}
    ids = block.arrays["sample_id"]
    label_counts = {label: int(block.arrays[f"has_{label}"].sum())
                    for label in LABELS if f"has_{label}" in block.arrays}
    property_counts = {name: int(block.arrays[f"has_{name}"].sum())
                       for name in PROPERTIES if f"has_{name}" in block.arrays}
    return {"path": path.name, "num_samples": len(block), "num_atoms": block.num_atoms,
            "first_id": int(ids.min()), "last_id": int(ids.max()),
            "atomic_numbers": np.unique(block.arrays["numbers"]).tolist(),
            "label_counts": label_counts, "property_counts": property_counts, "files": files}


def _elements(numbers: Iterable[int]) -> list[str]:
    from ase.data import chemical_symbols
    return [chemical_symbols[z] for z in sorted({int(z) for z in numbers})]


def write_dataset(path, samples: Iterable, *, name: str, fidelity, description: str = "",
                  shard_size: int = 50_000, overwrite: bool = False, comm=None,
                  progress: bool = False, statistics: bool = True,
                  total: int | None = None,
                  validate: Callable[[dict], None] | None = None,
                  skip_overlapping: bool = False,
                  **label_keys) -> "AtomicDataset | None":
    """Write samples (``ase.Atoms`` with labels, or :class:`Sample`) as a dataset.

    ``samples`` is this rank's share when ``comm`` (an mpi4py communicator) is
    given: every rank passes the items whose input position k satisfies
    ``k % size == rank`` (checked), and the dataset's order is the input order.
    An item may also be a ``(k, sample)`` pair, as a format reader's ``read(path,
    options, rank, size)`` yields them: k is the input position (checked: k % size
    == rank, increasing) and becomes the sample id, so a reader may skip positions
    (a conformer with no value at the level read) and the dataset's order is still
    the input order, whatever the number of ranks. ``shard_size`` bounds the samples held in
    memory and per shard. ``label_keys`` (energy_key, forces_key, stress_key)
    say where to find labels in ``Atoms.info``/``arrays``.

    ``validate(manifest)`` runs on rank 0 before the dataset is published; raising
    there aborts the write and leaves nothing behind (``pygfm-data convert`` uses it
    to refuse a label key found in no structure).

    Returns the opened dataset (on rank 0 only when ``comm`` is given).
    Fails, naming the sample, on bad structures; nothing is left behind then.
    ``skip_overlapping``: a structure with overlapping atoms (closer than
    :data:`~pygfm.data.overlap.MIN_DISTANCE`) is left out instead (its id is a
    gap), and the manifest's ``skipped`` says how many and which (the first 20).
    """
    if not name or "/" in name:
        raise ValueError(f"name: {name!r} is not a usable dataset name")
    if shard_size < 1:
        raise ValueError(f"shard_size: must be at least 1, got {shard_size}")
    fidelity = normalize_fidelity(fidelity)
    target = Path(path)
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    error = None
    if rank == 0 and (target.exists() or target.is_symlink()):
        if not overwrite:
            error = FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to "
                                    "replace it")
        else:
            try:
                check_replaceable(target)
            except FileExistsError as caught:
                error = caught
    if comm is not None:
        error = comm.bcast(error)
    if error is not None:
        raise error
    tmp = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
    if rank == 0:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as caught:
            error = caught
    if comm is not None:  # also waits for rank 0 to have made tmp, or tells of its failure
        tmp, error = comm.bcast((tmp, error))
    if error is not None:
        raise error

    base_attributes = {
        "format": FORMAT_NAME, "format_version": np.array([FORMAT_VERSION], dtype=np.int64),
        "dataset": name, "description": description or "",
        "fidelity": json.dumps(fidelity), "fidelity_text": fidelity["text"],
        "units": json.dumps(UNITS),
    }
    entries, failure, skipped = [], None, None
    try:
        skipped = [] if skip_overlapping else None
        entries = _write_rank_shards(tmp, samples, name, rank, size, shard_size,
                                     base_attributes, progress and rank == 0, total, label_keys,
                                     skipped)
    except BaseException as caught:  # noqa: BLE001 - re-raised after cleaning up
        failure = caught
    failures = [failure] if comm is None else comm.allgather(
        None if failure is None else f"rank {rank}: {failure}")
    if any(f is not None for f in failures):
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure
        raise RuntimeError("write_dataset: another rank failed: "
                           + "; ".join(str(f) for f in failures if f is not None))
    all_entries = entries if comm is None else [e for part in comm.gather(entries) or [] for e in part]
    all_skipped = (skipped or []) if comm is None else sorted(
        item for part in comm.gather(skipped or []) or [] for item in part)
    # positions given with the samples were checked one by one (and may have gaps)
    paired = any([entry.pop("_pairs", False) for entry in all_entries]) or bool(all_skipped)
    result = None
    if rank == 0:
        try:
            if not paired:
                _check_round_robin(all_entries, size)
            manifest = _manifest(all_entries, name, description, fidelity)
            if all_skipped:
                manifest["skipped"] = {
                    "count": len(all_skipped), "why": "overlapping atoms",
                    "first": [message for _, message in all_skipped[:_SKIPPED_LISTED]
                              if message]}
            if validate is not None:
                validate(manifest)
            write_json_atomic(tmp / MANIFEST, manifest)
            _publish(tmp, target, overwrite)
        except BaseException as caught:  # noqa: BLE001 - re-raised below
            shutil.rmtree(tmp, ignore_errors=True)
            failure = caught
        else:
            try:
                dataset = AtomicDataset(target)
                if statistics and len(dataset):
                    from .statistics import compute_statistics
                    write_json_atomic(target / STATISTICS, compute_statistics(dataset))
                result = AtomicDataset(target)
            except BaseException as caught:  # noqa: BLE001 - re-raised below
                failure = caught
    if comm is not None:
        # the other ranks wait here for rank 0 and learn whether it failed (raising
        # on rank 0 alone would leave them waiting forever)
        message = comm.bcast(None if failure is None else f"rank 0: {failure}")
        if message is not None and failure is None:
            raise RuntimeError(f"write_dataset: another rank failed: {message}")
    if failure is not None:
        raise failure
    return result


def _check_round_robin(entries, size: int) -> None:
    """Sample ids are r, r+P, r+2P, ... on rank r; they are 0..S-1 only if every rank
    got its round-robin share of the input."""
    per_rank = [0] * size
    for entry in entries:
        per_rank[int(entry["path"].split("-")[1][1:])] += entry["num_samples"]
    total = sum(per_rank)
    if any(count != len(range(r, total, size)) for r, count in enumerate(per_rank)):
        raise ValueError(f"write_dataset: the ranks wrote {per_rank} samples; each rank r "
                         f"must pass input items r, r+{size}, r+{2 * size}, ... so that the "
                         "dataset keeps the input order")


_SKIPPED_LISTED = 20  # skipped structures named in the manifest


def _write_rank_shards(tmp, samples, name, rank, size, shard_size, attributes, progress,
                       total, label_keys, skipped: list | None = None) -> list[dict]:
    """This rank's shards; ``skipped`` (a list) collects (id, message) of the
    structures with overlapping atoms left out (None: such a structure is an error)."""
    entries, pending = [], []
    bar = _progress(total, f"writing {name}") if progress else None
    paired, previous = False, -1

    def flush():
        block = SampleBlock.from_samples(pending, name)
        shard = tmp / f"shard-r{rank:04d}-{len(entries):05d}.bp"
        present = [label for label in LABELS if f"has_{label}" in block.arrays]
        shard_attributes = dict(attributes, labels=present or ["none"],
                                elements=_elements(block.arrays["numbers"]),
                                num_samples=np.array([len(block)], dtype=np.int64),
                                num_atoms=np.array([block.num_atoms], dtype=np.int64))
        entries.append(_write_shard(shard, block, shard_attributes))
        if paired:
            entries[-1]["_pairs"] = True
        pending.clear()

    for position, item in enumerate(samples):
        index = rank + position * size
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (int, np.integer)):
            index, item = int(item[0]), item[1]
            if index % size != rank or index <= previous:  # ids would collide or disorder
                raise ValueError(f"write_dataset: rank {rank} of {size} got input position "
                                 f"{index} after {previous}; each rank takes positions k "
                                 f"with k % {size} == {rank}, in increasing order")
            paired, previous = True, index
        if isinstance(item, Sample):
            sample = replace(item, dataset=name, index=index)
        else:
            sample = Sample.from_ase(item, dataset=name, index=index, **label_keys)
        try:
            sample.check_overlap()
        except ValueError as error:
            if skipped is None:
                raise
            # keep every id (a count) but only the first messages: bounded memory
            skipped.append((index, str(error) if len(skipped) < _SKIPPED_LISTED else ""))
            paired = True  # the ids now have a gap, as a reader's skipped positions
            if bar is not None:
                bar.update(size)
            continue
        pending.append(sample)
        if len(pending) >= shard_size:
            flush()
        if bar is not None:
            bar.update(size)
    if pending:
        flush()
    if bar is not None:
        bar.close()
    return entries


def _progress(total, description):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=description, unit="structures", mininterval=1.0)


def _manifest(entries, name, description, fidelity) -> dict:
    entries = sorted(entries, key=lambda e: e["path"])
    numbers, label_counts, property_counts = set(), {}, {}
    for entry in entries:
        numbers.update(entry["atomic_numbers"])
        for label, count in entry["label_counts"].items():
            label_counts[label] = label_counts.get(label, 0) + count
        for prop, count in entry.get("property_counts", {}).items():
            property_counts[prop] = property_counts.get(prop, 0) + count
    labels = [label for label in LABELS if label_counts.get(label)]
    num_samples = sum(e["num_samples"] for e in entries)
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": name,
        "description": description, "fidelity": fidelity, "units": UNITS,
        "elements": _elements(numbers), "labels": labels,
        "label_counts": {label: label_counts.get(label, 0) for label in LABELS},
        # samples with a known total charge / spin multiplicity (optional arrays)
        "property_counts": {prop: property_counts.get(prop, 0) for prop in PROPERTIES},
        "num_samples": num_samples, "num_atoms": sum(e["num_atoms"] for e in entries),
        # ids skip positions a reader left out (only written when they do)
        **({"id_gaps": True} if entries and max(e["last_id"] for e in entries) + 1
           != num_samples else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "writer": _writer(), "shards": entries,
    }


def _writer() -> str:
    from .. import __version__
    return f"pygfm {__version__}"


def check_replaceable(target: Path) -> None:
    """Raise FileExistsError, naming ``target`` and why, unless it is a pygfm dataset
    (a directory whose manifest has our format name) holding nothing but the
    dataset's own files: the only thing ``overwrite`` may remove."""
    target = Path(target)
    refusal = f"; --overwrite replaces only a pygfm dataset: not replacing {target}"
    if target.is_symlink() or not target.is_dir():
        kind = "a symbolic link" if target.is_symlink() else "a file, not a directory"
        raise FileExistsError(f"{target} is {kind}{refusal}")
    try:
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileExistsError(f"{target} holds no {MANIFEST}, so it is not a pygfm "
                              f"dataset{refusal}") from None
    except (OSError, ValueError) as error:
        raise FileExistsError(f"{target / MANIFEST} cannot be read ({error}){refusal}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise FileExistsError(f"{target / MANIFEST} is not a pygfm dataset manifest{refusal}")
    shards = manifest.get("shards")
    own = {MANIFEST, STATISTICS} | {shard.get("path") for shard in shards or []
                                    if isinstance(shard, dict)}
    foreign = sorted(entry for entry in os.listdir(target) if entry not in own
                     and not is_temporary(entry, MANIFEST) and not is_temporary(entry, STATISTICS))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise FileExistsError(f"{target} holds files that are not part of the dataset ({shown}) "
                              f"and would be deleted; move them out first{refusal}")


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename the complete dataset ``tmp`` to ``target``; an old dataset there is
    removed only after the new one is in place."""
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{target} appeared while writing; not replacing it")
        check_replaceable(target)  # again: it may have changed while we wrote
    replace_path(tmp, target)


def _read_shard_ranges(path: Path, ranges, names=None, where: str | None = None,
                       index: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """Read samples start..stop-1 of a shard for each (start, stop) in ``ranges``
    (stop None: to the end), with one open of the file: a dict of arrays (all, or
    ``names``) per range, atom_offset relative to the range's first atom.
    ``index``: the shard's (atom_offset, atom_count) if already known."""
    adios2 = _adios()
    where = where or str(path)
    try:
        with adios2.FileReader(str(path)) as reader:
            available = reader.available_variables()
            wanted = [n for n in (available if names is None else names)
                      if n in available and n not in ("atom_count", "atom_offset")]
            if index is None:
                offsets = reader.read("atom_offset").astype(np.int64)
                counts = reader.read("atom_count").astype(np.int64)
            else:
                offsets, counts = index
            results = []
            for start, stop in ranges:
                stop = len(counts) if stop is None else stop
                if stop <= start:
                    results.append({"atom_count": counts[:0], "atom_offset": offsets[:0]})
                    continue
                first_atom = int(offsets[start])
                last_atom = int(offsets[stop - 1]) + int(counts[stop - 1])  # no int64 overflow
                out = {}
                for name in wanted:
                    shape = [int(x) for x in available[name]["Shape"].split(",")]
                    lo, hi = (first_atom, last_atom) if name in PER_ATOM else (start, stop)
                    if hi > shape[0]:
                        raise DatasetError(f"{where}: {name!r} has {shape[0]} rows; samples "
                                           f"need {hi} (corrupt shard)")
                    out[name] = reader.read(name, [lo] + [0] * (len(shape) - 1),
                                            [hi - lo] + shape[1:])
                    # geometry is never missing: a NaN or inf there is a damaged file
                    if name in ("positions", "cell") and not np.isfinite(out[name]).all():
                        raise DatasetError(f"{where}: {name!r} of samples {start}..{stop - 1} "
                                           "hold NaN or infinite values (corrupt shard; "
                                           "`pygfm-data verify` checks every file)")
                out["atom_count"] = counts[start:stop]
                out["atom_offset"] = offsets[start:stop] - first_atom
                results.append(out)
            return results
    except DatasetError:
        raise
    except (RuntimeError, ValueError, KeyError) as error:
        raise DatasetError(f"{where}: cannot read the shard ({_adios_message(error)})") from error


def _read_shard_arrays(path: Path, names=None, start: int = 0, stop: int | None = None,
                       where: str | None = None) -> dict[str, np.ndarray]:
    """Read a shard's arrays (all, or ``names``); with start/stop, only samples
    start..stop-1 and their atoms (atom_offset then relative to the first)."""
    return _read_shard_ranges(path, [(start, stop)], names, where)[0]


# Samples of one shard with fewer atoms than this between them are read in one
# selection, farther apart in separate ones: a random batch from a big shard must
# not read the whole shard, but one read call (about 0.5 ms for all arrays) costs
# as much as reading a few tens of thousands of atoms (about 56 bytes each).
_RUN_GAP_ATOMS = 32768


class AtomicDataset(Sequence):
    """A pygfm dataset directory opened for reading (see :func:`open_dataset`).

    ``len``, ``dataset[k]`` (a :class:`Sample`; its ``index`` is its position in
    the whole dataset, so k unless this is a view),
    ``dataset[a:b]`` / ``dataset[[i, j]]`` (a view of those samples),
    :meth:`read_block` for many samples at once, :meth:`load` to hold everything in
    memory. Attributes: ``name``, ``fidelity`` (dict), ``units``, ``elements``,
    ``labels``, ``num_atoms`` ([len] atoms per sample), ``statistics`` (dict or None).
    """

    def __init__(self, path, *, verify: bool = False, _indices: np.ndarray | None = None,
                 _parent: "AtomicDataset | None" = None):
        if _parent is not None:
            self.__dict__.update({k: v for k, v in _parent.__dict__.items()
                                  if k not in ("_indices",)})
            self._indices = _indices
            return
        self.path = Path(path)
        self.manifest = _load_manifest(self.path)
        m = self.manifest
        self.name, self.fidelity, self.units = m["name"], m["fidelity"], m["units"]
        self.elements, self.labels = list(m["elements"]), list(m["labels"])
        self.description = m.get("description", "")
        self._shards = [self.path / entry["path"] for entry in m["shards"]]
        self._check_files(deep=verify)
        self._index_samples()
        self._memory: list[SampleBlock] | None = None
        self._indices = None
        statistics_path = self.path / STATISTICS
        self.statistics = None
        if statistics_path.exists():
            try:
                self.statistics = json.loads(statistics_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise DatasetError(f"{statistics_path}: not valid JSON ({error})") from error
        if verify:
            self.verify()

    # -- opening ---------------------------------------------------------------
    def _check_files(self, deep: bool) -> None:
        for entry, shard in zip(self.manifest["shards"], self._shards):
            if not shard.is_dir():
                raise DatasetError(f"{shard}: shard listed in the manifest is missing")
            for file_name, expected in entry["files"].items():
                file_path = shard / file_name
                if not file_path.exists():
                    raise DatasetError(f"{file_path}: missing (the dataset is incomplete)")
                # BP5 readers hang on truncated data files, so sizes are always checked.
                actual = file_path.stat().st_size
                if actual != expected["bytes"]:
                    raise DatasetError(f"{file_path}: {actual} bytes, the manifest says "
                                       f"{expected['bytes']} (truncated or modified)")
                if deep and _file_digest(file_path)[1] != expected["crc32"]:
                    raise DatasetError(f"{file_path}: checksum mismatch (corrupt file)")

    def _index_samples(self) -> None:
        shard_of, local_of, ids_all, counts_all = [], [], [], []
        self._shard_index: list[tuple[np.ndarray, np.ndarray]] = []
        for number, (entry, shard) in enumerate(zip(self.manifest["shards"], self._shards)):
            arrays = _read_shard_arrays(shard, names=("sample_id",), where=str(shard))
            ids = arrays["sample_id"].astype(np.int64)
            if len(ids) != entry["num_samples"]:
                raise DatasetError(f"{shard}: {len(ids)} samples, the manifest says "
                                   f"{entry['num_samples']}")
            if int(arrays["atom_count"].sum()) != entry["num_atoms"]:
                raise DatasetError(f"{shard}: {int(arrays['atom_count'].sum())} atoms, the "
                                   f"manifest says {entry['num_atoms']}")
            self._shard_index.append((arrays["atom_offset"], arrays["atom_count"]))
            shard_of.append(np.full(len(ids), number, dtype=np.int32))
            local_of.append(np.arange(len(ids), dtype=np.int64))
            ids_all.append(ids)
            counts_all.append(arrays["atom_count"])
        total = self.manifest["num_samples"]
        ids = np.concatenate(ids_all) if ids_all else np.zeros(0, np.int64)
        # ids are input positions, 0..S-1; with gaps (the manifest says so) where a
        # reader skipped structures: the k-th sample has the k-th smallest id
        if not self.manifest.get("id_gaps"):
            if len(ids) != total or (total and not np.array_equal(np.sort(ids),
                                                                  np.arange(total))):
                raise DatasetError(f"{self.path}: sample ids are not 0..{total - 1} "
                                   "(shards missing, duplicated or corrupt)")
            order = np.empty(total, dtype=np.int64)
            order[ids] = np.arange(total)
        else:
            order = np.argsort(ids, kind="stable")
            if len(ids) != total or (total > 1 and not (np.diff(ids[order]) > 0).all()):
                raise DatasetError(f"{self.path}: {len(ids)} sample ids for {total} samples, "
                                   "or repeated ids (shards missing, duplicated or corrupt)")
        self._shard_of = (np.concatenate(shard_of) if shard_of else np.zeros(0, np.int32))[order]
        self._local_of = (np.concatenate(local_of) if local_of else ids)[order]
        self._atom_counts = (np.concatenate(counts_all) if counts_all else ids)[order]

    # -- sequence protocol -----------------------------------------------------
    def _global(self, positions: np.ndarray) -> np.ndarray:
        return positions if self._indices is None else self._indices[positions]

    def __len__(self) -> int:
        return len(self._shard_of) if self._indices is None else len(self._indices)

    @property
    def num_atoms(self) -> np.ndarray:
        """[len] int64: atoms of each sample (for atom-budget batching)."""
        return self._atom_counts if self._indices is None else self._atom_counts[self._indices]

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._view(np.arange(len(self))[key])
        if isinstance(key, (list, tuple, np.ndarray)):
            key = np.asarray(key)
            if key.dtype == bool:
                if key.shape != (len(self),):
                    raise IndexError(f"{self.name}: a boolean mask of shape {key.shape} for "
                                     f"{len(self)} samples")
                key = np.flatnonzero(key)
            positions = key.astype(np.int64).reshape(-1)
            if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
                raise IndexError(f"{self.name}: indices out of range for {len(self)} samples")
            return self._view(positions % max(len(self), 1))
        if not isinstance(key, (int, np.integer)):
            raise TypeError(f"{self.name}: indices must be integers, slices or lists, "
                            f"not {type(key).__name__}")
        k = int(key)
        if not -len(self) <= k < len(self):
            raise IndexError(f"{self.name}: index {k} out of range for {len(self)} samples")
        k %= len(self)
        return self._read_global(self._global(np.array([k]))).sample(0)

    def __iter__(self):
        chunk = 4096
        for start in range(0, len(self), chunk):
            block = self.read_block(start, min(start + chunk, len(self)))
            for k in range(len(block)):
                yield block.sample(k)

    def _view(self, positions: np.ndarray) -> "AtomicDataset":
        return AtomicDataset(None, _indices=self._global(positions), _parent=self)

    def __repr__(self) -> str:
        return (f"AtomicDataset({self.name!r}, {len(self)} samples, "
                f"fidelity={self.fidelity['text']!r}, labels={self.labels}, path='{self.path}')")

    # -- bulk reads ------------------------------------------------------------
    def read_block(self, start: int = 0, stop: int | None = None) -> SampleBlock:
        """Samples start..stop-1 (positions in this dataset or view) as one block,
        in order; ``sample_id`` holds their index in the whole dataset."""
        stop = len(self) if stop is None else min(stop, len(self))
        if not 0 <= start <= stop:
            raise IndexError(f"{self.name}: bad range {start}:{stop} for {len(self)} samples")
        return self._read_global(self._global(np.arange(start, stop)))

    def take(self, positions) -> SampleBlock:
        """Samples at ``positions`` (of this dataset or view) as one block, in order."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"{self.name}: indices out of range for {len(self)} samples")
        return self._read_global(self._global(positions % max(len(self), 1)))

    def _read_global(self, ids: np.ndarray) -> SampleBlock:
        ids = np.asarray(ids, dtype=np.int64)
        parts, where = self._memory, self._shard_of[ids]
        blocks, slots = [], []
        for shard in np.unique(where):
            mine = np.flatnonzero(where == shard)
            local = self._local_of[ids[mine]]
            if parts is not None:
                block = parts[shard].select(local)
            else:
                block = self._read_from_shard(int(shard), local)
            blocks.append(block)
            slots.append(mine)
        if not blocks:
            return SampleBlock.from_samples([], self.name)
        joined = SampleBlock.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        order = np.empty(len(ids), dtype=np.int64)
        order[np.concatenate(slots)] = np.arange(len(ids))
        result = joined.select(order) if len(blocks) > 1 or not np.array_equal(
            order, np.arange(len(ids))) else joined
        result.arrays["sample_id"] = ids.copy()
        return result

    def _read_from_shard(self, shard: int, local: np.ndarray) -> SampleBlock:
        """Samples ``local`` (positions in the shard, any order) read in runs."""
        wanted = np.unique(local)
        offsets, counts = self._shard_index[shard]
        gap_atoms = offsets[wanted[1:]] - (offsets[wanted[:-1]] + counts[wanted[:-1]])
        breaks = np.flatnonzero(gap_atoms > _RUN_GAP_ATOMS) + 1
        run_first = wanted[np.concatenate(([0], breaks))]
        run_last = wanted[np.concatenate((breaks - 1, [len(wanted) - 1]))]
        parts = _read_shard_ranges(self._shards[shard], list(zip(run_first, run_last + 1)),
                                   index=self._shard_index[shard])
        blocks = [SampleBlock(arrays, self.name) for arrays in parts]
        joined = SampleBlock.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        run_offset = np.concatenate(([0], np.cumsum(run_last - run_first + 1)[:-1]))
        run = np.searchsorted(run_first, local, side="right") - 1
        return joined.select(run_offset[run] + local - run_first[run])

    def load(self) -> "AtomicDataset":
        """Read every shard into memory (checked); later reads come from memory."""
        if self._memory is None:
            memory = []
            for shard in self._shards:
                block = SampleBlock(_read_shard_arrays(shard), self.name)
                block.check(str(shard))
                memory.append(block)
            self._memory = memory
        return self

    def verify(self) -> None:
        """Check every file's checksum and every shard's arrays; raise DatasetError
        naming the file and the problem."""
        self._check_files(deep=True)
        for shard in self._shards:
            SampleBlock(_read_shard_arrays(shard), self.name).check(str(shard))

    def rank_range(self, rank: int, world_size: int) -> tuple[int, int]:
        """The contiguous near-equal range of samples rank ``rank`` of ``world_size`` owns."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} is not in 0..{world_size - 1}")
        n = len(self)
        return rank * n // world_size, (rank + 1) * n // world_size


def _load_manifest(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        partial = ".partial-" in path.name
        hint = " (an interrupted conversion)" if partial else (
            "; is it a HydraGNN file? convert it with `pygfm-data convert`"
            if path.suffix == ".bp" else "")
        raise DatasetError(f"{path}: not a complete pygfm dataset: {MANIFEST} is missing{hint}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{manifest_path}: not valid JSON ({error})") from error
    if manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{manifest_path}: format {manifest.get('format')!r}, expected "
                           f"{FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{manifest_path}: format version {version}; this pygfm reads "
                           f"version {FORMAT_VERSION}")
    required = ("name", "fidelity", "units", "elements", "labels", "num_samples", "shards")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise DatasetError(f"{manifest_path}: missing keys {missing}")
    return manifest


def open_dataset(path, *, verify: bool = False) -> AtomicDataset:
    """Open a pygfm dataset directory. ``verify`` also checks every file's
    checksum and the arrays of every shard (reads everything once)."""
    return AtomicDataset(path, verify=verify)


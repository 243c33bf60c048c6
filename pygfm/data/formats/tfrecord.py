"""QCML: TensorFlow Datasets (TFRecord) shards of ``tf.train.Example`` records, read
without TensorFlow.

QCML (Ganscha et al., Sci Data 12, 406 (2025); 33.5M PBE0 calculations with
FHI-aims) is published as a TFDS dataset, ``gs://qcml-datasets/tfds/qcml/
dft_force_field/1.0.0``: files ``qcml-full.tfrecord-NNNNN-of-MMMMM`` next to
TFDS's ``dataset_info.json`` (shard lengths) and ``features.json`` (feature
dtypes and shapes). Each record holds ``atomic_numbers``, ``positions`` [n, 3],
``charge``, ``multiplicity``, ``pbe0_energy``, ``pbe0_forces`` [n, 3],
``pbe0_formation_energy``, ``is_outlier`` and ``key_hash``; TFDS stores floats as
float32 lists (float64 features too) and integers as int64 lists.

File layout (TensorFlow's record framing): per record a little-endian uint64
length, the masked CRC32C of those 8 bytes, the bytes of the serialized
``tf.train.Example`` and their masked CRC32C. The length CRC is always checked
(a damaged or truncated file is an error naming the shard and the record); the
data CRC when ``google-crc32c`` is installed (``pip install google-crc32c``; the
protobuf decoding catches most other damage, not a flipped bit in a float).

Units: the release does not state them in the files. pygfm reads QCML as eV, Å
and eV/Å (FHI-aims' own units, and how HydraGNN, whose foundation model trains on
QCML, reads it: no conversion, unlike its ANI-1x and nabla2DFT readers); some
third-party loaders convert the forces from hartree/bohr instead. If your copy is
in atomic units, say so with ``--units energy=hartree,forces_length=bohr``.
Records flagged ``is_outlier`` (QCML's own quality flag) are kept as published;
the flag is not stored.

Work is shared between MPI ranks by record position over all shards in name order;
other ranks' records are skipped by seeking over them, never decoded.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from ..sample import Sample
from . import Format, ReadOptions, Units, register

__all__ = ["read_qcml", "tfrecord_records"]

QCML_UNITS = Units(energy="eV", length="Å")
QCML_ENERGY, QCML_FORCES = "pbe0_energy", "pbe0_forces"
_SHARD = re.compile(r".+\.tfrecord(-\d{5}-of-\d{5})?$")
_HEADER = 12  # uint64 length + uint32 masked CRC32C of it


# ---------------------------------------------------------------- CRC32C

def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def _crc32c_small(data: bytes) -> int:
    """CRC32C (Castagnoli) in Python: for the 8-byte length fields."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_crc32c():
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------- record framing

def _header_ok(header: bytes) -> bool:
    length_bytes, crc = header[:8], struct.unpack("<I", header[8:12])[0]
    return len(header) == _HEADER and _masked(_crc32c_small(length_bytes)) == crc


def tfrecord_records(path: Path, wanted=None) -> Iterator[tuple[int, bytes | None]]:
    """(record number, bytes) of one TFRecord file; ``wanted(k) -> bool`` selects the
    records to read (the others are seeked over and yielded as None)."""
    crc_of = _fast_crc32c()
    with open(path, "rb") as handle:
        number = 0
        while True:
            header = handle.read(_HEADER)
            if not header:
                return
            if len(header) < _HEADER or not _header_ok(header):
                raise ValueError(f"{path}: record {number}: damaged or truncated TFRecord "
                                 "framing (the length field's CRC32C does not match)")
            length = struct.unpack("<Q", header[:8])[0]
            if wanted is not None and not wanted(number):
                handle.seek(length + 4, 1)
                yield number, None
            else:
                data = handle.read(length)
                footer = handle.read(4)
                if len(data) < length or len(footer) < 4:
                    raise ValueError(f"{path}: record {number}: truncated ({len(data)} of "
                                     f"{length} bytes)")
                if crc_of is not None and _masked(crc_of(data)) != struct.unpack("<I", footer)[0]:
                    raise ValueError(f"{path}: record {number}: data CRC32C mismatch "
                                     "(a damaged file)")
                yield number, data
            number += 1


def _count_records(path: Path) -> int:
    return sum(1 for _ in tfrecord_records(path, wanted=lambda k: False))


# ---------------------------------------------------------------- tf.train.Example

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message: varints as int,
    length-delimited as bytes, fixed32/fixed64 as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > len(buf):
                raise ValueError("length-delimited field past the end of the message")
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature(buf: bytes):
    """A tf.train.Feature: bytes_list (1) -> list of bytes, float_list (2) ->
    float32 array, int64_list (3) -> int64 array."""
    for kind, _, body in _fields(buf):
        if kind == 1:
            return [value for _, _, value in _fields(body)]
        if kind == 2:
            # packed (wire 2) or one fixed32 (wire 5) per value: the same bytes
            parts = [np.frombuffer(value, dtype="<f4") for _, _, value in _fields(body)]
            return np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if kind == 3:
            values = []
            for _, wire, value in _fields(body):
                if wire == 2:  # packed
                    j = 0
                    while j < len(value):
                        v, j = _varint(value, j)
                        values.append(_signed(v))
                else:
                    values.append(_signed(value))
            return np.array(values, dtype=np.int64)
    return None  # an empty Feature


def parse_example(buf: bytes) -> dict:
    """A serialized tf.train.Example -> {feature name: list of bytes | ndarray}."""
    out = {}
    for number, _, features in _fields(buf):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(features):
            if entry_number != 1:
                continue
            key = value = None
            for field_number, _, part in _fields(entry):
                if field_number == 1:
                    key = part.decode("utf-8")
                elif field_number == 2:
                    value = _feature(part)
            if key is not None:
                out[key] = value
    return out


# ---------------------------------------------------------------- the dataset

def _shards(path: Path) -> list[Path]:
    """The TFRecord shards of a TFDS folder (``.../dft_force_field/1.0.0``, or a
    folder above one holding a single version) or a single shard file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path}: no such file or folder")
    shards = sorted(p for p in path.iterdir() if p.is_file() and _SHARD.match(p.name))
    if shards:
        return shards
    below = sorted({p.parent for p in path.rglob("*.tfrecord*") if _SHARD.match(p.name)})
    if len(below) == 1:
        return _shards(below[0])
    if below:
        raise ValueError(f"{path}: TFRecord shards in several folders "
                         f"({', '.join(map(str, below[:6]))}); name one (a TFDS version "
                         "folder such as qcml/dft_force_field/1.0.0)")
    raise ValueError(f"{path}: no TFRecord shards (*.tfrecord-NNNNN-of-MMMMM) in the folder")


def _shard_lengths(shards: list[Path]) -> list[int] | None:
    """Record counts from TFDS's dataset_info.json when it lists every shard."""
    info = shards[0].parent / "dataset_info.json"
    if not info.is_file():
        return None
    try:
        content = json.loads(info.read_text())
        splits, prefix = content.get("splits", []), content.get("name", "")
    except (OSError, ValueError, AttributeError):
        return None
    lengths = {}
    for split in splits:
        for k, length in enumerate(split.get("shardLengths", [])):
            total = len(split["shardLengths"])
            lengths[f"{prefix}-{split.get('name')}.tfrecord-{k:05d}-of-{total:05d}"] = int(length)
    if all(s.name in lengths for s in shards):
        return [lengths[s.name] for s in shards]
    return None


def _sniff(path: Path) -> bool:
    path = Path(path)
    try:
        shard = _shards(path)[0]
    except (ValueError, OSError):
        return False
    with open(shard, "rb") as handle:
        return _header_ok(handle.read(_HEADER))


def _count(path, options=None) -> int:
    shards = _shards(Path(path))
    lengths = _shard_lengths(shards)
    return sum(lengths) if lengths is not None else sum(map(_count_records, shards))


def _scalar(record, key, where):
    value = record.get(key)
    if value is None or len(value) == 0:
        return None
    if len(value) != 1:
        raise ValueError(f"{where}: {key!r} holds {len(value)} values, not one")
    return float(value[0])


def _sample(record: dict, position: int, options: ReadOptions, units: Units, where: str):
    missing = [k for k in ("atomic_numbers", "positions") if record.get(k) is None]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)}; the record has "
                         f"{', '.join(sorted(record))}")
    numbers = np.asarray(record["atomic_numbers"], dtype=np.int64)
    n = numbers.shape[0]
    positions = np.asarray(record["positions"], dtype=np.float64)
    if positions.size != 3 * n:
        raise ValueError(f"{where}: {positions.size} position values for {n} atoms")
    energy_key = options.keys.energy or QCML_ENERGY
    forces_key = options.keys.forces or QCML_FORCES
    energy = _scalar(record, energy_key, where)
    forces = record.get(forces_key)
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.size != 3 * n:
            raise ValueError(f"{where}: {forces.size} {forces_key!r} values for {n} atoms")
        forces = forces.reshape(n, 3)
        sign = -1.0 if "grad" in forces_key.lower() else 1.0
        forces = None if not np.isfinite(forces).all() else sign * forces * units.forces_factor
    if energy is not None and not np.isfinite(energy):
        energy = None
    if energy is not None:
        energy *= units.energy_factor
    charge = _scalar(record, "charge", where)
    spin = _scalar(record, "multiplicity", where)
    return Sample(numbers=numbers, positions=positions.reshape(n, 3) * units.length_factor,
                  energy=energy, forces=forces, dataset=options.dataset or where,
                  index=position, charge=charge, spin=spin)


def read_qcml(path, options: ReadOptions | None = None, rank: int = 0, size: int = 1
              ) -> Iterator[tuple[int, Sample]]:
    """Records of a QCML TFDS folder (or one shard) as ``(position, Sample)`` in eV,
    Å, eV/Å for positions ``k % size == rank``; see the module docstring."""
    options = options or ReadOptions()
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} of {size}: expected 0 <= rank < size")
    if options.level is not None:
        raise ValueError(f"{path}: QCML files hold one level of theory (PBE0); leave --level out")
    units = options.units or QCML_UNITS
    offset, checked = 0, False
    for shard in _shards(Path(path)):
        last = -1
        for number, data in tfrecord_records(shard, wanted=lambda k, o=offset:
                                             (o + k) % size == rank):
            last = number
            if data is None:
                continue
            position, where = offset + number, f"{shard}: record {number}"
            try:
                record = parse_example(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{where}: not a tf.train.Example ({exc})") from None
            if not checked:
                _check_keys(record, options, where)
                checked = True
            yield position, _sample(record, position, options, units, where)
        offset += last + 1


def _check_keys(record: dict, options: ReadOptions, where: str) -> None:
    for label, key in (("energy", options.keys.energy), ("forces", options.keys.forces),
                       ("stress", options.keys.stress)):
        if key is not None and key not in record:
            raise KeyError(f"{where}: no {label} under the key {key!r}; the record has "
                           f"{', '.join(sorted(record))}")
    if options.keys.stress is not None:
        raise ValueError(f"{where}: QCML records hold no stress (molecules)")


def _inspect(path) -> dict:
    shards = _shards(Path(path))
    first = None
    for _, data in tfrecord_records(shards[0]):
        first = parse_example(data)
        break
    features = shards[0].parent / "features.json"
    declared = None
    if features.is_file():
        try:
            spec = json.loads(features.read_text())["featuresDict"]["features"]
            declared = {name: (item.get("tensor") or {}).get("dtype", item.get(
                "pythonClassName", "").rsplit(".", 1)[-1]) for name, item in spec.items()}
        except (ValueError, KeyError, AttributeError):
            declared = None
    summary = None
    if first is not None:
        summary = {key: (f"{len(value)} bytes values" if isinstance(value, list) else
                         f"{value.dtype} x {value.size}" + (
                             f" = {value.tolist()}" if value.size == 1 else ""))
                   for key, value in sorted(first.items())}
    return {"format": "qcml", "shards": len(shards), "folder": str(shards[0].parent),
            "num_structures": _count(path), "features (features.json dtypes)": declared,
            "first_record": summary,
            "units": "eV, Å, eV/Å as read by default (not stated in the files; "
                     "--units energy=hartree,forces_length=bohr if yours are atomic units)",
            "labels": {"energy": QCML_ENERGY, "forces": QCML_FORCES}}


QCML = register(Format(
    name="qcml",
    description="QCML TFDS release (TFRecord shards of tf.train.Example; PBE0/FHI-aims, "
                "read as eV, Å, eV/Å; charge and multiplicity per record)",
    suffixes=(),
    sniff=_sniff,
    inspect=_inspect,
    read=read_qcml,
    count=_count,
    fidelity=lambda path, level: {"method": "PBE0", "basis": None, "code": "FHI-aims",
                                  "text": "PBE0 (FHI-aims)"},
))

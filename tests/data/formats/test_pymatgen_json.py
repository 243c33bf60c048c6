"""pymatgen JSON readers (MPtrj, Alexandria, records) on files pymatgen and monty write.

Expected values are computed here from the raw file content with independent
constants (ase.units, pymatgen's own Structure methods), never from pygfm output.
"""

import bz2
import gzip
import json
import lzma
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymatgen")
from ase import units as ase_units  # noqa: E402
from monty.serialization import dumpfn  # noqa: E402
from pymatgen.core import Lattice, Molecule, Structure  # noqa: E402
from pymatgen.entries.computed_entries import ComputedStructureEntry  # noqa: E402

from pygfm.data.formats import LabelKeys, ReadOptions, Units, detect, get_format  # noqa: E402
from pygfm.data.formats import pymatgen_json  # noqa: E402

KBAR_TO_EV_A3 = -0.1 * ase_units.GPa  # VASP kBar (positive in compression) -> ASE sign


def _structure(rng, n_atoms=None, oxidation=False):
    n = n_atoms or int(rng.integers(1, 6))
    lattice = Lattice.from_parameters(*(3.5 + rng.random(3) * 2), *(80 + rng.random(3) * 20))
    species = [str(s) for s in rng.choice(["Li", "Fe", "O", "Si", "Mn"], n)]
    # a grid keeps atoms apart; the jitter keeps coordinates irregular
    coords = [[(i + 0.5) / n, 0.25 + 0.1 * rng.random(), 0.5] for i in range(n)]
    structure = Structure(lattice, species, coords)
    if oxidation:
        structure.add_oxidation_state_by_guess()
    return structure


def _frame(rng, structure, with_stress=True):
    n = len(structure)
    raw = float(-5.0 * n + rng.random())
    correction = float(-0.3 * rng.random())
    stress = rng.normal(size=(3, 3)) * 20
    return {"structure": structure.as_dict(), "uncorrected_total_energy": raw,
            "corrected_total_energy": raw + correction,
            "energy_per_atom": (raw + correction) / n, "ef_per_atom": -1.0,
            "e_per_atom_relaxed": -5.1, "ef_per_atom_relaxed": -1.1,
            "force": rng.normal(size=(n, 3)).tolist(),
            "stress": ((stress + stress.T) / 2).tolist() if with_stress else None,
            "magmom": rng.random(n).tolist(), "bandgap": 0.0, "mp_id": None}


def _mptrj(rng, materials=3, frames=4):
    data = {}
    for m in range(materials):
        mp_id = f"mp-{100 + m}"
        structure = _structure(rng, oxidation=m == 1)
        data[mp_id] = {}
        for f in range(frames):
            frame = _frame(rng, structure, with_stress=f != 2)
            frame["mp_id"] = mp_id
            data[mp_id][f"mp-{900 + m}-{f % 2}-{f}"] = frame
    return data


def _frames(data):
    return [(f"{m}/{f}", frame) for m, frames in data.items() for f, frame in frames.items()]


@pytest.fixture
def rng():
    return np.random.default_rng(16)


def test_mptrj_labels_units_and_sign(tmp_path, rng):
    data = _mptrj(rng)
    path = tmp_path / "MPtrj_small.json"
    path.write_text(json.dumps(data))  # the real file is one plain JSON object
    fmt = detect(path)
    assert fmt is not None and fmt.name == "mptrj"
    samples = list(fmt.read(path))
    frames = _frames(data)
    assert [k for k, _ in samples] == list(range(len(frames)))
    for (_, sample), (_, frame) in zip(samples, frames):
        structure = Structure.from_dict(frame["structure"])
        np.testing.assert_allclose(sample.positions, structure.cart_coords, atol=1e-12)
        np.testing.assert_allclose(sample.cell, structure.lattice.matrix, atol=1e-12)
        assert sample.pbc.all()
        assert list(sample.numbers) == [site.specie.Z for site in structure]
        assert sample.energy == pytest.approx(frame["corrected_total_energy"], abs=1e-12)
        assert sample.energy == pytest.approx(frame["energy_per_atom"] * len(structure), abs=1e-9)
        np.testing.assert_allclose(sample.forces, frame["force"], atol=1e-12)
        if frame["stress"] is None:
            assert sample.stress is None
        else:
            np.testing.assert_allclose(sample.stress, np.array(frame["stress"]) * KBAR_TO_EV_A3,
                                       rtol=1e-12)

    info = fmt.inspect(path)
    assert info["first_entry"] == "mp-100/mp-900-0-0" and "corrected_total_energy" in \
        info["record_keys"]
    raw = list(fmt.read(path, ReadOptions(keys=LabelKeys(energy="uncorrected_total_energy"))))
    assert [s.energy for _, s in raw] == [f["uncorrected_total_energy"] for _, f in frames]
    per_atom = list(fmt.read(path, ReadOptions(keys=LabelKeys(energy="energy_per_atom"))))
    np.testing.assert_allclose([s.energy for _, s in per_atom],
                               [f["corrected_total_energy"] for _, f in frames], rtol=1e-12)


def test_mptrj_compressed_and_tiny_chunks(tmp_path, rng, monkeypatch):
    data = _mptrj(rng, materials=2, frames=3)
    plain = tmp_path / "m.json"
    plain.write_text(json.dumps(data, indent=1))
    reference = [(k, s.energy, s.positions.copy()) for k, s in get_format("mptrj").read(plain)]
    for name, opener in (("m.json.bz2", bz2.open), ("m.json.gz", gzip.open),
                         ("m.json.xz", lzma.open)):
        path = tmp_path / name
        with opener(path, "wt") as file:
            json.dump(data, file)
        assert detect(path).name == "mptrj"
        got = [(k, s.energy) for k, s in get_format("mptrj").read(path)]
        assert got == [(k, e) for k, e, _ in reference]
    # every token boundary falls across a buffer refill
    monkeypatch.setattr(pymatgen_json._JsonStream, "CHUNK", 7)
    small = list(get_format("mptrj").read(plain))
    assert [(k, s.energy) for k, s in small] == [(k, e) for k, e, _ in reference]
    for (_, s), (_, _, positions) in zip(small, reference):
        np.testing.assert_array_equal(s.positions, positions)


def test_mptrj_ranks_are_balanced_by_frame(tmp_path, rng):
    data = _mptrj(rng, materials=3, frames=5)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    fmt = get_format("mptrj")
    everything = {k: s.energy for k, s in fmt.read(path)}
    union = {}
    for rank in range(4):
        got = list(fmt.read(path, rank=rank, size=4))
        positions = [k for k, _ in got]
        assert positions == sorted(positions)
        assert all(k % 4 == rank for k in positions)
        union.update({k: s.energy for k, s in got})
    assert union == everything and len(everything) == 15


def test_alexandria_entries_bz2(tmp_path, rng):
    entries = []
    for i in range(5):
        structure = _structure(rng)
        structure.add_site_property("forces", rng.normal(size=(len(structure), 3)).tolist())
        structure.add_site_property("magmom", [0.0] * len(structure))
        energy = float(-4.0 * len(structure))
        entries.append(ComputedStructureEntry(
            structure, energy, correction=-0.5, entry_id=f"agm00{i}",
            data={"mat_id": f"agm00{i}", "energy_corrected": energy - 0.5, "e_form": -0.1}))
    path = tmp_path / "alexandria_000.json.bz2"
    dumpfn({"@module": "x", "entries": entries}, path)  # monty writes bz2 by suffix
    with bz2.open(path, "rt") as file:
        raw = json.load(file)["entries"]
    fmt = detect(path)
    assert fmt.name == "alexandria"
    samples = list(fmt.read(path))
    assert len(samples) == 5
    for (_, sample), entry, item in zip(samples, entries, raw):
        assert sample.energy == pytest.approx(entry.uncorrected_energy, abs=1e-12)
        np.testing.assert_allclose(sample.positions, entry.structure.cart_coords, atol=1e-12)
        np.testing.assert_allclose(sample.forces, entry.structure.site_properties["forces"])
        assert sample.stress is None
    corrected = list(fmt.read(path, ReadOptions(keys=LabelKeys(energy="data.energy_corrected"))))
    assert [s.energy for _, s in corrected] == [e.energy for e in entries]
    info = fmt.inspect(path)
    assert "energy_corrected" in info["data_keys"] and "forces" in info["site_properties"]
    # a plain list of entries (json.dump of as_dict()) reads the same
    listed = tmp_path / "entries.json"
    listed.write_text(json.dumps([e.as_dict() for e in entries]))
    assert detect(listed).name == "alexandria"
    assert [s.energy for _, s in fmt.read(listed)] == [s.energy for _, s in samples]


def test_json_records_layouts(tmp_path, rng):
    structures = [_structure(rng) for _ in range(4)]
    records = [{"structure": s.as_dict(), "outputs": {"energy": -1.5 * i, "stress":
                np.eye(3).tolist()}} for i, s in enumerate(structures)]
    layouts = {
        "list.json": json.dumps(records),
        "by_id.json": json.dumps({f"id{i}": r for i, r in enumerate(records)}, indent=2),
        "wrapped.json": json.dumps({"version": 2, "elements": ["Fe", "O"], "meta": {"a": 1},
                                    "data": records, "citations": [{"doi": "x"}]}),
        "lines.jsonl": "".join(json.dumps(r) + "\n" for r in records),
    }
    options = ReadOptions(keys=LabelKeys(energy="outputs.energy", stress="outputs.stress"),
                          units=Units(stress="GPa"))
    for name, text in layouts.items():
        path = tmp_path / name
        path.write_text(text)
        fmt = detect(path)
        assert fmt.name == "json-records", name
        samples = list(fmt.read(path, options))
        assert [s.energy for _, s in samples] == [-1.5 * i for i in range(4)], name
        np.testing.assert_allclose(samples[0][1].stress, np.eye(3) / 160.21766208)
        for (_, sample), structure in zip(samples, structures):
            np.testing.assert_allclose(sample.positions, structure.cart_coords, atol=1e-12)

    # one bare Structure, pretty-printed, and a Molecule with charge and spin
    single = tmp_path / "one.json"
    single.write_text(json.dumps(structures[0].as_dict(), indent=2))
    (_, sample), = get_format("json-records").read(single)
    assert sample.energy is None and sample.num_atoms == len(structures[0])
    molecule = Molecule(["O", "H", "H"], [[0, 0, 0], [0, 0.76, 0.59], [0, -0.76, 0.59]],
                        charge=1, spin_multiplicity=2)
    path = tmp_path / "mol.json"
    path.write_text(json.dumps([{"structure": molecule.as_dict(), "energy": -2.0}]))
    (_, sample), = get_format("json-records").read(path)
    assert not sample.pbc.any() and sample.charge == 1 and sample.spin == 2
    np.testing.assert_allclose(sample.positions, molecule.cart_coords)


def test_missing_values_are_masked(tmp_path, rng):
    data = _mptrj(rng, materials=1, frames=2)
    frame = next(iter(data["mp-100"].values()))
    frame["force"][0][1] = math.nan
    frame["corrected_total_energy"] = None
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))  # json writes NaN as the NaN literal
    first, second = (s for _, s in get_format("mptrj").read(path))
    assert first.forces is None and first.energy is None and first.stress is not None
    assert second.forces is not None and second.energy is not None


def test_bad_inputs_name_the_file_and_entry(tmp_path, rng):
    data = _mptrj(rng, materials=2, frames=2)
    text = json.dumps(data)
    fmt = get_format("mptrj")

    truncated = tmp_path / "cut.json"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="cut.json.*truncated"):
        list(fmt.read(truncated))
    cut_bz2 = tmp_path / "cut.json.bz2"
    cut_bz2.write_bytes(bz2.compress(text.encode())[:-40])
    with pytest.raises(ValueError, match="cut.json.bz2"):
        list(fmt.read(cut_bz2))

    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(KeyError, match=r"m\.json: entry mp-100/mp-900-0-0.*no key "
                                       r"'total_energy'.*corrected_total_energy"):
        list(fmt.read(path, ReadOptions(keys=LabelKeys(energy="total_energy"))))

    no_structures = tmp_path / "plain.json"
    no_structures.write_text(json.dumps({"a": [{"x": 1}], "b": 2}))
    assert detect(no_structures) is None
    with pytest.raises(ValueError, match=r"plain\.json: no records.*keys: \['a', 'b'\]"):
        list(get_format("json-records").read(no_structures))
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps([{"x": 1}]))
    with pytest.raises(ValueError, match=r"listed\.json: entry \[0\]: no pymatgen.*'x'"):
        list(get_format("json-records").read(listed))
    with pytest.raises(ValueError, match="plain.json: entry 'a': expected an object of frames"):
        list(fmt.read(no_structures))
    with pytest.raises(ValueError, match="no 'entries' list.*'a', 'b'"):
        list(get_format("alexandria").read(no_structures))

    disordered = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    path = tmp_path / "dis.json"
    path.write_text(json.dumps([{"structure": disordered.as_dict(), "energy": 1.0}]))
    with pytest.raises(ValueError, match=r"dis\.json: entry \[0\]: site 0 is disordered"):
        list(get_format("json-records").read(path))

    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\x01 not json at all")
    assert detect(garbage) is None
    with pytest.raises(ValueError, match="garbage.json"):
        list(fmt.read(garbage))


def test_streaming_memory_is_far_below_the_file_size(tmp_path, rng):
    structure = _structure(rng, n_atoms=8)
    data = {f"mp-{m}": {f"mp-{m}-0-{f}": _frame(rng, structure) for f in range(40)}
            for m in range(100)}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data))
    size = path.stat().st_size
    assert size > 8_000_000
    next(iter(get_format("mptrj").read(path)))  # one-off imports and caches out of the count
    tracemalloc.start()
    try:
        count = sum(1 for _ in get_format("mptrj").read(path, rank=1, size=2))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 2000
    # the stream holds a few 256 K-character chunks plus one frame; json.load of the
    # same file needs several times its size
    print(f"peak {peak:,} bytes for a {size:,}-byte file")
    assert peak < size / 5, (peak, size)


_RSS_SCRIPT = """
import sys
from pathlib import Path
from pygfm.data.formats import get_format

def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name):
            return int(line.split()[1]) * 1024

path = Path(sys.argv[1])
next(iter(get_format("mptrj").read(path)))  # imports and first allocations
with open("/proc/self/clear_refs", "w") as file:
    file.write("5")  # resets the peak (VmHWM) to the current RSS
before = status("VmRSS")
count = sum(1 for _ in get_format("mptrj").read(path))
print(count, status("VmHWM") - before)
"""


def test_streaming_peak_rss(tmp_path, rng):
    import subprocess
    import sys
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    structure = _structure(rng, n_atoms=8)
    data = {f"mp-{m}": {f"mp-{m}-0-{f}": _frame(rng, structure) for f in range(40)}
            for m in range(100)}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data))
    size = path.stat().st_size
    result = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path)], capture_output=True,
                            text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                         **__import__("os").environ},
                            cwd=tmp_path)  # not the source tree, whose pygfm has no _C
    assert result.returncode == 0, result.stderr
    count, growth = map(int, result.stdout.split())
    assert count == 4000
    # measured ~0.8 MB for this 12.6 MB file (json.load: ~68 MB)
    assert growth < size / 5, (growth, size)


def test_records_with_mptrj_keys_are_not_taken_for_mptrj(tmp_path, rng):
    frames = [frame for _, frame in _frames(_mptrj(rng, materials=1, frames=2))]
    lines = tmp_path / "frames.jsonl"
    lines.write_text("".join(json.dumps(f) + "\n" for f in frames))
    by_id = tmp_path / "by_id.json"
    by_id.write_text(json.dumps({f"id{i}": f for i, f in enumerate(frames)}))
    options = ReadOptions(keys=LabelKeys(energy="corrected_total_energy", forces="force",
                                         stress="-stress"), units=Units(stress="kbar"))
    for path in (lines, by_id):
        assert detect(path).name == "json-records", path.name
        samples = [s for _, s in get_format("json-records").read(path, options)]
        assert [s.energy for s in samples] == [f["corrected_total_energy"] for f in frames]
        np.testing.assert_allclose(samples[0].stress,
                                   np.array(frames[0]["stress"]) * KBAR_TO_EV_A3, rtol=1e-12)
    # forced to mptrj, a {id: frame} file is refused rather than read without labels
    with pytest.raises(ValueError, match=r"by_id\.json: entry id0/structure.*not a record|"
                                         r"by_id\.json.*under 'structure'"):
        list(get_format("mptrj").read(by_id))

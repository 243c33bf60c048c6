"""Screening inputs (pygfm/screen/inputs.py): the SC26 random generator, template
substitutions, pygfm datasets and ase.io files, cut into numbered chunks."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from pygfm.data import write_dataset
from pygfm.screen import InputError, open_input
from pygfm.screen.inputs import (AseFileInput, DatasetInput, RandomInput, SubstitutionInput,
                                 Structures)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _structures import mixed_structures  # noqa: E402


def split(structures: Structures):
    """[(numbers, positions)] per structure of a chunk."""
    offsets = np.concatenate(([0], np.cumsum(structures.counts)))
    return [(structures.numbers[a:b], structures.positions[a:b])
            for a, b in zip(offsets[:-1], offsets[1:])]


def all_chunks(source):
    return [source.chunk(k) for k in range(source.num_chunks)]


def assert_same_chunk(a: Structures, b: Structures):
    for name in ("numbers", "positions", "counts", "cell", "pbc", "ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert x.tobytes() == y.tobytes(), name


def check_layout(structures: Structures, start: int):
    """Arrays of a chunk are consistent with one another."""
    B = len(structures)
    assert structures.counts.shape == (B,)
    total = int(structures.counts.sum())
    assert structures.numbers.shape == (total,)
    assert structures.positions.shape == (total, 3)
    assert structures.cell.shape == (B, 3, 3)
    assert structures.pbc.shape == (B, 3) and structures.pbc.dtype == bool
    np.testing.assert_array_equal(structures.ids, np.arange(start, start + B))


# ----------------------------------------------------------------- random: parsing
def test_random_defaults_are_sc26():
    source = open_input("random:10", chunk_size=4)
    assert isinstance(source, RandomInput)
    assert len(source) == 10 and source.num_chunks == 3
    assert (source.seed, source.min_atoms, source.max_atoms, source.box) == (0, 2, 500, 10.0)
    np.testing.assert_array_equal(source.elements, np.arange(1, 95))
    assert source.max_neighbors == 20


def test_random_options_are_parsed():
    source = open_input("random:7,seed=3,min_atoms=4,max_atoms=9,box=5.5,elements=H.C.O", 2)
    assert (len(source), source.seed, source.min_atoms, source.max_atoms, source.box) == \
        (7, 3, 4, 9, 5.5)
    np.testing.assert_array_equal(source.elements, [1, 6, 8])
    assert [len(c) for c in all_chunks(source)] == [2, 2, 2, 1]


@pytest.mark.parametrize("spec, words", [
    ("random:", "expected random:N"),
    ("random:abc", "expected random:N"),
    ("random:nan", "expected random:N"),
    ("random:0", "N must be >= 1"),
    ("random:-4", "N must be >= 1"),
    ("random:10,colour=red", "unknown option 'colour'"),
    ("random:10,seed", "not key=value"),
    ("random:10,seed=x", "seed='x' is not valid"),
    ("random:10,elements=H.Xx", "unknown element 'Xx'"),
    ("random:10,elements=X", "unknown element 'X'"),
    ("random:10,elements=", "no elements given"),
    ("random:10,elements=h.c", "unknown element 'h'"),
    ("random:10,min_atoms=9,max_atoms=3", "min_atoms <= max_atoms"),
    ("random:10,min_atoms=0", "min_atoms <= max_atoms"),
    ("random:10,box=0", "box must be > 0"),
    ("random:10,box=-1", "box must be > 0"),
    ("random:10,box=nan", "box must be > 0"),
    ("random:2.5", "whole number"),
    ("random:10,seed=-1", "seed must be >= 0"),
])
def test_random_spec_errors(spec, words):
    with pytest.raises(InputError, match=None) as error:
        open_input(spec, 4)
    assert words in str(error.value), str(error.value)
    assert spec.split(",")[0] in str(error.value)


@pytest.mark.parametrize("spec", ["random:inf", "random:1e400", "random:2.5",
                                  "random:10,seed=-1", "random:10,box=inf", "random:10,box=1e400"])
def test_random_spec_errors_are_found_when_parsing(spec):
    """Regression: these raised OverflowError (inf), were silently truncated
    (2.5 -> 2 structures) or passed parsing only to fail with a bare ValueError /
    OverflowError in the middle of the run, when the first chunk was generated."""
    with pytest.raises(InputError):
        open_input(spec, 4).chunk(0)


# ----------------------------------------------------------------- random: chunks
def test_random_chunks_regenerate_identically():
    a = open_input("random:23,seed=5,max_atoms=40", chunk_size=6)
    b = open_input("random:23,seed=5,max_atoms=40", chunk_size=6)
    for k in (3, 0, 2, 1, 3):  # any order, any number of times
        assert_same_chunk(a.chunk(k), b.chunk(k))
        assert_same_chunk(a.chunk(k), a.chunk(k))
    chunks = all_chunks(a)
    for k, chunk in enumerate(chunks):
        check_layout(chunk, 6 * k)
    assert [len(c) for c in chunks] == [6, 6, 6, 5]
    # chunks differ from one another, and another seed gives other structures
    assert chunks[0].numbers.tobytes() != chunks[1].numbers.tobytes()
    other = open_input("random:23,seed=6,max_atoms=40", chunk_size=6).chunk(0)
    assert other.positions.tobytes() != chunks[0].positions.tobytes()


def test_random_chunk_does_not_depend_on_count():
    """Chunk k is a function of (seed, k, chunk size): N only truncates the last chunk.
    (A different chunk size cuts the random stream differently; the driver records
    the chunk size of a run and refuses to resume with another.)"""
    short = open_input("random:10,seed=2,max_atoms=30", chunk_size=4)
    long = open_input("random:1000,seed=2,max_atoms=30", chunk_size=4)
    assert_same_chunk(short.chunk(1), long.chunk(1))
    last, full = short.chunk(2), long.chunk(2)  # 2 of 4 structures
    assert len(last) == 2
    n = int(last.counts.sum())
    np.testing.assert_array_equal(last.counts, full.counts[:2])
    np.testing.assert_array_equal(last.numbers, full.numbers[:n])
    np.testing.assert_array_equal(last.positions, full.positions[:n])


def test_random_sc26_ranges_and_coverage():
    source = open_input("random:600,seed=1", chunk_size=256)
    chunks = all_chunks(source)
    counts = np.concatenate([c.counts for c in chunks])
    numbers = np.concatenate([c.numbers for c in chunks])
    positions = np.concatenate([c.positions for c in chunks])
    assert len(counts) == 600
    assert counts.min() >= 2 and counts.max() <= 500
    assert numbers.min() >= 1 and numbers.max() <= 94
    assert positions.min() >= 0.0 and positions.max() < 10.0
    for c in chunks:
        assert not c.pbc.any() and not c.cell.any()
        assert c.numbers.dtype == np.int64 and c.positions.dtype == np.float64
    # uniform counts in [2, 500]: all ten bins of width ~50 are hit, means are central
    assert len(np.unique(np.minimum((counts - 2) // 50, 9))) == 10
    assert 200 < counts.mean() < 300
    assert counts.min() < 30 and counts.max() > 470
    # every element 1..94 appears (150k draws), none is far off its share
    per_element = np.bincount(numbers, minlength=95)[1:]
    assert (per_element > 0).all()
    share = per_element / per_element.sum()
    assert share.max() < 2.0 / 94 and share.min() > 0.5 / 94
    # positions: all eight octants of the box, mean near the center
    octants = (positions >= 5.0) @ np.array([1, 2, 4])
    assert len(np.unique(octants)) == 8
    np.testing.assert_allclose(positions.mean(axis=0), 5.0, atol=0.1)


def test_random_respects_given_elements_atoms_and_box():
    source = open_input("random:200,seed=9,min_atoms=3,max_atoms=5,box=2.5,elements=H.C.O",
                        chunk_size=64)
    chunks = all_chunks(source)
    numbers = np.concatenate([c.numbers for c in chunks])
    counts = np.concatenate([c.counts for c in chunks])
    positions = np.concatenate([c.positions for c in chunks])
    assert set(np.unique(numbers)) == {1, 6, 8}
    assert set(np.unique(counts)) == {3, 4, 5}
    assert positions.min() >= 0 and positions.max() < 2.5


def test_random_single_size():
    chunk = open_input("random:5,min_atoms=7,max_atoms=7", 8).chunk(0)
    np.testing.assert_array_equal(chunk.counts, [7] * 5)


# ----------------------------------------------------------------- substitutions
def test_substitutions_enumerate_every_decoration_once():
    source = open_input("substitutions:bulk-Cu-fcc-3.6:Cu.Ni", chunk_size=5)
    assert isinstance(source, SubstitutionInput)
    assert len(source) == 2 ** 4 and source.num_chunks == 4
    template = bulk("Cu", "fcc", a=3.6, cubic=True)
    seen = []
    for k, chunk in enumerate(all_chunks(source)):
        check_layout(chunk, 5 * k)
        assert (chunk.counts == 4).all()
        for b, (numbers, positions) in enumerate(split(chunk)):
            np.testing.assert_array_equal(positions, template.positions)
            np.testing.assert_array_equal(chunk.cell[b], np.asarray(template.cell))
            assert chunk.pbc[b].all()
            seen.append(tuple(int(z) for z in numbers))
    assert len(seen) == 16 and len(set(seen)) == 16
    assert set(seen) == set(itertools.product((29, 28), repeat=4))


def test_substitutions_order_is_base_len_elements():
    """Structure k writes k in base len(elements), one digit per site, lowest first."""
    source = open_input("substitutions:bulk-Cu-fcc-3.6:Au.Ag.Pt", chunk_size=100)
    assert len(source) == 81
    chunk = source.chunk(0)
    choices = [79, 47, 78]
    for k, (numbers, _) in enumerate(split(chunk)):
        digits = [(k // 3 ** s) % 3 for s in range(4)]
        assert list(numbers) == [choices[d] for d in digits]


def test_substitutions_sites_restrict_the_decorated_sites(tmp_path):
    template = bulk("NaCl", "rocksalt", a=5.6, cubic=True)  # 4 Na, 4 Cl
    path = tmp_path / "nacl.extxyz"
    ase.io.write(path, template)
    source = open_input(f"substitutions:{path}:K.Rb.Cs,sites=Na", chunk_size=7)
    assert len(source) == 3 ** 4
    na = np.flatnonzero(template.numbers == 11)
    cl = np.flatnonzero(template.numbers == 17)
    seen = set()
    for chunk in all_chunks(source):
        for numbers, positions in split(chunk):
            np.testing.assert_array_equal(numbers[cl], 17)  # untouched
            assert set(numbers[na]) <= {19, 37, 55}
            np.testing.assert_allclose(positions, template.positions)
            seen.add(tuple(numbers[na]))
    assert len(seen) == 81


def test_substitutions_repeat_and_whole_template():
    source = open_input("substitutions:bulk-Cu-fcc-3.6-2:Cu", chunk_size=3)
    assert len(source) == 1
    chunk = source.chunk(0)
    assert chunk.counts.tolist() == [32]
    np.testing.assert_array_equal(chunk.numbers, 29)


@pytest.mark.parametrize("spec, words", [
    ("substitutions:bulk-Cu-fcc-3.6", "expected substitutions:TEMPLATE:EL1.EL2"),
    ("substitutions:bulk-Cu-fcc:Cu.Ni", "is not bulk-SYMBOL-CRYSTAL-A"),
    ("substitutions:bulk-Cu-fcc-abc:Cu.Ni", "cannot build template"),
    ("substitutions:bulk-Cu-nonsense-3.6:Cu.Ni", "cannot build template"),
    ("substitutions:bulk-Cu-fcc-3.6-x:Cu.Ni", "cannot build template"),
    ("substitutions:/no/such/template.xyz:Cu.Ni", "is not a file"),
    ("substitutions:bulk-Cu-fcc-3.6:Cu.Qq", "unknown element 'Qq'"),
    ("substitutions:bulk-Cu-fcc-3.6:", "no elements given"),
    ("substitutions:bulk-Cu-fcc-3.6:Cu.Ni,sites=Au", "no 'Au' sites"),
    ("substitutions:bulk-Cu-fcc-3.6:Cu.Ni,site=Cu", "unknown option 'site'"),
    ("substitutions:bulk-Cu-fcc-3.6-8:Cu.Ni.Au.Ag.Pt", "too many to number"),
    # regression: an empty template gave one structure without atoms and a
    # singular cell, and the run died with a traceback in the neighbor list
    ("substitutions:bulk-Cu-fcc-3.6-0:Cu.Ni", "has no atoms"),
])
def test_substitution_errors(spec, words):
    with pytest.raises(InputError) as error:
        open_input(spec, 4)
    assert words in str(error.value), str(error.value)


def test_substitution_template_file_unreadable(tmp_path):
    path = tmp_path / "broken.xyz"
    path.write_text("this is not\nan xyz file\n")
    with pytest.raises(InputError, match="cannot read template"):
        open_input(f"substitutions:{path}:Cu.Ni", 4)


# ----------------------------------------------------------------- files and datasets
@pytest.fixture(scope="module")
def structures():
    """Molecules, crystals and slabs of 1..8 atoms, with EMT labels."""
    return mixed_structures(11, seed=4)


def assert_chunks_are(source, structures, chunk_size):
    """The chunks hold ``structures`` exactly (read back from a file: extxyz keeps
    fewer digits than float64)."""
    assert len(source) == len(structures)
    assert source.num_chunks == -(-len(structures) // chunk_size)
    flat = []
    for k, chunk in enumerate(all_chunks(source)):
        check_layout(chunk, chunk_size * k)
        assert chunk.numbers.dtype == np.int64
        for b, (numbers, positions) in enumerate(split(chunk)):
            flat.append((numbers, positions, chunk.cell[b], chunk.pbc[b]))
    assert len(flat) == len(structures)
    for (numbers, positions, cell, pbc), atoms in zip(flat, structures):
        np.testing.assert_array_equal(numbers, atoms.numbers)
        np.testing.assert_array_equal(positions, atoms.positions)
        np.testing.assert_array_equal(cell, np.asarray(atoms.cell))
        np.testing.assert_array_equal(pbc, atoms.pbc)


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_ase_file_input_equals_the_structures(tmp_path, structures, chunk_size):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, structures)
    source = open_input(str(path), chunk_size)
    assert isinstance(source, AseFileInput)
    assert_chunks_are(source, ase.io.read(path, ":"), chunk_size)


def test_ase_file_input_other_format(tmp_path):
    atoms = [bulk("Cu", cubic=True), Atoms("H2O", positions=[[0, 0, 0], [0, 0, 1], [0, 1, 0]])]
    path = tmp_path / "in.traj"
    ase.io.write(path, atoms)
    assert_chunks_are(open_input(str(path), 1), atoms, 1)


@pytest.mark.parametrize("chunk_size", [3, 50])
def test_dataset_input_equals_the_structures(tmp_path, structures, chunk_size):
    path = tmp_path / "set"
    write_dataset(path, structures, name="set", fidelity="EMT", shard_size=4)
    source = open_input(str(path), chunk_size)
    assert isinstance(source, DatasetInput)
    assert_chunks_are(source, structures, chunk_size)


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    ("garbage that ase cannot read\n", "cannot read structures"),
    ("", "cannot read structures (UnknownFileTypeError: Empty file"),
])
def test_file_input_errors(tmp_path, content, words):
    path = tmp_path / "in.xyz"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as error:
        open_input(str(path), 4)
    assert words in str(error.value), str(error.value)
    assert str(path) in str(error.value)


def test_file_without_structures(tmp_path):
    path = tmp_path / "in.traj"
    ase.io.write(path, [])
    with pytest.raises(InputError, match="holds no structures|cannot read structures"):
        open_input(str(path), 4)


def test_directory_that_is_no_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        open_input(str(tmp_path / "empty"), 4)


@pytest.mark.parametrize("spec", ["", None])
def test_empty_spec(spec):
    with pytest.raises(InputError, match="give a spec"):
        open_input(spec, 4)

"""`pygfm-data convert|info|split|stats|verify` (pygfm/cli/data.py).

Most cases call ``main([...])`` in-process; one end-to-end case and the MPI cases run
``python -m pygfm.cli.data`` as a subprocess (from a temporary directory, so that the
installed package is imported rather than the source tree).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _structures import assert_same_sample, emt_label, mixed_structures  # noqa: E402

from pygfm.cli.data import main  # noqa: E402
from pygfm.data import Sample, open_dataset  # noqa: E402
from pygfm.data.adios import MANIFEST, STATISTICS  # noqa: E402
from pygfm.data.statistics import compute_statistics  # noqa: E402

MPIEXEC = Path(sys.executable).parent / "mpiexec"
TIMEOUT = 120


def structures(n=40, seed=21):
    """Mixed structures plus two rattled crystals, so that every label is there."""
    extra = []
    for atoms in (bulk("Cu", cubic=True), bulk("Al", cubic=True) * (1, 1, 2)):
        atoms.rattle(0.02, seed=1)
        extra.append(emt_label(atoms))
    return mixed_structures(n - 2, seed) + extra


@pytest.fixture(scope="module")
def extxyz(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "in.extxyz"
    ase.io.write(path, structures())
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, extxyz):
    out = tmp_path_factory.mktemp("converted") / "set"
    assert main(["convert", str(extxyz), "--dataset", "metals", "--fidelity", "EMT (ase)",
                 "-o", str(out), "--quiet", "--shard-size", "16"]) == 0
    return out


def run_command(command, cwd) -> subprocess.CompletedProcess:
    """Run with a timeout; on timeout kill the whole process group (mpiexec's ranks too)
    and fail."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} hung for {TIMEOUT} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run(*args, cwd, mpi: int = 0):
    command = [sys.executable, "-m", "pygfm.cli.data", *map(str, args)]
    if mpi:
        command = [str(MPIEXEC), "-n", str(mpi)] + command
    return run_command(command, cwd)


def assert_same_arrays(path_a, path_b):
    a, b = open_dataset(path_a).read_block(), open_dataset(path_b).read_block()
    assert set(a.arrays) == set(b.arrays)
    for name, value in a.arrays.items():
        assert value.dtype == b.arrays[name].dtype, name
        assert value.tobytes() == b.arrays[name].tobytes(), name


# ----------------------------------------------------------------- convert
def test_convert_extxyz_round_trip(extxyz, converted, capsys):
    inputs = ase.io.read(extxyz, ":")
    dataset = open_dataset(converted, verify=True)
    assert len(dataset) == len(inputs) == 40
    assert dataset.name == "metals" and dataset.fidelity["text"] == "EMT (ase)"
    assert dataset.labels == ["energy", "forces", "stress"]
    assert len(dataset.manifest["shards"]) == 3
    assert (converted / STATISTICS).exists()
    for k, original in enumerate(inputs):
        atoms = dataset[k].to_ase()
        np.testing.assert_array_equal(atoms.numbers, original.numbers)
        np.testing.assert_array_equal(atoms.positions, original.positions)
        np.testing.assert_array_equal(atoms.cell.array, original.cell.array)
        np.testing.assert_array_equal(atoms.pbc, original.pbc)
        expected = {} if original.calc is None else {
            key: value for key, value in original.calc.results.items()
            if key in ("energy", "forces", "stress")}
        got = {} if atoms.calc is None else atoms.calc.results
        assert set(got) == set(expected), k
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value)
        assert atoms.info["index"] == k


def test_convert_prints_a_summary(extxyz, tmp_path, capsys):
    assert main(["convert", str(extxyz), "--dataset", "d", "--fidelity", "x", "-o",
                 str(tmp_path / "d"), "--quiet", "--no-statistics"]) == 0
    out = capsys.readouterr().out
    assert "40 structures" in out and "labels energy, forces, stress" in out
    assert not (tmp_path / "d" / STATISTICS).exists()


def test_convert_ase_db(tmp_path):
    atoms_list = structures(8, seed=3)
    db_path = tmp_path / "in.db"
    with ase.db.connect(db_path) as db:
        for atoms in atoms_list:
            db.write(atoms)
    fidelity = json.dumps({"code": "ase", "code_version": "3.29", "method": "EMT"})
    assert main(["convert", str(db_path), "--dataset", "db", "--fidelity", fidelity,
                 "-o", str(tmp_path / "out"), "--quiet"]) == 0
    dataset = open_dataset(tmp_path / "out")
    assert dataset.fidelity == {"code": "ase", "code_version": "3.29", "method": "EMT",
                                "basis": None, "text": "EMT (ase 3.29)"}
    rows = [row.toatoms(add_additional_information=False)
            for row in ase.db.connect(db_path).select()]
    assert len(dataset) == len(rows) == 8
    for k, atoms in enumerate(rows):
        assert_same_sample(dataset[k], Sample.from_ase(atoms), index=k)


def test_convert_energy_key_from_info_keeps_forces(tmp_path, capsys):
    atoms_list = structures(6, seed=4)
    for k, atoms in enumerate(atoms_list):
        atoms.info["dft_energy"] = -100.0 - k
    ase.io.write(tmp_path / "in.extxyz", atoms_list)
    assert main(["convert", str(tmp_path / "in.extxyz"), "--dataset", "k", "--fidelity", "x",
                 "--energy-key", "dft_energy", "-o", str(tmp_path / "out"), "--quiet"]) == 0
    dataset = open_dataset(tmp_path / "out")
    assert [s.energy for s in dataset] == [-100.0 - k for k in range(6)]
    inputs = ase.io.read(tmp_path / "in.extxyz", ":")
    for k, atoms in enumerate(inputs):
        forces = atoms.calc.results.get("forces") if atoms.calc else None
        if forces is None:
            assert dataset[k].forces is None
        else:  # the extxyz forces column (a calculator result in ASE) is kept
            np.testing.assert_array_equal(dataset[k].forces, forces)
    assert dataset.manifest["label_counts"]["forces"] > 0
    # a key that is in no structure: exit 2 naming the key, the file and the keys there
    # (a key missing in only some structures masks their energy: tests/cli/test_data_formats.py)
    assert main(["convert", str(tmp_path / "in.extxyz"), "--dataset", "k", "--fidelity", "x",
                 "--energy-key", "nope", "-o", str(tmp_path / "out2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pygfm-data convert: error: --energy-key 'nope': no structure of " + \
        str(tmp_path / "in.extxyz") in err and "dft_energy" in err
    assert not (tmp_path / "out2").exists()


def test_convert_missing_input(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.extxyz"), "--dataset", "d", "--fidelity",
                 "x", "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "pygfm-data convert: error: no such input:" in error and "missing.extxyz" in error
    assert os.listdir(tmp_path) == []


def test_convert_bad_structure_names_file_and_index(tmp_path, capsys):
    atoms_list = structures(10, seed=5)
    atoms_list[6] = Atoms("CuX", positions=[[0, 0, 0], [2, 0, 0]])
    ase.io.write(tmp_path / "bad.extxyz", atoms_list)
    assert main(["convert", str(tmp_path / "bad.extxyz"), "--dataset", "d", "--fidelity", "x",
                 "-o", str(tmp_path / "out"), "--quiet", "--shard-size", "2"]) == 2
    error = capsys.readouterr().err
    assert "bad.extxyz, sample 6: atom 1 has atomic number 0" in error
    assert sorted(os.listdir(tmp_path)) == ["bad.extxyz"]


def test_convert_unreadable_file_names_it(tmp_path, capsys):
    (tmp_path / "junk.extxyz").write_text("3\nnot a comment line\nH 0 0\n")
    assert main(["convert", str(tmp_path / "junk.extxyz"), "--dataset", "d", "--fidelity",
                 "x", "-o", str(tmp_path / "out"), "--quiet"]) == 2
    assert "junk.extxyz" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["junk.extxyz"]


def test_convert_refuses_an_existing_output(extxyz, converted, tmp_path, capsys):
    target = tmp_path / "again"
    shutil.copytree(converted, target)
    arguments = ["convert", str(extxyz), "--dataset", "again", "--fidelity", "x", "-o",
                 str(target), "--quiet"]
    assert main(arguments) == 2
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert open_dataset(target).name == "metals"
    assert main(arguments + ["--overwrite"]) == 0
    assert open_dataset(target).name == "again"
    assert sorted(os.listdir(tmp_path)) == ["again"]


def test_multiple_inputs_are_concatenated_in_order(extxyz, tmp_path):
    second = tmp_path / "second.extxyz"
    ase.io.write(second, structures(5, seed=9))
    assert main(["convert", str(extxyz), str(second), "--dataset", "two", "--fidelity", "x",
                 "-o", str(tmp_path / "out"), "--quiet", "--index", ":"]) == 0
    dataset = open_dataset(tmp_path / "out")
    assert len(dataset) == 45
    expected = Sample.from_ase(ase.io.read(second, 2))
    assert_same_sample(dataset[42], expected, index=42)


# ----------------------------------------------------------------- info, stats, verify
def test_info_text_and_json(converted, capsys):
    assert main(["info", str(converted)]) == 0
    text = capsys.readouterr().out
    dataset = open_dataset(converted)
    counts = dataset.manifest["label_counts"]
    assert "metals" in text and "EMT (ase)" in text
    assert f"structures   40   atoms {int(dataset.num_atoms.sum())}" in text
    assert "elements     " + " ".join(dataset.elements) in text
    assert f"energy {counts['energy']} (" in text and f"stress {counts['stress']} (" in text
    assert "shards       3" in text and "references" in text and "forces       RMS" in text
    assert main(["info", str(converted), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["manifest"] == dataset.manifest
    assert parsed["statistics"] == dataset.statistics


def test_info_without_energies(tmp_path, capsys):
    atoms_list = [emt_label(bulk("Cu", cubic=True), ("forces",)), bulk("Al")]
    ase.io.write(tmp_path / "in.extxyz", atoms_list)
    assert main(["convert", str(tmp_path / "in.extxyz"), "--dataset", "f", "--fidelity", "x",
                 "-o", str(tmp_path / "out"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "energy 0 (0%), forces 1 (50%), stress 0 (0%)" in text
    assert "energy/atom" not in text and "references" not in text and "forces       RMS" in text


def test_info_on_a_missing_or_broken_dataset(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "no such dataset directory" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["info", str(tmp_path / "half")]) == 2
    assert f"{MANIFEST} is missing" in capsys.readouterr().err


def test_stats_rewrites_statistics(converted, tmp_path, capsys):
    target = tmp_path / "copy"
    shutil.copytree(converted, target)
    (target / STATISTICS).unlink()
    assert open_dataset(target).statistics is None
    assert main(["info", str(target)]) == 0
    assert "none saved" in capsys.readouterr().out
    assert main(["stats", str(target)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((target / STATISTICS).read_text())
    assert printed == saved == json.loads(json.dumps(compute_statistics(open_dataset(target))))
    (target / STATISTICS).write_text('{"stale": true}')
    assert main(["stats", str(target)]) == 0
    assert json.loads((target / STATISTICS).read_text()) == saved
    assert not [p for p in os.listdir(target) if p.startswith(".")]  # no temporary left


def test_verify_ok_and_corrupt(converted, tmp_path, capsys):
    assert main(["verify", str(converted)]) == 0
    assert "OK (40 structures, 3 shards" in capsys.readouterr().out
    target = tmp_path / "copy"
    shutil.copytree(converted, target)
    victim = target / "shard-r0000-00001.bp" / "data.0"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0x01
    victim.write_bytes(bytes(raw))
    assert main(["verify", str(target)]) == 2
    error = capsys.readouterr().err
    assert f"pygfm-data verify: error: {victim}: checksum mismatch" in error


# ----------------------------------------------------------------- split
def _fingerprints(dataset):
    return [s.positions.tobytes() + s.numbers.tobytes() for s in dataset]


def test_split(converted, tmp_path, capsys):
    parent = open_dataset(converted)
    parent_prints = _fingerprints(parent)
    assert len(set(parent_prints)) == 40
    assert main(["split", str(converted), "-o", str(tmp_path / "a"), "--fractions", "0.5",
                 "0.3", "0.2", "--seed", "1", "--quiet"]) == 0
    assert "train: 20 structures" in capsys.readouterr().out
    parts = {name: open_dataset(tmp_path / "a" / name, verify=True)
             for name in ("train", "val", "test")}
    assert [len(parts[n]) for n in ("train", "val", "test")] == [20, 12, 8]
    positions = {}
    for name, part in parts.items():
        assert part.name == parent.name and part.fidelity == parent.fidelity
        assert part.statistics is not None and part.statistics["num_samples"] == len(part)
        assert f"{name} part" in part.description and "seed 1" in part.description
        found = [parent_prints.index(p) for p in _fingerprints(part)]
        assert found == sorted(found)  # parent order kept inside a part
        positions[name] = found
        for k, p in enumerate(found[:3]):
            assert_same_sample(part[k], parent[p], index=k)
    every = sum(positions.values(), [])
    assert sorted(every) == list(range(40))  # disjoint and covering

    # deterministic for a seed, different for another
    assert main(["split", str(converted), "-o", str(tmp_path / "b"), "--fractions", "0.5",
                 "0.3", "0.2", "--seed", "1", "--quiet"]) == 0
    for name in parts:
        assert_same_arrays(tmp_path / "a" / name, tmp_path / "b" / name)
    assert main(["split", str(converted), "-o", str(tmp_path / "c"), "--fractions", "0.5",
                 "0.5", "--names", "x,y", "--seed", "2", "--quiet"]) == 0
    other = [parent_prints.index(p) for p in _fingerprints(open_dataset(tmp_path / "c" / "x"))]
    assert len(other) == 20 and other != positions["train"]
    # existing parts are not replaced without --overwrite
    capsys.readouterr()
    assert main(["split", str(converted), "-o", str(tmp_path / "b"), "--seed", "3",
                 "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["split", str(converted), "-o", str(tmp_path / "b"), "--seed", "3",
                 "--quiet", "--overwrite"]) == 0
    assert [len(open_dataset(tmp_path / "b" / n)) for n in ("train", "val", "test")] == \
        [32, 4, 4]


@pytest.mark.parametrize("arguments, message", [
    (["--fractions", "0.5", "0.6", "-0.1"], "non-negative"),
    (["--fractions", "0.5", "0.4", "--names", "a,b"], "sum to 1"),
    (["--fractions", "0.5", "0.5"], "--names gives 3 parts for 2 fractions"),
])
def test_split_bad_fractions(converted, tmp_path, capsys, arguments, message):
    assert main(["split", str(converted), "-o", str(tmp_path / "s"), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------- subprocesses, MPI
def test_module_end_to_end(extxyz, converted, tmp_path):
    done = run("convert", extxyz, "--dataset", "metals", "--fidelity", "EMT (ase)", "-o",
               tmp_path / "out", "--shard-size", "16", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "40 structures" in done.stdout
    assert_same_arrays(tmp_path / "out", converted)


needs_mpi = pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to python")


@needs_mpi
def test_mpi_convert_equals_single_process(extxyz, converted, tmp_path):
    done = run("convert", extxyz, "--dataset", "metals", "--fidelity", "EMT (ase)", "-o",
               tmp_path / "mpi", "--quiet", cwd=tmp_path, mpi=2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("wrote") == 1  # rank 0 only
    dataset = open_dataset(tmp_path / "mpi", verify=True)
    shards = dataset.manifest["shards"]
    assert [s["path"] for s in shards] == ["shard-r0000-00000.bp", "shard-r0001-00000.bp"]
    assert [s["num_samples"] for s in shards] == [20, 20]
    assert_same_arrays(tmp_path / "mpi", converted)  # same order, same content
    assert dataset.statistics == open_dataset(converted).statistics
    assert dataset.manifest["label_counts"] == open_dataset(converted).manifest["label_counts"]


MPI_FAILURES = """
import sys
from mpi4py import MPI
import pygfm.data.adios as adios
from pygfm.cli.data import main
from pygfm.data import Sample, write_dataset

rank = MPI.COMM_WORLD.Get_rank()

# 1. rank 0 fails after every shard is written (publishing): no rank may be left waiting
real = adios._publish
def publish(*args, **kwargs):
    raise OSError("disk gone")
adios._publish = publish
try:
    write_dataset("published", [Sample([1], [[0, 0, 0]])] * 2, name="x", fidelity="x",
                  comm=MPI.COMM_WORLD)
    print(f"rank {rank}: publish returned", flush=True)
except Exception as error:
    print(f"rank {rank}: publish {type(error).__name__}: {error}", flush=True)
adios._publish = real

# 2. `pygfm-data convert` with a bad structure on rank 1
try:
    code = main(["convert", "bad.extxyz", "--dataset", "d", "--fidelity", "x", "-o", "out",
                 "--quiet"])
except Exception as error:
    print(f"rank {rank}: convert raised {type(error).__name__}: {error}", flush=True)
    code = 1
print(f"rank {rank}: exit {code}", flush=True)
sys.exit(code)
"""


@needs_mpi
def test_mpi_failures_on_one_rank_stop_every_rank_and_leave_nothing(tmp_path):
    atoms_list = structures(9, seed=6)
    atoms_list[5] = Atoms("H", cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True)  # rank 1
    ase.io.write(tmp_path / "bad.extxyz", atoms_list)
    (tmp_path / "failures.py").write_text(MPI_FAILURES)
    done = run_command([str(MPIEXEC), "-n", "2", sys.executable, "failures.py"], tmp_path)
    out = done.stdout
    assert done.returncode != 0
    assert "rank 0: publish OSError: disk gone" in out
    assert "rank 1: publish RuntimeError: write_dataset: another rank failed: rank 0: disk gone" \
        in out
    # both ranks stop with a non-zero code; rank 1 names the structure
    assert "rank 0: exit 2" in out and "rank 1: exit 2" in out
    assert "pygfm-data convert: error: write_dataset: another rank failed: rank 1: " \
           "bad.extxyz, sample 5" in done.stderr
    assert "pygfm-data convert: error: bad.extxyz, sample 5" in done.stderr
    assert "degenerate" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.extxyz", "failures.py"]

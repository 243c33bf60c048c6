"""`pygfm-screen` (pygfm/screen/driver.py, pygfm/cli/screen.py): energies equal the
model's, output formats, top-k, heads (subset, auto blend), forces, errors,
resume after SIGKILL, MPI sharding, histogram and summary.

Most cases call the CLI's ``main([...])`` in-process on a tiny model; the resume
and MPI cases run ``python -m pygfm.cli.screen`` as subprocesses (from a temporary
directory, with one OpenMP thread and a timeout that kills the process group).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

import pygfm
from pygfm.cli.screen import main
from pygfm.data import AtomicBatch, write_dataset
from pygfm.models import MultiHeadModel, save_checkpoint
from pygfm.nn import PaiNN
from pygfm.screen import ScreenError, ScreenSettings, screen

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _structures import mixed_structures  # noqa: E402

HEADS = ["metals", "molecules", "dft"]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
TIMEOUT = 120
needs_mpi = pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to python")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two OpenMP threads on a busy two-core box are slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------- model and inputs
def tiny_model(seed=0, composition=True) -> MultiHeadModel:
    from ase.data import chemical_symbols

    torch.manual_seed(seed)
    model = MultiHeadModel(PaiNN(n_features=8, n_interactions=1, cutoff=4.0, n_rbf=6),
                           HEADS).double()
    for head in model.heads:  # heads differ clearly from one another
        torch.nn.init.normal_(head.layers[-1].weight, std=0.5)
    # realistic magnitudes: references of -1 .. -100 eV per atom, as trained models have
    for h, name in enumerate(HEADS):
        model.set_normalization(name, {
            "reference_energies": {chemical_symbols[z]: -(1.0 + 1.07 * z) * (1 + 0.1 * h)
                                   for z in range(1, 95)},
            "energy_scale": 0.7 + 0.2 * h})
    if composition:
        counts = {name: np.zeros(119) for name in HEADS}
        counts["metals"][[13, 28, 29, 46, 47, 78, 79]] = 100
        counts["molecules"][[1, 6, 7, 8]] = [400, 200, 50, 100]
        counts["dft"][1:95] = 10
        model.fit_composition(counts)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen-inputs")
    checkpoint = save_checkpoint(tiny_model(), root / "model.pt")
    plain = save_checkpoint(tiny_model(composition=False), root / "plain.pt")
    structures = mixed_structures(13, seed=7)
    extxyz = root / "in.extxyz"
    ase.io.write(extxyz, structures)
    dataset = root / "set"
    write_dataset(dataset, structures, name="set", fidelity="EMT", shard_size=5)
    return {"model": checkpoint, "plain": plain, "extxyz": extxyz, "dataset": dataset,
            "structures": ase.io.read(extxyz, ":"), "root": root}


def cli(*args, capsys=None) -> tuple[int, str, str]:
    code = main([str(a) for a in args] + ["--quiet"])
    out = capsys.readouterr() if capsys is not None else None
    return code, (out.out if out else ""), (out.err if out else "")


def read_csv(path) -> dict:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, rows = rows[0], rows[1:]
    table = {}
    for i, name in enumerate(header):
        column = [r[i] for r in rows]
        table[name] = np.array(column) if name in ("formula", "status") else \
            np.array([int(v) for v in column]) if name in ("id", "n_atoms") else \
            np.array([float(v) for v in column])
    return table


def read_bp(path) -> dict:
    import adios2

    with adios2.FileReader(str(path)) as reader:
        table = {name: reader.read(name) for name in reader.available_variables()}
        table["formula"] = np.array(reader.read_attribute_string("formula"))
        table["status"] = np.array(reader.read_attribute_string("status"))
    return table


def read_table(path) -> dict:
    path = Path(path)
    if path.suffix == ".csv":
        return read_csv(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return dict(data)
    return read_bp(path)


def hill(atoms) -> str:
    """The Hill formula: C, then H, then the rest alphabetically; without C every
    element alphabetically (ASE's "hill" always puts H first: HClNa, not ClHNa)."""
    from collections import Counter

    count = Counter(atoms.get_chemical_symbols())
    order = [s for s in ("C", "H") if s in count] if "C" in count else []
    order += sorted(s for s in count if s not in order)
    return "".join(s + (str(count[s]) if count[s] > 1 else "") for s in order)


def test_hill_formulas():
    from ase import Atoms

    from pygfm.screen.driver import _hill_formulas

    molecules = [Atoms("HClNa"), Atoms("OCH4"), Atoms("H2CuO"), Atoms("Cu"), Atoms("C2"),
                 Atoms("HH"), Atoms("NaCl")]
    numbers = np.concatenate([a.numbers for a in molecules])
    got = _hill_formulas(numbers, np.array([len(a) for a in molecules]))
    assert got == ["ClHNa", "CH4O", "CuH2O", "Cu", "C2", "H2", "ClNa"]
    assert got == [hill(a) for a in molecules]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(1, 118), min_size=0, max_size=40), min_size=1,
                max_size=12), st.booleans())
def test_hill_formulas_of_random_structures(structures, with_carbon):
    """Any elements, repeated counts, empty structures, one structure: as the
    one-by-one definition."""
    from ase import Atoms

    from pygfm.screen.driver import _hill_formulas

    if with_carbon:
        structures = [s + [6] for s in structures]
    atoms = [Atoms(numbers=s) for s in structures]
    numbers = np.array([z for s in structures for z in s], dtype=np.int64)
    assert _hill_formulas(numbers, np.array([len(s) for s in structures])) == \
        [hill(a) for a in atoms]


def reference(model, structures, heads=HEADS) -> dict:
    """What the model says for ``structures``: energies [B, H] through ``heads``,
    the max force norm of the mean-over-heads energy, the auto blend."""
    batch = AtomicBatch.from_atoms(structures, dtype=torch.float64)
    out = model(batch, list(heads), forces=True)
    energy = out["energy"].detach().numpy()
    norms = out["forces"].detach().mean(dim=0).norm(dim=-1).numpy()
    owner = batch.structure_index().numpy()
    max_force = np.array([norms[owner == b].max() for b in range(len(structures))])
    index = [model.head_index(h) for h in heads]
    weights = model.head_weights(batch.numbers, batch.ptr, index).numpy()
    return {"energy": energy, "max_force": max_force, "weights": weights,
            "blend": (energy * weights).sum(axis=1),
            "n": np.array([len(a) for a in structures])}


@pytest.fixture(scope="module")
def model(files):
    return pygfm.load(files["model"])


# ----------------------------------------------------------------- energies
@pytest.mark.parametrize("source", ["extxyz", "dataset"])
def test_energies_equal_the_model(tmp_path, files, model, source, capsys):
    output = tmp_path / "out.csv"
    code, _, err = cli("--model", files["model"], "--input", files[source], "--output", output,
                       "--precision", "fp64", "--chunk", 4, "--batch-atoms", 20,
                       "--device", "cpu", capsys=capsys)
    assert code == 0, err
    table = read_csv(output)
    structures = files["structures"]
    expected = reference(model, structures)
    n = expected["n"]
    np.testing.assert_array_equal(table["id"], np.arange(len(structures)))
    np.testing.assert_array_equal(table["n_atoms"], n)
    assert list(table["formula"]) == [hill(a) for a in structures]
    assert list(table) == ["id", "formula", "n_atoms"] + [
        f"{kind}:{h}" for h in HEADS for kind in ("energy", "energy_per_atom")] + \
        ["spread_per_atom", "status"]
    assert set(table["status"]) == {"ok"}
    for h, name in enumerate(HEADS):
        np.testing.assert_allclose(table[f"energy:{name}"] / n, expected["energy"][:, h] / n,
                                   rtol=0, atol=1e-9)
        np.testing.assert_allclose(table[f"energy_per_atom:{name}"],
                                   expected["energy"][:, h] / n, rtol=0, atol=1e-9)
    np.testing.assert_allclose(table["spread_per_atom"],
                               (expected["energy"] / n[:, None]).std(axis=1), rtol=0, atol=1e-9)
    # and model.predict agrees (another code path to the same numbers)
    predicted = model.predict(structures, HEADS)["energy"]
    np.testing.assert_allclose(table["energy:dft"] / n, predicted[:, 2] / n, rtol=0, atol=1e-9)


@pytest.mark.parametrize("suffix", [".npz", ".bp"])
def test_npz_and_bp_hold_the_same_values(tmp_path, files, suffix, capsys):
    common = ["--model", files["model"], "--input", files["extxyz"], "--precision", "fp64",
              "--chunk", 5, "--forces", "--heads", "auto"]
    assert cli(*common, "--output", tmp_path / "a.csv", capsys=capsys)[0] == 0
    assert cli(*common, "--output", tmp_path / f"a{suffix}", capsys=capsys)[0] == 0
    text, binary = read_csv(tmp_path / "a.csv"), read_table(tmp_path / f"a{suffix}")
    assert set(binary) == set(text)
    np.testing.assert_array_equal(binary["formula"], text["formula"])
    np.testing.assert_array_equal(binary["status"], text["status"])
    for name in ("id", "n_atoms"):
        np.testing.assert_array_equal(binary[name], text[name])
        assert binary[name].dtype.kind == "i"
    for name in text:
        if name not in ("id", "n_atoms", "formula", "status"):
            assert binary[name].dtype == np.float64
            np.testing.assert_array_equal(binary[name], text[name])  # the CSV round-trips


def test_substitutions_equal_the_model(tmp_path, files, model, capsys):
    """Periodic structures: every decoration of a Cu cell by Cu and Au."""
    from ase.build import bulk

    output = tmp_path / "sub.npz"
    assert cli("--model", files["model"], "--input", "substitutions:bulk-Cu-fcc-3.6:Cu.Au",
               "--output", output, "--chunk", 5, "--precision", "fp64", "--forces",
               capsys=capsys)[0] == 0
    table = read_table(output)
    template = bulk("Cu", "fcc", a=3.6, cubic=True)
    structures = []
    for k in range(16):
        atoms = template.copy()
        atoms.numbers = [(29, 79)[(k >> s) & 1] for s in range(4)]
        structures.append(atoms)
    expected = reference(model, structures)
    np.testing.assert_allclose(np.stack([table[f"energy:{h}"] for h in HEADS], 1),
                               expected["energy"], rtol=1e-12)
    np.testing.assert_allclose(table["max_force"], expected["max_force"], rtol=1e-9, atol=1e-9)
    assert table["formula"][0] == "Cu4" and table["formula"][15] == "Au4"


def test_bp_rewritten_by_a_rerun(tmp_path, files, capsys):
    output = tmp_path / "again.bp"
    for _ in range(2):
        assert cli("--model", files["model"], "--input", "random:5,max_atoms=5", "--output",
                   output, capsys=capsys)[0] == 0
    assert read_bp(output)["id"].tolist() == list(range(5))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bp_with_one_structure(tmp_path, files, capsys):
    output = tmp_path / "one.bp"
    assert cli("--model", files["model"], "--input", "random:1,max_atoms=5", "--output", output,
               capsys=capsys)[0] == 0
    table = read_bp(output)
    assert table["id"].tolist() == [0] and len(table["formula"]) == 1


def test_heads_subset(tmp_path, files, model, capsys):
    output = tmp_path / "sub.npz"
    code, _, err = cli("--model", files["model"], "--input", files["extxyz"], "--output", output,
                       "--heads", "dft,metals", "--precision", "fp64", capsys=capsys)
    assert code == 0, err
    table = read_table(output)
    assert list(table) == ["id", "formula", "n_atoms", "energy:dft", "energy_per_atom:dft",
                           "energy:metals", "energy_per_atom:metals", "spread_per_atom",
                           "status"]
    expected = reference(model, files["structures"], ["dft", "metals"])
    np.testing.assert_allclose(table["energy:dft"], expected["energy"][:, 0], rtol=1e-12)
    np.testing.assert_allclose(table["energy:metals"], expected["energy"][:, 1], rtol=1e-12)
    # one head: no spread column
    single = tmp_path / "single.npz"
    assert cli("--model", files["model"], "--input", files["extxyz"], "--output", single,
               "--heads", "molecules", "--precision", "fp64", capsys=capsys)[0] == 0
    assert list(read_table(single)) == ["id", "formula", "n_atoms", "energy:molecules",
                                        "energy_per_atom:molecules", "status"]


def test_forces_are_those_of_the_mean_energy(tmp_path, files, model, capsys):
    output = tmp_path / "f.npz"
    code, _, err = cli("--model", files["model"], "--input", files["extxyz"], "--output", output,
                       "--forces", "--precision", "fp64", "--batch-atoms", 16, capsys=capsys)
    assert code == 0, err
    table = read_table(output)
    expected = reference(model, files["structures"])
    assert (expected["max_force"] > 1e-3).all()
    np.testing.assert_allclose(table["max_force"], expected["max_force"], rtol=1e-9, atol=1e-12)
    # one head: the forces of that head
    single = tmp_path / "one.npz"
    assert cli("--model", files["model"], "--input", files["extxyz"], "--output", single,
               "--forces", "--heads", "metals", "--precision", "fp64", capsys=capsys)[0] == 0
    one = reference(model, files["structures"], ["metals"])
    np.testing.assert_allclose(read_table(single)["max_force"], one["max_force"], rtol=1e-9)


def test_heads_auto_blends_with_head_weights(tmp_path, files, model, capsys):
    output = tmp_path / "auto.npz"
    code, _, err = cli("--model", files["model"], "--input", files["extxyz"], "--output", output,
                       "--heads", "auto", "--forces", "--precision", "fp64", capsys=capsys)
    assert code == 0, err
    table = read_table(output)
    structures = files["structures"]
    expected = reference(model, structures)
    # the weights are not uniform (else this would test nothing)
    assert np.ptp(expected["weights"], axis=1).max() > 0.2
    np.testing.assert_allclose(table["energy:auto"], expected["blend"], rtol=1e-12)
    np.testing.assert_allclose(table["energy_per_atom:auto"], expected["blend"] / expected["n"],
                               rtol=1e-12)
    for h, name in enumerate(HEADS):
        np.testing.assert_allclose(table[f"energy:{name}"], expected["energy"][:, h], rtol=1e-12)
    # forces: those of the blended energy sum_h w_h E_h (w held fixed)
    batch = AtomicBatch.from_atoms(structures, dtype=torch.float64)
    weights = torch.as_tensor(expected["weights"])
    out = model(batch, HEADS, forces=True)
    blended = (out["forces"].detach() * weights[batch.structure_index()].t()[:, :, None]).sum(0)
    norms = blended.norm(dim=-1).numpy()
    owner = batch.structure_index().numpy()
    peak = np.array([norms[owner == b].max() for b in range(len(structures))])
    np.testing.assert_allclose(table["max_force"], peak, rtol=1e-9)


def test_fp32_and_bf16_are_close_to_fp64(tmp_path, files, capsys):
    tables = {}
    for precision in ("fp64", "fp32", "bf16"):
        output = tmp_path / f"{precision}.npz"
        assert cli("--model", files["model"], "--input", files["extxyz"], "--output", output,
                   "--precision", precision, "--heads", "dft", capsys=capsys)[0] == 0
        tables[precision] = read_table(output)["energy_per_atom:dft"]
    np.testing.assert_allclose(tables["fp32"], tables["fp64"], rtol=0, atol=1e-4)
    assert np.isfinite(tables["bf16"]).all()
    np.testing.assert_allclose(tables["bf16"], tables["fp64"], rtol=0.05)


@pytest.mark.parametrize("neighbors", ["host", "device"])
def test_random_input_matches_the_model_with_sc26_neighbors(tmp_path, files, model, neighbors,
                                                             capsys):
    """random:N is screened with SC26's at most 20 neighbors per atom, whether the
    lists are built in the producer (host) or beside the model (device)."""
    from dataclasses import replace

    from pygfm.ops import neighbor_list
    from pygfm.screen import open_input
    from pygfm.screen.inputs import Structures

    spec = "random:9,seed=4,min_atoms=20,max_atoms=60,box=6"
    output = tmp_path / "r.npz"
    assert cli("--model", files["model"], "--input", spec, "--output", output, "--chunk", 4,
               "--precision", "fp64", "--heads", "metals", "--neighbors", neighbors,
               capsys=capsys)[0] == 0
    table = read_table(output)
    source = open_input(spec, 4)  # the chunk size of the run
    chunks = [source.chunk(k) for k in range(source.num_chunks)]
    chunk = Structures(*(np.concatenate([getattr(c, name) for c in chunks]) for name in
                         ("numbers", "positions", "counts", "cell", "pbc", "ids")))
    ptr = torch.as_tensor(np.concatenate(([0], np.cumsum(chunk.counts))))
    batch = AtomicBatch(positions=torch.as_tensor(chunk.positions),
                        numbers=torch.as_tensor(chunk.numbers), cell=torch.zeros(9, 3, 3,
                        dtype=torch.float64), pbc=torch.zeros(9, 3, dtype=torch.bool), ptr=ptr)
    pairs = neighbor_list(batch.positions, 4.0, batch.cell, batch.pbc, batch.ptr,
                          max_neighbors=20)
    batch = replace(batch, neighbors=pairs, neighbor_cutoff=4.0)
    energy = model(batch, "metals", forces=False)["energy"].detach().numpy()
    np.testing.assert_allclose(table["energy:metals"], energy, rtol=1e-12)
    np.testing.assert_array_equal(table["n_atoms"], chunk.counts)


# ----------------------------------------------------------------- top-k, summary, plot
@pytest.mark.parametrize("rank_by", [None, "energy:molecules", "spread_per_atom", "max_force"])
def test_top_k_is_sorted_and_correct(tmp_path, files, rank_by, capsys):
    output = tmp_path / "t.csv"
    args = ["--model", files["model"], "--input", files["extxyz"], "--output", output,
            "--top-k", 4, "--forces", "--precision", "fp64"]
    code, out, err = cli(*args, *(["--rank-by", rank_by] if rank_by else []), capsys=capsys)
    assert code == 0, err
    table = read_table(output)
    summary = json.loads((tmp_path / "t_summary.json").read_text())
    column = rank_by or "energy_per_atom:metals"
    assert summary["rank_by"] == column
    best = np.argsort(table[column], kind="stable")[:4]
    assert [row["id"] for row in summary["top_k"]] == table["id"][best].tolist()
    values = [row[column] for row in summary["top_k"]]
    assert values == sorted(values)
    assert values[-1] <= np.sort(table[column])[4]
    for row in summary["top_k"]:
        i = row["id"]
        assert row["formula"] == table["formula"][i]
        for name in table:
            if name not in ("id", "formula", "n_atoms", "status"):
                assert row[name] == pytest.approx(table[name][i], rel=1e-12)
    # printed too, one line per structure
    assert sum(line.startswith("  id=") for line in out.splitlines()) == 4


def test_top_k_auto_ranks_by_the_blend(tmp_path, files, capsys):
    output = tmp_path / "t.npz"
    assert cli("--model", files["model"], "--input", files["extxyz"], "--output", output,
               "--top-k", 3, "--heads", "auto", capsys=capsys)[0] == 0
    summary = json.loads((tmp_path / "t_summary.json").read_text())
    table = read_table(output)
    assert summary["rank_by"] == "energy_per_atom:auto"
    assert [r["id"] for r in summary["top_k"]] == \
        np.argsort(table["energy_per_atom:auto"], kind="stable")[:3].tolist()


def test_histogram_and_summary(tmp_path, files, capsys):
    output = tmp_path / "res.csv"
    code, out, err = cli("--model", files["model"], "--input", "random:23,max_atoms=12",
                         "--output", output, "--chunk", 5, capsys=capsys)
    assert code == 0, err
    png = tmp_path / "res_energies.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    summary = json.loads((tmp_path / "res_summary.json").read_text())
    assert summary["structures"] == 23 and summary["structures_this_run"] == 23
    assert summary["atoms_this_run"] == int(read_csv(output)["n_atoms"].sum())
    assert summary["ranks"] == 1 and summary["heads"] == HEADS and summary["histogram"] == \
        str(png)
    assert summary["structures_per_s"] > 0 and summary["atoms_per_s"] > 0
    assert "top_k" not in summary
    assert "23 structures in" in out
    # a rerun of a finished run computes nothing and reports the same count
    code, out, err = cli("--model", files["model"], "--input", "random:23,max_atoms=12",
                         "--output", output, "--chunk", 5, capsys=capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "res_summary.json").read_text())
    assert summary["structures"] == 23 and summary["structures_this_run"] == 0
    assert len(read_csv(output)["id"]) == 23


def test_screen_api_returns_the_summary(tmp_path, files):
    settings = ScreenSettings(model=str(files["model"]), input="random:6,max_atoms=8",
                              output=str(tmp_path / "api.npz"), chunk=4, progress=False)
    summary = screen(settings)
    assert summary["structures"] == 6 and Path(summary["output"]).exists()
    with pytest.raises(ScreenError, match="--heads"):
        screen(ScreenSettings(model=str(files["model"]), input="random:6",
                              output=str(tmp_path / "api2.npz"), heads="nope"))


# ----------------------------------------------------------------- errors
def error_of(capsys, *args) -> str:
    code, _, err = cli(*args, capsys=capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pygfm-screen: error: "), err
    return lines[0]


def test_error_missing_and_bad_checkpoints(tmp_path, files, capsys):
    out = ["--input", "random:3", "--output", tmp_path / "o.csv"]
    assert "does not exist" in error_of(capsys, "--model", tmp_path / "none.pt", *out)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint\n")
    message = error_of(capsys, "--model", text, *out)
    assert "cannot be used" in message and str(text) in message
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    assert "not a pygfm multi-head checkpoint" in error_of(capsys, "--model", other, *out)
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.csv.parts").exists()


def test_error_heads(tmp_path, files, capsys):
    out = ["--model", files["model"], "--input", "random:3", "--output", tmp_path / "o.csv"]
    message = error_of(capsys, *out, "--heads", "metals,pbe")
    assert "'pbe'" in message and "metals, molecules, dft" in message
    assert "listed twice" in error_of(capsys, *out, "--heads", "dft,dft")
    message = error_of(capsys, "--model", files["plain"], "--input", "random:3", "--output",
                       tmp_path / "o.csv", "--heads", "auto")
    assert "no composition model" in message


@pytest.mark.parametrize("spec, words", [
    ("random:abc", "expected random:N"),
    ("random:10,foo=1", "unknown option 'foo'"),
    ("random:inf", "expected random:N"),
    ("random:3,seed=-2", "seed must be >= 0"),
    ("substitutions:bulk-Cu-fcc-3.6:Cu.Zz", "unknown element 'Zz'"),
    ("no/such/file.xyz", "no such file"),
])
def test_error_inputs(tmp_path, files, spec, words, capsys):
    message = error_of(capsys, "--model", files["model"], "--input", spec,
                       "--output", tmp_path / "o.csv")
    assert "--input" in message and words in message


def test_error_unreadable_input(tmp_path, files, capsys):
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\n\nH 0 0\n")
    message = error_of(capsys, "--model", files["model"], "--input", bad,
                       "--output", tmp_path / "o.csv")
    assert "cannot read structures" in message and str(bad) in message


def test_error_outputs(tmp_path, files, capsys):
    common = ["--model", files["model"], "--input", "random:3"]
    assert "cannot write into" in error_of(capsys, *common, "--output",
                                          tmp_path / "missing" / "o.csv")
    (tmp_path / "file").write_text("x")
    assert "cannot write into" in error_of(capsys, *common, "--output", tmp_path / "file" / "o.csv")
    assert "must end in .csv, .bp" in error_of(capsys, *common, "--output", tmp_path / "o.txt")


def test_outputs_that_are_not_a_screenings_are_refused_untouched(tmp_path, files, capsys):
    """OUTPUT, NAME_summary.json and NAME_energies.png are replaced only when
    OUTPUT.parts/run.json shows an earlier screening wrote them (issue #15)."""
    common = ["--model", files["model"], "--input", "random:3,max_atoms=4"]
    mine = tmp_path / "results.csv"
    mine.write_text("my,own\n1,2\n")
    message = error_of(capsys, *common, "--output", mine)
    assert str(mine) in message and "not the output of an earlier screening" in message
    assert mine.read_text() == "my,own\n1,2\n"
    folder = tmp_path / "campaign.bp"  # e.g. someone's ADIOS2 file: never removed
    folder.mkdir()
    (folder / "data.0").write_bytes(b"precious")
    assert "not the output of an earlier" in error_of(capsys, *common, "--output", folder)
    assert (folder / "data.0").read_bytes() == b"precious"
    (tmp_path / "other_summary.json").write_text("{}")
    assert "other_summary.json exists" in error_of(capsys, *common, "--output",
                                                   tmp_path / "other.npz")
    parts = tmp_path / "x.csv.parts"  # a folder of someone else's under our parts name
    parts.mkdir()
    (parts / "notes.txt").write_text("mine")
    assert "did not write (notes.txt)" in error_of(capsys, *common, "--output", tmp_path / "x.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["campaign.bp", "other_summary.json", "results.csv", "x.csv.parts"]
    assert [p.name for p in parts.iterdir()] == ["notes.txt"]


def test_the_input_is_never_the_output(tmp_path, files, capsys):
    source = tmp_path / "set.bp"
    shutil.copytree(files["dataset"], source)
    message = error_of(capsys, "--model", files["model"], "--input", source, "--output", source)
    assert "is the input" in message
    assert (source / "pygfm-dataset.json").is_file()


def test_a_rerun_removes_only_its_own_temporaries(tmp_path, files, capsys):
    output = tmp_path / "o.bp"
    args = ["--model", files["model"], "--input", "random:4,max_atoms=4", "--output", output,
            "--chunk", "2"]
    assert cli(*args, capsys=capsys)[0] == 0
    parts = tmp_path / "o.bp.parts"
    # what a SIGKILL during a chunk's or the merge's write leaves
    (parts / ".chunk-000000001.npz.tmp-0123abcd4567.npz").write_bytes(b"half")
    (tmp_path / ".o.bp.tmp-deadbeef.bp").mkdir()
    (tmp_path / ".o_summary.json.tmp-feed.json").write_text("{")
    kept = [tmp_path / ".o.bp.tmp-mine", tmp_path / "o.bp.tmp-deadbeef", parts / "notes.txt"]
    for path in kept:
        path.write_text("keep")
    assert cli(*args, capsys=capsys)[0] == 0
    assert read_bp(output)["id"].tolist() == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["o.bp", "o.bp.parts", "o_summary.json", "o_energies.png", ".o.bp.tmp-mine",
         "o.bp.tmp-deadbeef"])
    assert sorted(p.name for p in parts.iterdir()) == [
        "chunk-000000000.npz", "chunk-000000001.npz", "journal.jsonl", "notes.txt", "run.json"]


def test_error_settings(tmp_path, files, capsys):
    common = ["--model", files["model"], "--input", "random:3", "--output", tmp_path / "o.csv"]
    message = error_of(capsys, *common, "--top-k", 2, "--rank-by", "energy:pbe")
    assert "no column 'energy:pbe'" in message and "energy_per_atom:dft" in message
    # a misspelt --rank-by is reported even without --top-k
    assert "no column 'max_force'" in error_of(capsys, *common, "--rank-by", "max_force")
    assert "--top-k" in error_of(capsys, *common, "--top-k", -1)
    assert "--device" in error_of(capsys, *common, "--device", "nonsense")
    assert ">= 1" in error_of(capsys, *common, "--chunk", 0)
    assert ">= 1" in error_of(capsys, *common, "--batch-atoms", 0)
    with pytest.raises(SystemExit) as exit_:
        main([*map(str, common), "--precision", "fp16"])
    assert exit_.value.code == 2
    assert not (tmp_path / "o.csv.parts").exists()


# ----------------------------------------------------------------- subprocesses
def start(command, cwd) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([str(c) for c in command], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def finish(process, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    """Wait with a timeout; on timeout kill the whole process group (mpiexec's ranks too)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{process.args} timed out after {timeout} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def screen_command(files, spec, output, *extra):
    return [sys.executable, "-m", "pygfm.cli.screen", "--model", files["model"], "--input", spec,
            "--output", output, "--quiet", *extra]


def journal(parts: Path) -> list[dict]:
    path = parts / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


RESUME_SPEC = "random:360,seed=3,min_atoms=20,max_atoms=60"
RESUME_CHUNKS = 60  # of 6 structures


def test_resume_after_sigkill(tmp_path, files):
    settings = ["--chunk", 6, "--forces", "--precision", "fp64", "--device", "cpu"]
    # the uninterrupted run, in-process
    whole = tmp_path / "whole" / "out.csv"
    whole.parent.mkdir()
    assert main([*map(str, screen_command(files, RESUME_SPEC, whole, *settings)[3:])]) == 0

    work = tmp_path / "killed"
    work.mkdir()
    output = work / "out.csv"
    parts = work / "out.csv.parts"
    command = screen_command(files, RESUME_SPEC, output, *settings)
    process = start(command, cwd=work)
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(list(parts.glob("chunk-*.npz"))) < 3:
            assert process.poll() is None, finish(process).stderr
            assert time.monotonic() < deadline, "no part files appeared"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=TIMEOUT)
    assert process.returncode == -signal.SIGKILL
    assert not output.exists()
    done = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in parts.glob("chunk-*.npz")}
    assert 3 <= len(done) < RESUME_CHUNKS, "the run finished before it was killed"
    first = journal(parts)
    time.sleep(0.05)  # a rewrite would show in mtime_ns

    result = finish(start(command, cwd=work))
    assert result.returncode == 0, result.stderr
    # the same bytes as the uninterrupted run
    assert output.read_bytes() == whole.read_bytes()
    # finished parts were neither recomputed nor rewritten
    for path, stamp in done.items():
        assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp, path.name
    lines = journal(parts)
    chunks = [line["chunk"] for line in lines]
    assert lines[:len(first)] == first
    assert len(chunks) == len(set(chunks)), "a chunk was computed twice"
    rerun = {line["chunk"] for line in lines[len(first):]}
    assert rerun.isdisjoint(int(p.name[6:15]) for p in done)
    # every chunk is in the journal, but for at most one killed between its
    # part's rename and its journal line
    assert len(set(chunks)) >= RESUME_CHUNKS - 1
    assert set(chunks) | {int(p.name[6:15]) for p in done} == set(range(RESUME_CHUNKS))
    summary = json.loads((work / "out_summary.json").read_text())
    assert summary["structures"] == 360
    assert summary["structures_this_run"] == 360 - 6 * len(done)
    # no temporary files are left behind in the output's directory
    assert sorted(p.name for p in work.iterdir()) == \
        ["out.csv", "out.csv.parts", "out_energies.png", "out_summary.json"]


@pytest.mark.parametrize("change", [["--forces"], ["--chunk", "4"], ["--heads", "dft"],
                                    ["--precision", "fp32"]])
def test_rerun_with_other_settings_is_refused(tmp_path, files, change, capsys):
    base = ["--model", files["model"], "--input", "random:8,max_atoms=6", "--output",
            tmp_path / "o.csv", "--chunk", "3", "--precision", "fp64"]
    assert cli(*base, capsys=capsys)[0] == 0
    before = (tmp_path / "o.csv").read_bytes()
    options = dict(zip(base[::2], base[1::2]))
    options.update({change[0]: change[1]} if len(change) == 2 else {})
    flags = [] if len(change) == 2 else change
    args = [x for pair in options.items() for x in pair] + flags
    message = error_of(capsys, *args)
    assert "holds parts of a different screening run" in message
    assert (tmp_path / "o.csv").read_bytes() == before
    # another input is refused as well
    options["--input"] = "random:8,max_atoms=6,seed=1"
    assert "different screening run" in error_of(capsys, *[x for p in options.items() for x in p])


@needs_mpi
def test_mpi_output_equals_single_process(tmp_path, files):
    spec = "random:70,seed=8,max_atoms=30"
    settings = ["--chunk", 8, "--forces", "--heads", "auto", "--top-k", 5]
    alone = tmp_path / "alone" / "out.csv"
    alone.parent.mkdir()
    assert main([*map(str, screen_command(files, spec, alone, *settings)[3:])]) == 0
    shared = tmp_path / "mpi" / "out.csv"
    shared.parent.mkdir()
    command = [MPIEXEC, "-launcher", "fork", "-n", "2",
               *screen_command(files, spec, shared, *settings)]
    result = finish(start(command, cwd=shared.parent))
    assert result.returncode == 0, result.stderr
    assert shared.read_bytes() == alone.read_bytes()
    summary = json.loads((shared.parent / "out_summary.json").read_text())
    reference_summary = json.loads((alone.parent / "out_summary.json").read_text())
    assert summary["ranks"] == 2 and summary["structures"] == 70
    assert summary["structures_this_run"] == 70
    assert summary["top_k"] == reference_summary["top_k"]
    assert (shared.parent / "out_energies.png").exists()
    # rank r took chunks r, r + 2, ...
    lines = journal(shared.parent / "out.csv.parts")
    assert sorted(line["chunk"] for line in lines) == list(range(9))
    assert all(line["chunk"] % 2 == line["rank"] for line in lines)


@needs_mpi
def test_mpi_refusal_ends_every_rank(tmp_path, files):
    """Only rank 0 checks the parts' run: the other rank must not hang at a barrier."""
    output = tmp_path / "o.csv"
    assert main([*map(str, screen_command(files, "random:4,max_atoms=5", output)[3:])]) == 0
    command = [MPIEXEC, "-launcher", "fork", "-n", "2",
               *screen_command(files, "random:4,max_atoms=5", output, "--forces")]
    result = finish(start(command, cwd=tmp_path), timeout=60)
    assert result.returncode != 0
    assert "different screening run" in result.stderr


# ----------------------------------------------------------------- row status
def test_bad_rows_get_a_status_nan_energies_and_no_rank(tmp_path, files, capsys):
    """Overlapping atoms, a tiny periodic cell and an element no head saw (Og):
    the run finishes (exit 0) with one warning, those rows hold NaN energies
    and their status, and top-k ranks only the good rows."""
    good = [ase.build.bulk("Cu", "fcc", a=3.6, cubic=True), ase.build.molecule("H2O")]
    pair = ase.Atoms("CuAu", positions=[[0, 0, 0], [0, 0, 0.004]])
    tiny = ase.Atoms("Cu", cell=np.eye(3) * 0.005, pbc=True)
    oganesson = ase.Atoms("OgH", positions=[[0, 0, 0], [0, 0, 1.5]])
    source = tmp_path / "bad.extxyz"
    ase.io.write(source, [good[0], pair, good[1], tiny, oganesson])
    output = tmp_path / "bad.csv"
    code, _, err = cli("--model", files["model"], "--input", source, "--output", output,
                       "--top-k", 5, "--batch-atoms", 64, "--precision", "fp64",
                       capsys=capsys)
    assert code == 0
    table = read_csv(output)
    status = list(table["status"])
    assert status[0] == status[2] == "ok"
    assert status[1] == "overlapping atoms 0-1 at 0.0040 A"
    assert status[3].startswith("overlapping atoms 0-0 at 0.0050 A")
    assert status[4] == "; ".join(f"unseen element Og for head {h}" for h in HEADS)
    for name in HEADS:
        energy = table[f"energy:{name}"]
        assert np.isfinite(energy[[0, 2]]).all() and np.isnan(energy[[1, 3, 4]]).all()
    assert "warning: 3 of 5 structures are not ok" in err
    summary = json.loads((tmp_path / "bad_summary.json").read_text())
    assert summary["not_ok"] == 3
    assert summary["not_ok_kinds"] == {"overlapping_atoms": 2, "unseen_elements": 1}
    assert sorted(row["id"] for row in summary["top_k"]) == [0, 2]
    # the good rows are those of a run without the bad ones
    clean = tmp_path / "good.csv"
    ase.io.write(tmp_path / "good.extxyz", good)
    assert cli("--model", files["model"], "--input", tmp_path / "good.extxyz", "--output",
               clean, "--precision", "fp64", capsys=capsys)[0] == 0
    np.testing.assert_allclose(table["energy:dft"][[0, 2]], read_csv(clean)["energy:dft"],
                               rtol=1e-12)

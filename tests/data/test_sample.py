"""Sample (one labelled structure), labels_from_ase and SampleBlock (column-wise).

* ASE round trips: geometry, labels, stress Voigt <-> 3x3 (ASE order xx yy zz yz xz xy);
* where labels come from: calculator results, info/arrays names, virial, explicit keys;
* every invalid input is refused with a message naming the sample;
* SampleBlock: from_samples/sample, masks, select, concatenate and check().
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from hypothesis import given, settings
from hypothesis import strategies as st

from _structures import KINDS, assert_same_sample, emt_label, mixed_structures, random_atoms
from pygfm.data import LABELS, Sample, SampleBlock, labels_from_ase

VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


def labelled_copper():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=3)
    atoms.set_cell(atoms.cell.array + [[0, 0.1, 0], [0.05, 0, 0], [0, 0.2, 0]],
                   scale_atoms=False)
    return emt_label(atoms)


# ----------------------------------------------------------------- ASE round trip
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS))
def test_from_ase_to_ase_round_trip(seed, kind):
    rng = np.random.default_rng(seed)
    atoms = random_atoms(rng, kind)
    emt_label(atoms, ("energy", "forces", "stress") if kind == "bulk" else ("energy", "forces"))
    sample = Sample.from_ase(atoms, dataset="d", index=7)
    assert sample.where == "d, sample 7"
    assert sample.numbers.dtype == np.int64 and sample.pbc.dtype == bool
    np.testing.assert_array_equal(sample.numbers, atoms.numbers)
    np.testing.assert_array_equal(sample.positions, atoms.positions)
    np.testing.assert_array_equal(sample.cell, atoms.cell.array)
    np.testing.assert_array_equal(sample.pbc, atoms.pbc)
    assert sample.energy == atoms.calc.results["energy"]
    np.testing.assert_array_equal(sample.forces, atoms.calc.results["forces"])

    back = sample.to_ase()
    np.testing.assert_array_equal(back.numbers, atoms.numbers)
    np.testing.assert_array_equal(back.positions, atoms.positions)
    np.testing.assert_array_equal(back.cell.array, atoms.cell.array)
    np.testing.assert_array_equal(back.pbc, atoms.pbc)
    assert back.get_potential_energy() == atoms.get_potential_energy()
    np.testing.assert_array_equal(back.get_forces(), atoms.get_forces())
    if kind == "bulk":
        np.testing.assert_array_equal(back.get_stress(), atoms.get_stress())
    else:
        assert sample.stress is None and "stress" not in back.calc.results
    assert back.info == {"dataset": "d", "index": 7}
    assert_same_sample(Sample.from_ase(back, dataset="d", index=7), sample)


def test_stress_voigt_order_and_back():
    voigt = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # xx yy zz yz xz xy
    atoms = bulk("Cu", cubic=True)
    atoms.calc = SinglePointCalculator(atoms, stress=voigt)
    sample = Sample.from_ase(atoms)
    expected = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    np.testing.assert_array_equal(sample.stress, expected)
    for k, (i, j) in enumerate(VOIGT):
        assert sample.stress[i, j] == sample.stress[j, i] == voigt[k]
    np.testing.assert_array_equal(sample.to_ase().get_stress(), voigt)
    # a full [3, 3] and a flat [9] give the same tensor; other shapes are refused
    assert np.array_equal(Sample([29], [[0, 0, 0]], stress=expected).stress, expected)
    assert np.array_equal(Sample([29], [[0, 0, 0]], stress=expected.ravel()).stress, expected)
    with pytest.raises(ValueError, match=r"stress has shape \(4,\)"):
        Sample([29], [[0, 0, 0]], stress=np.zeros(4))


def test_real_emt_stress_survives_voigt_round_trip():
    atoms = labelled_copper()
    sample = Sample.from_ase(atoms)
    np.testing.assert_array_equal(sample.stress, sample.stress.T)
    np.testing.assert_array_equal(sample.to_ase().get_stress(), atoms.get_stress())
    assert np.abs(atoms.get_stress()[3:]).max() > 0  # off-diagonal terms really exercised


def test_defaults_molecule_without_labels():
    sample = Sample(numbers=[8, 1, 1], positions=np.zeros((3, 3)) + np.arange(3)[:, None])
    assert sample.labels == () and sample.num_atoms == 3
    assert sample.cell.shape == (3, 3) and not sample.cell.any() and not sample.pbc.any()
    atoms = sample.to_ase()
    assert atoms.calc is None and atoms.info == {}
    assert Sample(numbers=[1], positions=[[0, 0, 0]], pbc=True,
                  cell=np.eye(3)).pbc.tolist() == [True] * 3  # broadcast


# ----------------------------------------------------------------- where labels come from
def test_labels_from_calculator_results():
    atoms = labelled_copper()
    found = labels_from_ase(atoms)
    assert found["energy"] == atoms.get_potential_energy()
    np.testing.assert_array_equal(found["forces"], atoms.get_forces())
    assert found["stress"].shape == (3, 3)


def test_free_energy_is_used_when_there_is_no_energy():
    atoms = molecule("H2O")
    atoms.calc = SinglePointCalculator(atoms, free_energy=-3.5)
    assert labels_from_ase(atoms)["energy"] == -3.5


@pytest.mark.parametrize("energy_name, forces_name", [("energy", "forces"),
                                                      ("REF_energy", "REF_forces")])
def test_labels_from_info_and_arrays(energy_name, forces_name):
    atoms = molecule("CH4")
    forces = np.random.default_rng(0).normal(size=(5, 3))
    atoms.info[energy_name] = -12.5
    atoms.arrays[forces_name] = forces
    sample = Sample.from_ase(atoms)
    assert sample.energy == -12.5
    np.testing.assert_array_equal(sample.forces, forces)
    assert sample.stress is None


def test_calculator_wins_over_info():
    atoms = molecule("H2O")
    atoms.info["REF_energy"] = 99.0
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0)
    assert Sample.from_ase(atoms).energy == -1.0


def test_virial_becomes_stress():
    atoms = bulk("Al", cubic=True)
    atoms.set_cell(atoms.cell.array + [[0, 0.2, 0], [0, 0, 0.1], [0.3, 0, 0]],
                   scale_atoms=True)
    virial = np.array([[1.0, 0.2, 0.3], [0.2, 2.0, 0.5], [0.3, 0.5, 3.0]])
    atoms.info["virial"] = virial
    stress = Sample.from_ase(atoms).stress
    np.testing.assert_allclose(stress, -virial / atoms.get_volume(), rtol=1e-14)
    atoms.info["virial"] = virial[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]  # Voigt virial
    np.testing.assert_allclose(Sample.from_ase(atoms).stress, -virial / atoms.get_volume(),
                               rtol=1e-14)
    # an explicit stress wins over a virial
    atoms.info["stress"] = np.arange(6.0)
    assert Sample.from_ase(atoms).stress[0, 1] == 5.0


def test_virial_without_volume_is_refused():
    atoms = molecule("H2O")
    atoms.info["virial"] = np.eye(3)
    with pytest.raises(ValueError, match="mol, sample 4: a virial is given but the cell has no"):
        Sample.from_ase(atoms, dataset="mol", index=4)


def test_explicit_keys():
    atoms = molecule("H2O")
    atoms.info.update(REF_energy=1.0, my_energy=-2.0, my_stress=np.arange(9.0))
    atoms.arrays["my_forces"] = np.ones((3, 3))
    atoms.arrays["REF_forces"] = np.zeros((3, 3))
    sample = Sample.from_ase(atoms, energy_key="my_energy", forces_key="my_forces",
                             stress_key="my_stress")
    assert sample.energy == -2.0
    np.testing.assert_array_equal(sample.forces, np.ones((3, 3)))
    np.testing.assert_array_equal(sample.stress, np.arange(9.0).reshape(3, 3))
    assert Sample.from_ase(atoms).energy == 1.0  # without keys: the usual names


def test_explicit_energy_key_keeps_calculator_forces():
    """ase.io puts an extxyz's `forces` column into a SinglePointCalculator: naming
    only the energy key must not drop those forces."""
    atoms = labelled_copper()
    atoms.info["dft_energy"] = -7.25
    sample = Sample.from_ase(atoms, energy_key="dft_energy")
    assert sample.energy == -7.25  # the key wins over the calculator's energy
    np.testing.assert_array_equal(sample.forces, atoms.get_forces())
    np.testing.assert_array_equal(sample.to_ase().get_stress(), atoms.get_stress())


@pytest.mark.parametrize("key, label", [("energy_key", "energy"), ("forces_key", "forces"),
                                        ("stress_key", "stress")])
def test_missing_explicit_key_is_an_error(key, label):
    atoms = molecule("H2O")
    atoms.info["REF_energy"] = 1.0
    with pytest.raises(KeyError, match=f"set, sample 2: no {label} under the key 'nope'"):
        Sample.from_ase(atoms, dataset="set", index=2, **{key: "nope"})


def test_labels_false_ignores_labels():
    sample = Sample.from_ase(labelled_copper(), labels=False)
    assert sample.labels == ()


# ----------------------------------------------------------------- invalid input
def _water(**changes):
    atoms = molecule("H2O")
    for name, value in changes.items():
        setattr(atoms, name, value)
    return atoms


@pytest.mark.parametrize("make, message", [
    (lambda: Atoms(), "has no atoms"),
    (lambda: Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "positions contain NaN"),
    (lambda: Atoms("H2", positions=[[0, 0, 0], [np.inf, 0, 0]]), "positions contain NaN"),
    (lambda: Atoms("H", cell=[[np.nan, 0, 0], [0, 1, 0], [0, 0, 1]]), "cell contain NaN"),
    (lambda: Atoms("XH", positions=[[0, 0, 0], [1, 0, 0]]), "atom 0 has atomic number 0"),
    (lambda: Atoms("H", pbc=True), "periodic directions [0, 1, 2] are degenerate"),
    (lambda: Atoms("H", cell=[[2, 0, 0], [4, 0, 0], [0, 0, 3]], pbc=True), "degenerate"),
    (lambda: Atoms("H", cell=[[2, 0, 0], [0, 2, 0], [0, 0, 0]], pbc=(True, False, True)),
     "periodic directions [0, 2] are degenerate"),
])
def test_bad_structures_are_refused_naming_the_sample(make, message):
    with pytest.raises(ValueError) as info:
        Sample.from_ase(make(), dataset="bad-set", index=17)
    assert "bad-set, sample 17" in str(info.value)
    assert message in str(info.value)


def test_slab_with_zero_third_vector_is_fine():
    sample = Sample.from_ase(Atoms("H", cell=[[2, 0, 0], [1, 2, 0], [0, 0, 0]],
                                   pbc=(True, True, False)))
    assert sample.pbc.tolist() == [True, True, False]


@pytest.mark.parametrize("results, message", [
    (dict(energy=np.nan), "energy is nan"),
    (dict(energy=np.inf), "energy is inf"),
    (dict(forces=np.full((3, 3), np.nan)), "forces contain NaN"),
    (dict(forces=np.zeros((2, 3))), r"forces have shape \(2, 3\); expected \[3, 3\]"),
    (dict(stress=np.array([0, 0, np.inf, 0, 0, 0.0])), "stress contains NaN"),
])
def test_bad_labels_are_refused_naming_the_sample(results, message):
    atoms = molecule("H2O")
    atoms.calc = SinglePointCalculator(atoms, **results)
    with pytest.raises(ValueError, match=f"water, sample 3: {message}"):
        Sample.from_ase(atoms, dataset="water", index=3)


@pytest.mark.parametrize("numbers", [[0], [119], [200], [-1]])
def test_atomic_numbers_outside_1_to_118(numbers):
    with pytest.raises(ValueError, match=f"sample 5: atom 0 has atomic number {numbers[0]}, "
                                         r"not an element \(1..118\)"):
        Sample(numbers=numbers, positions=[[0, 0, 0]], index=5)
    Sample(numbers=[118], positions=[[0, 0, 0]])  # oganesson is an element


def test_bad_shapes_in_the_constructor():
    with pytest.raises(ValueError, match=r"positions have shape \(2, 2\); expected \[2, 3\]"):
        Sample(numbers=[1, 1], positions=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"cell has shape \(3,\)"):
        Sample(numbers=[1], positions=np.zeros((1, 3)), cell=np.ones(3))
    with pytest.raises(ValueError, match="structure: the structure has no atoms"):
        Sample(numbers=[], positions=np.zeros((0, 3)))


@pytest.mark.parametrize("thing", [None, "H2O", np.zeros((3, 3)), {"numbers": [1]}])
def test_non_atoms_input(thing):
    with pytest.raises(TypeError, match=r"ds, sample 9 is a \w+, not an ase.Atoms"):
        Sample.from_ase(thing, dataset="ds", index=9)


# ----------------------------------------------------------------- SampleBlock
def samples_with_mixed_labels(n=25, seed=1):
    atoms = mixed_structures(n, seed)
    return [Sample.from_ase(a) for a in atoms]


def test_block_from_samples_round_trip_with_masks():
    samples = samples_with_mixed_labels()
    block = SampleBlock.from_samples(samples, dataset="mix", first_id=100)
    block.check("block")
    a = block.arrays
    assert len(block) == len(samples)
    assert block.num_atoms == sum(s.num_atoms for s in samples)
    assert block.labels == LABELS
    for name in ("energy", "forces", "stress"):
        np.testing.assert_array_equal(a[f"has_{name}"],
                                      [getattr(s, name) is not None for s in samples])
        assert a[f"has_{name}"].dtype == np.uint8
    assert a["numbers"].dtype == np.uint8 and a["pbc"].dtype == np.uint8
    np.testing.assert_array_equal(a["sample_id"], 100 + np.arange(len(samples)))
    np.testing.assert_array_equal(a["atom_offset"][1:],
                                  np.cumsum([s.num_atoms for s in samples])[:-1])
    for k, sample in enumerate(samples):
        got = block.sample(k)
        assert_same_sample(got, sample, index=100 + k, dataset="mix")
        rows = slice(a["atom_offset"][k], a["atom_offset"][k] + a["atom_count"][k])
        if sample.energy is None:
            assert a["energy"][k] == 0.0
        if sample.forces is None:
            assert not a["forces"][rows].any()
        if sample.stress is None:
            assert not a["stress"][k].any()


def test_block_sample_ids_come_from_indices_when_given():
    samples = [Sample([1], [[0, 0, 0]], index=5), Sample([1], [[0, 0, 0]]),
               Sample([1], [[0, 0, 0]], index=0)]
    np.testing.assert_array_equal(
        SampleBlock.from_samples(samples, first_id=10).arrays["sample_id"], [5, 11, 0])


def test_block_leaves_out_labels_no_sample_has():
    samples = [Sample.from_ase(molecule("H2O")), Sample.from_ase(molecule("NH3"))]
    block = SampleBlock.from_samples(samples)
    assert block.labels == ()
    assert not {"energy", "has_energy", "forces", "has_forces", "stress"} & set(block.arrays)
    assert block.sample(1).labels == ()
    empty = SampleBlock.from_samples([])
    assert len(empty) == 0 and empty.num_atoms == 0
    empty.check("empty")
    assert empty.arrays["positions"].shape == (0, 3) and empty.arrays["cell"].shape == (0, 3, 3)


@pytest.mark.parametrize("order", [[3, 0, 2], [4, 4, 1, 4], [], [0], list(range(25))[::-1]])
def test_select_any_order_with_repeats(order):
    samples = samples_with_mixed_labels()
    block = SampleBlock.from_samples(samples)
    chosen = block.select(order)
    chosen.check("selected")
    assert len(chosen) == len(order)
    assert chosen.num_atoms == sum(samples[k].num_atoms for k in order)
    for position, k in enumerate(order):
        assert_same_sample(chosen.sample(position), samples[k], index=k)
    # select of a select
    if len(order) > 1:
        again = chosen.select([len(order) - 1, 0])
        assert_same_sample(again.sample(0), samples[order[-1]])
        assert_same_sample(again.sample(1), samples[order[0]])


def test_concatenate_masks_labels_missing_in_some_blocks():
    with_energy = [Sample.from_ase(emt_label(molecule("CH4"), ("energy",)), index=0)]
    with_forces = [Sample.from_ase(emt_label(bulk("Cu", cubic=True), ("forces", "stress")),
                                   index=1),
                   Sample.from_ase(molecule("H2O"), index=2)]
    bare = [Sample.from_ase(molecule("NH3"), index=3)]
    blocks = [SampleBlock.from_samples(part, "d")
              for part in (with_energy, with_forces, bare)]
    assert blocks[0].labels == ("energy",) and blocks[1].labels == ("forces", "stress")
    joined = SampleBlock.concatenate(blocks)
    joined.check("joined")
    assert joined.labels == LABELS and joined.dataset == "d"
    a = joined.arrays
    np.testing.assert_array_equal(a["has_energy"], [1, 0, 0, 0])
    np.testing.assert_array_equal(a["has_forces"], [0, 1, 0, 0])
    np.testing.assert_array_equal(a["has_stress"], [0, 1, 0, 0])
    for name, value in a.items():
        assert value.dtype == blocks[0].arrays.get(name, value).dtype, name
    everything = with_energy + with_forces + bare
    for k, sample in enumerate(everything):
        assert_same_sample(joined.sample(k), sample, index=k)
    np.testing.assert_array_equal(a["atom_offset"],
                                  np.cumsum([0] + [s.num_atoms for s in everything[:-1]]))
    with pytest.raises(ValueError, match="no blocks"):
        SampleBlock.concatenate([])


def _corrupt(block, name, value):
    arrays = {key: val.copy() for key, val in block.arrays.items()}
    arrays[name] = value(arrays[name]) if callable(value) else value
    return SampleBlock(arrays, block.dataset)


@pytest.mark.parametrize("name, change, message", [
    ("positions", lambda v: v[:-1], r"'positions' has shape \[\d+, 3\]; expected"),
    ("cell", lambda v: v[:, :2], r"'cell' has shape"),
    ("forces", lambda v: v[:, :2], r"'forces' has shape"),
    ("energy", lambda v: v[:-1], r"'energy' has shape"),
    ("numbers", lambda v: v.astype(np.int64), "'numbers' is int64; expected uint8"),
    ("positions", lambda v: v.astype(np.float32), "'positions' is float32; expected float64"),
    ("has_energy", lambda v: v.astype(bool), "'has_energy' is bool; expected uint8"),
    ("atom_offset", lambda v: v + 1, r"sample \d+ claims atoms \d+:\d+ of \d+"),
    ("atom_offset", lambda v: v - 1, r"sample 0 claims atoms -1:"),
    ("atom_count", lambda v: np.where(np.arange(len(v)) == 2, 0, v), "sample 2 has 0 atoms"),
    ("numbers", lambda v: np.where(np.arange(len(v)) == 1, 0, v).astype(np.uint8),
     "atomic number 0 is not an element"),
    ("numbers", lambda v: np.full_like(v, 119), "atomic number 119 is not an element"),
    ("positions", lambda v: np.where(v == v.max(), np.nan, v), "'positions' contains NaN"),
    ("cell", lambda v: np.where(v == v.max(), np.inf, v), "'cell' contains NaN or inf"),
    ("energy", lambda v: np.full_like(v, np.nan), "'energy' contains NaN"),
    ("forces", lambda v: np.full_like(v, -np.inf), "'forces' contains NaN"),
    ("stress", lambda v: np.full_like(v, np.nan), "'stress' contains NaN"),
])
def test_check_catches_each_inconsistency(name, change, message):
    block = SampleBlock.from_samples(samples_with_mixed_labels(10, seed=4)
                                     + [Sample.from_ase(labelled_copper())])
    assert block.labels == LABELS
    block.check("fine")
    with pytest.raises(ValueError, match="shard-7: " + message):
        _corrupt(block, name, change).check("shard-7")


def test_check_catches_a_missing_required_array():
    block = SampleBlock.from_samples(samples_with_mixed_labels(3, seed=5))
    del block.arrays["sample_id"]
    with pytest.raises(ValueError, match="here: the array 'sample_id' is missing"):
        block.check("here")


def test_masked_keys_virial_key_and_charge_spin_from_info():
    """missing="mask" (what pygfm-data convert uses): an absent explicit key or a NaN
    gives None; a stress key naming a virial gives -V / volume (ASE's sign)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.info.update(REF_energy=float("nan"), my_virial=np.diag([1.0, 2.0, 3.0]),
                      charge=-1, multiplicity=2)
    sample = Sample.from_ase(atoms, energy_key="REF_energy", forces_key="dft_forces",
                             stress_key="my_virial", missing="mask")
    assert sample.energy is None and sample.forces is None
    np.testing.assert_allclose(sample.stress, -np.diag([1.0, 2.0, 3.0]) / 3.6 ** 3)
    assert (sample.charge, sample.spin) == (-1.0, 2.0)
    with pytest.raises(KeyError, match="no forces under the key 'dft_forces'"):
        Sample.from_ase(atoms, forces_key="dft_forces")  # the default stays strict

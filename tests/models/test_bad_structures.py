"""Bad structures (pygfm issue #15, item 2): overlapping atoms raise naming the
structure, Z = 1..118 all work and nothing else passes the first boundary, and
heads warn about the elements *they* never saw."""

from __future__ import annotations

import warnings

import ase
import ase.build
import numpy as np
import pytest
import torch

from pygfm.calculator import PyGFMCalculator
from pygfm.data import AtomicBatch, Sample, collate
from pygfm.data.overlap import MIN_DISTANCE, OverlapError
from pygfm.models import MultiHeadModel, load, save_checkpoint
from pygfm.nn import PaiNN


def model() -> MultiHeadModel:
    torch.manual_seed(0)
    net = MultiHeadModel(PaiNN(n_features=8, n_interactions=1, cutoff=3.0, n_rbf=4),
                         ["metals", "molecules"]).double()
    net.set_normalization("metals", {"reference_energies": {"Cu": -3.0, "Au": -3.2},
                                     "elements": ["Cu", "Au"]})
    net.set_normalization("molecules", {"reference_energies": {"H": -13.6, "O": -2040.0},
                                        "elements": ["H", "O"]})
    return net


def test_predict_names_the_overlapping_structure():
    water = ase.build.molecule("H2O")
    pair = ase.Atoms("CuAu", positions=[[1, 1, 1], [1, 1, 1]])
    with pytest.raises(OverlapError, match=r"structure 2 \(AuCu\): atoms 0 and 1 are "
                                           r"0.0000 Å apart, closer than 0.01 Å"):
        model().predict([water, water, pair], head="molecules")
    # a later chunk: the index is the structure's in the list, not in its chunk
    with pytest.raises(OverlapError, match="structure 3 "):
        model().predict([water] * 3 + [pair], head="molecules", max_atoms=3)


def test_an_atom_on_its_own_image_is_caught():
    tiny = ase.Atoms("Cu", cell=np.eye(3) * 0.005, pbc=True)  # a tiny cell
    with pytest.raises(OverlapError, match="atom 0 is 0.0050 Å from its own periodic image"):
        model().predict([ase.build.bulk("Cu"), tiny], head="metals")
    image = ase.Atoms("Cu2", positions=[[0, 0, 0], [2.999, 0, 0]], cell=np.eye(3) * 3.0,
                      pbc=True)  # the second atom sits 0.001 Å from the first one's image
    with pytest.raises(OverlapError, match="atoms 0 and 1 are 0.0010 Å apart"):
        model().predict([image], head="metals")
    with pytest.raises(ValueError, match=r"sample 4: atoms 0 and 1 are 0.0010 Å"):
        Sample.from_ase(image, dataset="in.xyz", index=4).check_overlap()


def test_forward_on_a_batch_raises_and_a_nearby_pair_does_not():
    pair = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.0]])
    batch = AtomicBatch.from_atoms([ase.build.molecule("H2O"), pair])
    with pytest.raises(OverlapError, match=r"structure 1 \(H2\)") as caught:
        model()(batch, "molecules")
    assert caught.value.structure == 1 and caught.value.atoms == (0, 1)
    close = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 2 * MIN_DISTANCE]])
    assert np.isfinite(model().predict([close], head="molecules")["energy"]).all()


@pytest.mark.parametrize("z", [0, 119])
def test_atomic_numbers_outside_1_118_are_refused(z):
    atoms = ase.Atoms(numbers=[1, z], positions=[[0, 0, 0], [0, 0, 1.0]])
    with pytest.raises(ValueError, match=f"atom 1 has atomic number {z}, not an element"):
        AtomicBatch.from_atoms([atoms])
    with pytest.raises(ValueError, match=f"sample 0: atom 1 has atomic number {z}"):
        Sample.from_ase(atoms, index=0)


def test_z_105_trains_a_step_and_predicts(tmp_path):
    dubnium = ase.Atoms(numbers=[105, 1], positions=[[0, 0, 0], [0, 0, 1.8]])
    sample = Sample.from_ase(dubnium, index=0)
    sample.energy, sample.forces = -5.0, np.zeros((2, 3))
    net = model().train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    out = net(collate([sample]), dataset_heads=[0])
    loss = (out["energy"] + 5.0).pow(2).sum() + out["forces"].pow(2).sum()
    loss.backward()
    optimizer.step()
    assert net.representation.embedding.weight.grad[105].abs().sum() > 0
    assert torch.isfinite(loss)
    loaded = load(save_checkpoint(net, tmp_path / "m.pt"))
    with pytest.warns(UserWarning, match=r"head 'metals' was not trained on \['H', 'Db'\]"):
        energy = loaded.predict([dubnium], head="metals")["energy"]
    assert np.isfinite(energy).all()


def test_an_old_100_row_checkpoint_loads_padded(tmp_path):
    net = MultiHeadModel(PaiNN(n_features=8, n_interactions=1, cutoff=3.0, n_rbf=4,
                               max_z=100), ["metals"]).double()
    net.set_normalization("metals", {"reference_energies": {"Cu": -3.0}})
    path = save_checkpoint(net, tmp_path / "old.pt")
    content = torch.load(path, weights_only=True)
    del content["state_dict"]["head_elements"]  # as written before it existed
    torch.save(content, path)
    loaded = load(path)
    assert loaded.representation.embedding.weight.shape[0] == 119
    assert loaded.head_elements[0].nonzero().reshape(-1).tolist() == [29]  # from references
    copper = ase.build.bulk("Cu")
    np.testing.assert_allclose(loaded.predict([copper])["energy"],
                               net.predict([copper])["energy"], rtol=1e-12)


def test_unseen_elements_warn_per_head():
    water = ase.build.molecule("H2O")
    net = model()
    with pytest.warns(UserWarning, match=r"head 'metals' was not trained on \['H', 'O'\] "
                                         r"\(structures 1\)"):
        net.predict([ase.build.bulk("Cu"), water], head="metals")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the head that saw H and O: no warning
        net.predict([water], head="molecules")
    calc = PyGFMCalculator(net, head="metals")
    with pytest.warns(UserWarning, match=r"the head 'metals' was not trained on \['H', 'O'\]"):
        water.calc = calc
        water.get_potential_energy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per composition: a moved H2O is not new
        moved = water.copy()
        moved.positions[0] += 0.05
        moved.calc = calc
        moved.get_potential_energy()

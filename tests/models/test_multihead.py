"""MultiHeadModel: routing by dataset, grouped heads, normalization, derivatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from pygfm.data import SampleBlock, collate, from_ase
from pygfm.data.sample import Sample
from pygfm.models import MultiHeadModel
from pygfm.nn import PaiNN

HEADS = ["metals", "molecules", "dft"]


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = MultiHeadModel(PaiNN(n_features=16, n_interactions=2, cutoff=4.0, n_rbf=8),
                           HEADS, **kwargs).double()
    # heads differ from one another (fresh MLPs already do; make the last layer bolder)
    for head in model.heads:
        torch.nn.init.normal_(head.layers[-1].weight if hasattr(head, "layers")
                              else list(head.parameters())[-2], std=0.5)
    return model


def _structures():
    rng = np.random.default_rng(3)
    out = []
    for k, name in enumerate(["H2O", "CH4", "NH3", "C2H6"]):
        atoms = molecule(name)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        out.append(atoms)
    for k in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=k)
        out.append(atoms)
    return out


def _batch(structures, datasets):
    """One block per structure, so each gets its own dataset index, in order."""
    samples = [Sample.from_ase(a, labels=False, index=k) for k, a in enumerate(structures)]
    return collate([SampleBlock.from_samples([s]) for s in samples], dataset=datasets)


def test_routing_equals_each_structure_through_its_own_head():
    model = _model()
    structures = _structures()
    datasets = [1, 2, 1, 0, 0, 2, 0]
    routed = model(_batch(structures, datasets))
    for k, (atoms, d) in enumerate(zip(structures, datasets)):
        alone = model(from_ase([atoms]), HEADS[d])
        assert routed["energy"][k].item() == pytest.approx(alone["energy"][0].item(), rel=1e-12)
    # and the forces of the routed batch are those of each structure's own head
    all_heads = model(_batch(structures, datasets), "all")
    batch = _batch(structures, datasets)
    owner = batch.structure_index()
    expected = all_heads["forces"][torch.as_tensor(datasets)[owner], torch.arange(len(owner))]
    assert torch.allclose(routed["forces"], expected, rtol=1e-10, atol=1e-12)


def test_each_used_head_runs_once_over_its_own_atoms():
    model = _model()
    calls = []
    for index, head in enumerate(model.heads):
        head.register_forward_hook(lambda m, args, out, i=index: calls.append((i, len(args[0]))))
    structures = _structures()
    datasets = [1, 0, 1, 0, 1, 0, 1]
    model(_batch(structures, datasets), forces=False)
    atoms = [sum(len(a) for a, d in zip(structures, datasets) if d == h) for h in range(3)]
    assert sorted(calls) == [(0, atoms[0]), (1, atoms[1])]


def test_all_heads_give_one_column_per_head_and_heads_differ():
    model = _model()
    batch = _batch(_structures(), [0] * 7)
    out = model(batch, "all", stress=True)
    assert out["energy"].shape == (7, 3)
    assert out["forces"].shape == (3, batch.num_atoms, 3)
    assert out["stress"].shape == (3, 7, 3, 3)
    for h, name in enumerate(HEADS):
        single = model(batch, name, stress=True)
        assert torch.allclose(single["energy"], out["energy"][:, h], rtol=1e-12)
        assert torch.allclose(single["forces"], out["forces"][h], rtol=1e-10, atol=1e-12)
    assert (out["energy"][:, 0] - out["energy"][:, 1]).abs().min() > 1e-6


def test_normalization_gives_absolute_energies_in_each_convention():
    stats = {"metals": {"reference_energies": {"Cu": -3.5}, "energy_scale": 0.1},
             "molecules": {"reference_energies": {"H": -13.6, "C": -1030.0, "O": -2040.0,
                                                  "N": -1480.0}, "energy_scale": 0.4}}
    model = _model(normalization=stats)
    for head in model.heads:  # heads predict zero: energies are the references alone
        for p in head.parameters():
            torch.nn.init.zeros_(p)
    structures = _structures()
    out = model(_batch(structures, [1, 1, 1, 1, 0, 0, 2]), forces=False)
    copper = structures[4]
    assert out["energy"][0].item() == pytest.approx(2 * -13.6 - 2040.0, rel=1e-15)
    assert out["energy"][4].item() == pytest.approx(len(copper) * -3.5, rel=1e-15)
    assert out["energy"][6].item() == 0.0  # "dft" has no normalization yet
    assert model.reference.dtype == torch.float64
    model.float()
    assert model.reference.dtype == torch.float64 and model.scale.dtype == torch.float64


def test_scale_multiplies_the_head_output():
    model = _model()
    batch = _batch(_structures(), [0] * 7)
    before = model(batch, "metals", forces=False)["energy"]
    model.set_normalization("metals", {"reference_energies": {}, "energy_scale": 2.5})
    after = model(batch, "metals", forces=False)["energy"]
    assert torch.allclose(after, 2.5 * before, rtol=1e-12)


def test_forces_are_minus_the_energy_gradient():
    model = _model()
    atoms = _structures()[5]
    batch = from_ase([atoms])
    out = model(batch, "metals")
    step = 1e-5
    for atom, axis in [(0, 0), (2, 1), (3, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += step
        minus.positions[atom, axis] -= step
        e_plus = model(from_ase([plus]), "metals", forces=False)["energy"].item()
        e_minus = model(from_ase([minus]), "metals", forces=False)["energy"].item()
        assert -(e_plus - e_minus) / (2 * step) == pytest.approx(
            out["forces"][atom, axis].item(), abs=1e-7)


def test_training_on_routed_forces_reaches_every_used_head():
    model = _model().train()
    batch = _batch(_structures(), [1, 1, 1, 1, 0, 0, 0])
    out = model(batch)
    loss = out["energy"].pow(2).mean() + out["forces"].pow(2).mean()
    loss.backward()
    grads = [sum(p.grad.abs().sum().item() for p in head.parameters() if p.grad is not None)
             for head in model.heads]
    assert grads[0] > 0 and grads[1] > 0 and grads[2] == 0  # "dft" was not in the batch


def test_predict_one_and_several_heads():
    model = _model()
    structures = _structures()
    one = model.predict(structures, head="molecules")
    several = model.predict(structures, head=["metals", "molecules"])
    assert one["energy"].shape == (7,) and several["energy"].shape == (7, 2)
    assert np.allclose(one["energy"], several["energy"][:, 1], rtol=1e-12)
    assert np.allclose(one["forces"][5], several["forces"][5][1], rtol=1e-10, atol=1e-12)
    assert np.isnan(one["stress"][0]).all() and np.isfinite(one["stress"][5]).all()
    assert several["stress"].shape == (7, 2, 3, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        MultiHeadModel(PaiNN(n_features=8, n_interactions=1), [])
    with pytest.raises(ValueError, match="unique"):
        MultiHeadModel(PaiNN(n_features=8, n_interactions=1), ["a", "a"])
    model = _model()
    with pytest.raises(KeyError, match="no head 'pbe'"):
        model(from_ase([molecule("H2O")]), "pbe")
    with pytest.raises(ValueError, match="unknown element"):
        model.set_normalization("metals", {"reference_energies": {"Xx": 1.0}})
    batch = _batch(_structures()[:2], [0, 5])
    with pytest.raises(ValueError, match="heads/datasets"):
        model(batch)


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_gives_the_same_model(tmp_path):
    import pygfm
    from pygfm.models import load_checkpoint, save_checkpoint

    stats = {"metals": {"reference_energies": {"Cu": -3.5}, "energy_scale": 0.1}}
    model = _model(normalization=stats)
    path = save_checkpoint(model, tmp_path / "run" / "best.pt", elements=["Cu", "H"],
                           config={"lr": 1e-3}, extra={"step": 7})
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temporary left
    loaded = pygfm.load(path)
    assert loaded.head_names == HEADS and loaded.elements == ["Cu", "H"]
    assert loaded.checkpoint_config == {"lr": 1e-3} and not loaded.training
    assert next(loaded.parameters()).dtype == torch.float64
    structures = _structures()
    for head in HEADS:
        a, b = model.predict(structures, head), loaded.predict(structures, head)
        assert np.array_equal(a["energy"], b["energy"])
        assert all(np.array_equal(x, y) for x, y in zip(a["forces"], b["forces"]))
    assert load_checkpoint(path)["extra"] == {"step": 7}


def test_bad_checkpoints_are_named(tmp_path):
    import pygfm

    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        pygfm.load(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: not a readable checkpoint"):
        pygfm.load(tmp_path / "garbage.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a pygfm multi-head checkpoint"):
        pygfm.load(tmp_path / "other.pt")
    from pygfm.models import save_checkpoint
    path = save_checkpoint(_model(), tmp_path / "ok.pt")
    content = torch.load(path, weights_only=True)
    content["format_version"] = 99
    torch.save(content, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version 99"):
        pygfm.load(tmp_path / "future.pt")


def test_predict_on_structures_without_atoms():
    """A batch of empty structures has energy 0 and no forces (no autograd error)."""
    import ase

    from pygfm.models import MultiHeadModel
    from pygfm.nn import PaiNN

    torch.manual_seed(0)
    model = MultiHeadModel(PaiNN(n_features=8, n_interactions=1), ["a", "b"]).double()
    out = model.predict([ase.Atoms()], head="a")
    assert out["energy"].tolist() == [0.0] and out["forces"][0].shape == (0, 3)
    both = model.predict([ase.Atoms(), ase.Atoms("H")], head="all")
    assert both["energy"].shape == (2, 2) and (both["energy"][0] == 0).all()
    assert (both["energy"][1] != 0).all()


def test_deeper_heads_route_stack_and_round_trip(tmp_path):
    """head_layers=3: each head has three hidden layers; routed, all-heads (not
    stackable: the per-head path) and a checkpoint round trip agree."""
    import pygfm
    from pygfm.models import save_checkpoint

    model = _model(head_layers=3, head_hidden=6)
    assert all(len(head.layers) == 4 for head in model.heads)
    assert [layer.out_features for layer in model.heads[0].layers] == [6, 6, 6, 1]
    structures = _structures()
    datasets = [2, 0, 1, 2, 0, 1, 2]
    batch = _batch(structures, datasets)
    routed = model(batch, forces=False)["energy"]
    every = model(_batch(structures, datasets), "all", forces=False)["energy"]
    assert torch.allclose(routed, every[torch.arange(7), torch.as_tensor(datasets)], rtol=1e-12)
    loaded = pygfm.load(save_checkpoint(model, tmp_path / "deep.pt"))
    assert loaded.head_config["head_layers"] == 3
    assert np.array_equal(loaded.predict(structures, "dft")["energy"],
                          model.predict(structures, "dft")["energy"])
    with pytest.raises(ValueError, match="head_layers"):
        _model(head_layers=0)

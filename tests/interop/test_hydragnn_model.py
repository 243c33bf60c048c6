"""pygfm.interop.hydragnn without HydraGNN's outputs: the fused-kernel path equals
the plain-torch transcription of HydraGNN's equations, forces are the gradient of
the energy (finite differences), and configs pygfm cannot represent are refused
naming the key. The comparison with HydraGNN's own forward is in
test_hydragnn_reference.py (fixtures made by HydraGNN's code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from pygfm.interop.hydragnn import HydraGNNConfig, HydraGNNModel, load


def _model(conditioning=None, vector_bias=False, activation="silu", pooling="add", seed=0):
    torch.manual_seed(seed)
    config = HydraGNNConfig(
        hidden_dim=8, num_conv_layers=3, num_radial=5, radius=4.0, max_neighbours=None,
        activation=activation, pooling=pooling, conditioning=conditioning,
        branches=[("branch-0", [6, 6], [5, 4]), ("branch-1", [6], [3])], dtype=torch.float64)
    model = HydraGNNModel(config, vector_bias=vector_bias).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def _structures():
    # rattled: at a symmetric geometry (CH4's carbon) HydraGNN's |V| (no epsilon)
    # has a cone and its gradient depends on rounding
    out = [molecule("H2O"), molecule("CH4"), bulk("Cu", "fcc", a=3.6) * (2, 1, 1),
           bulk("NaCl", "rocksalt", a=5.0)]
    for k, atoms in enumerate(out):
        atoms.rattle(0.05, seed=k)
    out[0].info.update(charge=-1, spin=2)
    return out


@pytest.mark.parametrize("conditioning", [None, "concat_node", "film", "fuse_pool"])
@pytest.mark.parametrize("vector_bias", [False, True])
def test_fused_kernels_equal_the_plain_transcription(conditioning, vector_bias):
    model = _model(conditioning, vector_bias)
    fused = model.predict(_structures(), kernels=True)
    plain = model.predict(_structures(), kernels=False)
    np.testing.assert_allclose(fused["energy"], plain["energy"], rtol=1e-12, atol=1e-12)
    for a, b in zip(fused["forces"], plain["forces"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pooling, activation", [("add", "silu"), ("mean", "relu"),
                                                 ("max", "prelu")])
def test_forces_are_minus_the_energy_gradient(pooling, activation):
    model = _model("concat_node", pooling=pooling, activation=activation)
    atoms = _structures()[2]
    forces = model.predict([atoms], head="branch-1")["forces"][0]
    h, fd = 1e-5, np.zeros_like(forces)
    for a in range(len(atoms)):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, c] += h
            minus.positions[a, c] -= h
            e = [model.predict([x], head="branch-1", forces=False)["energy"][0]
                 for x in (plus, minus)]
            fd[a, c] = -(e[0] - e[1]) / (2 * h)
    np.testing.assert_allclose(forces, fd, rtol=1e-6, atol=1e-9)


def test_charge_and_spin_change_a_conditioned_model_only():
    atoms = _structures()[0]
    neutral = atoms.copy()
    neutral.info.update(charge=0, spin=1)
    for conditioning, differs in ((None, False), ("concat_node", True), ("film", True),
                                  ("fuse_pool", True)):
        model = _model(conditioning)
        a, b = (model.predict([x], forces=False)["energy"] for x in (atoms, neutral))
        assert (not np.allclose(a, b)) == differs, conditioning


def test_heads_and_blend_errors():
    model = _model()
    with pytest.raises(KeyError, match="no head 'branch-7'"):
        model.predict(_structures(), head="branch-7")
    with pytest.raises(ValueError, match="no branch-weighting MLP"):
        model.predict(_structures(), head="auto")
    both = model.predict(_structures(), forces=False)["energy"]
    one = model.predict(_structures(), head="branch-1", forces=False)["energy"]
    np.testing.assert_array_equal(both[:, 1], one)


def _write_config(folder, **arch):
    base = {"mpnn_type": "PAINN", "hidden_dim": 8, "num_conv_layers": 2, "num_radial": 4,
            "radius": 4.0, "max_neighbours": 20, "input_dim": 1,
            "output_heads": {"graph": [{"type": "branch-0", "architecture": {
                "num_sharedlayers": 1, "dim_sharedlayers": 4, "num_headlayers": 1,
                "dim_headlayers": [4]}}]}}
    base.update(arch)
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"NeuralNetwork": {
        "Architecture": base, "Variables_of_interest": {"input_node_features": [0]}}}))
    return folder


@pytest.mark.parametrize("arch, message", [
    ({"mpnn_type": "SchNet"}, "pygfm imports HydraGNN's PAINN models only"),
    ({"global_attn_engine": "GPS"}, "global_attn_engine 'GPS'"),
    ({"output_heads": {"node": {}}}, "node output heads are not supported"),
    ({"activation_function": "gelu"}, "activation_function 'gelu'"),
    ({"graph_pooling": "median"}, "graph_pooling 'median'"),
    ({"hidden_dim": None}, "Architecture.hidden_dim is missing"),
])
def test_configs_it_cannot_represent_are_named(tmp_path, arch, message):
    folder = _write_config(tmp_path / "run", **arch)
    torch.save({"model_state_dict": {}}, folder / "run.pk")
    with pytest.raises(ValueError, match=message):
        load(folder)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nowhere")
    folder = _write_config(tmp_path / "run")
    with pytest.raises(ValueError, match="no <name>.pk checkpoint"):
        load(folder)
    (folder / "run.pk").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load(folder)
    torch.save({"model_state_dict": {"module.model.graph_convs.0.module_9.x": torch.zeros(1)}},
               folder / "run.pk")
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        load(folder)

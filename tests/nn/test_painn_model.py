"""The PaiNN energy model (pygfm.nn.PaiNN + EnergyModel) end to end.

* forces and stress equal central finite differences of the energy (float64),
  for a molecule, periodic cubic and triclinic cells and a slab;
* symmetries: rotation/reflection (energy, forces, stress and the vector
  features v), translation, permutation, periodic images;
* a batch gives what its structures give one at a time;
* the fused kernels equal a plain-PyTorch PaiNN written here from the
  equations, including the weight gradients of a force loss (double backward);
* float32 and bfloat16 errors against float64 for the same weights;
* edge cases (no edges, isolated atoms, shared weights, sinc basis, chunking);
* a few Adam steps on a Morse-potential data set lower the loss;
* bad input is refused with a message that names it.
"""

from __future__ import annotations

import copy
import math

import ase
import ase.build
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import given, settings
from hypothesis import strategies as st

import pygfm.ops.painn
from pygfm import ops
from pygfm.data import AtomicBatch
from pygfm.nn import EnergyModel, PaiNN

CUTOFF = 4.0


# ----------------------------------------------------------------- helpers
def make_model(n_features=16, n_interactions=3, cutoff=CUTOFF, n_rbf=8, seed=0,
               dtype=torch.float64, aggregation="sum", **painn_kwargs) -> EnergyModel:
    """A small model whose every parameter (biases too, which start at zero) and
    offset is random, so that each one matters."""
    torch.manual_seed(seed)
    painn = PaiNN(n_features, n_interactions, cutoff=cutoff, n_rbf=n_rbf, **painn_kwargs)
    gen = torch.Generator().manual_seed(seed + 1000)
    atom_energies = 0.5 * torch.randn(painn.max_z, generator=gen, dtype=torch.float64)
    model = EnergyModel(painn, aggregation=aggregation, scale=1.3, shift=-0.2,
                        atom_energies=atom_energies)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.to(dtype)


def molecule():
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=0)
    return atoms


def bulk_cu():
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def triclinic():
    """A strongly skewed periodic cell (angles far from 90 degrees)."""
    cell = np.array([[3.3, 0.0, 0.0], [1.9, 3.1, 0.0], [-1.2, 1.4, 3.4]])
    scaled = np.array([[0.0, 0.0, 0.0], [0.5, 0.45, 0.4], [0.15, 0.7, 0.75]])
    atoms = ase.Atoms("AlCuO", scaled_positions=scaled, cell=cell, pbc=True)
    atoms.rattle(0.03, seed=2)
    return atoms


def slab():
    atoms = ase.build.fcc111("Cu", size=(2, 2, 2), vacuum=4.0)  # pbc = (T, T, F)
    atoms.rattle(0.05, seed=3)
    return atoms


STRUCTURES = {"molecule": molecule, "bulk": bulk_cu, "triclinic": triclinic, "slab": slab}
PERIODIC = ["bulk", "triclinic", "slab"]  # slab: periodic along a and b only


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| (a scale-aware error for whole arrays)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-300))


def fd_forces(model, atoms, h=1e-5):
    """-dE/dx by central differences, every atom and component in one batch."""
    displaced = []
    for i in range(len(atoms)):
        for c in range(3):
            for sign in (1.0, -1.0):
                moved = atoms.copy()
                moved.positions[i, c] += sign * h
                displaced.append(moved)
    energy = model.predict(displaced)["energy"].reshape(len(atoms), 3, 2)
    return -(energy[..., 0] - energy[..., 1]) / (2 * h)


def fd_stress(model, atoms, eps=1e-5):
    """(1/V) dE/d(strain) by central differences of symmetric strains (ASE's stress)."""
    strained = []
    for a in range(3):
        for b in range(3):
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[a, b] += sign * eps / 2
                strain[b, a] += sign * eps / 2
                moved = atoms.copy()
                moved.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                strained.append(moved)
    energy = model.predict(strained)["energy"].reshape(3, 3, 2)
    return (energy[..., 0] - energy[..., 1]) / (2 * eps) / atoms.get_volume()


def model_stress(model, atoms):
    """Stress from forward() (predict() reports NaN for slabs, forward() does not)."""
    batch = AtomicBatch.from_atoms([atoms], dtype=torch.float64)
    model.eval()
    return model(batch, forces=True, stress=True)["stress"][0].detach().numpy()


def random_rotation(seed: int, reflect: bool = False) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = (q * torch.sign(torch.diagonal(r))).numpy()
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    if reflect:
        q = q @ np.diag([1.0, 1.0, -1.0])
    return q


def transformed(atoms, rotation=None, translation=None):
    out = atoms.copy()
    if rotation is not None:
        out.positions = atoms.positions @ rotation.T
        out.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    if translation is not None:
        out.positions = out.positions + translation
    return out


def painn_inputs(atoms_list, cutoff, dtype=torch.float64):
    """(numbers, edge vectors, graph): what PaiNN.forward takes."""
    batch = AtomicBatch.from_atoms(atoms_list, dtype=dtype)
    pairs = ops.neighbor_list(batch.positions, cutoff, batch.cell, batch.pbc, batch.ptr)
    vectors, _ = ops.edge_vectors(batch.positions, pairs.edge_index, pairs.shifts,
                                  batch.cell, batch.ptr)
    return batch.numbers, vectors, ops.message_graph(pairs.edge_index, batch.num_atoms)


@pytest.fixture(scope="module")
def model64():
    return make_model()


# --------------------------------------------- 1. forces and stress vs finite differences
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_forces_match_finite_differences(model64, name):
    atoms = STRUCTURES[name]()
    forces = model64.predict([atoms])["forces"][0]
    expected = fd_forces(model64, atoms)
    assert np.abs(forces).max() > 1e-2, "forces too small to test anything"
    error = np.abs(forces - expected).max()
    assert error <= 1e-7 * max(1.0, np.abs(expected).max()), (name, error)


@pytest.mark.parametrize("name", PERIODIC)
def test_stress_matches_finite_differences(model64, name):
    atoms = STRUCTURES[name]()
    stress = model_stress(model64, atoms)
    expected = fd_stress(model64, atoms)
    assert np.abs(expected).max() > 1e-4, "stress too small to test anything"
    error = np.abs(stress - expected).max()
    assert error <= 1e-7 * max(1.0, np.abs(expected).max()), (name, error, stress, expected)
    if name != "slab":  # predict() reports the same stress for fully periodic cells
        np.testing.assert_allclose(model64.predict([atoms])["stress"][0], stress,
                                   rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stress, stress.T, rtol=0, atol=1e-12)


def test_stress_is_nan_for_non_periodic(model64):
    out = model64.predict([molecule(), slab(), bulk_cu()])
    assert np.isnan(out["stress"][0]).all() and np.isnan(out["stress"][1]).all()
    assert np.isfinite(out["stress"][2]).all()


# ---------------------------------------------------------------- 2. symmetries
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), reflect=st.booleans())
def test_rotation_equivariance(model64, seed, reflect):
    rotation = random_rotation(seed, reflect)
    for name in ("molecule", "triclinic"):
        atoms = STRUCTURES[name]()
        ref = model64.predict([atoms])
        out = model64.predict([transformed(atoms, rotation)])
        assert abs(out["energy"][0] - ref["energy"][0]) <= 1e-12 * abs(ref["energy"][0])
        assert rel_err(out["forces"][0], ref["forces"][0] @ rotation.T) < 1e-11
        if name == "triclinic":
            assert rel_err(out["stress"][0], rotation @ ref["stress"][0] @ rotation.T) < 1e-10


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), reflect=st.booleans())
def test_vector_features_rotate(model64, seed, reflect):
    rotation = torch.as_tensor(random_rotation(seed, reflect))
    painn = model64.representation
    numbers, vectors, graph = painn_inputs([molecule(), bulk_cu()], painn.cutoff)
    s, v = painn(numbers, vectors, graph)
    s_rot, v_rot = painn(numbers, vectors @ rotation.T, graph)
    assert v.abs().max() > 1e-2, "vector features too small to test anything"
    assert (s_rot - s).abs().max() <= 1e-12 * s.abs().max()
    expected = torch.einsum("ab,nbf->naf", rotation, v)
    assert (v_rot - expected).abs().max() <= 1e-12 * v.abs().max()


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_translation_invariance(model64, name):
    atoms = STRUCTURES[name]()
    ref = model64.predict([atoms])
    out = model64.predict([transformed(atoms, translation=np.array([3.7, -11.2, 0.9]))])
    assert abs(out["energy"][0] - ref["energy"][0]) <= 1e-12 * abs(ref["energy"][0])
    assert rel_err(out["forces"][0], ref["forces"][0]) < 1e-11


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_permutation(model64, name):
    atoms = STRUCTURES[name]()
    perm = np.random.default_rng(5).permutation(len(atoms))
    ref = model64.predict([atoms])
    out = model64.predict([atoms[perm]])
    assert abs(out["energy"][0] - ref["energy"][0]) <= 1e-12 * abs(ref["energy"][0])
    assert rel_err(out["forces"][0], ref["forces"][0][perm]) < 1e-11
    np.testing.assert_allclose(out["stress"][0], ref["stress"][0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", PERIODIC)
def test_periodic_images(model64, name):
    """Moving atoms by lattice vectors (or wrapping them) changes nothing."""
    atoms = STRUCTURES[name]()
    ref = model64.predict([atoms])
    cell = atoms.cell.array
    moved = atoms.copy()
    moved.positions[0] += cell[0] - 2 * cell[1]
    moved.positions[-1] -= 3 * cell[0]
    if name != "slab":
        moved.positions[1] += 2 * cell[2]
    wrapped = atoms.copy()
    wrapped.positions += 0.6 * cell[0] + 0.3 * cell[1]
    shifted = wrapped.copy()
    wrapped.wrap()
    assert not np.allclose(wrapped.positions, shifted.positions)
    shifted_ref = model64.predict([shifted])
    out = model64.predict([moved, wrapped])
    assert abs(out["energy"][0] - ref["energy"][0]) <= 1e-12 * abs(ref["energy"][0])
    assert rel_err(out["forces"][0], ref["forces"][0]) < 1e-11
    assert abs(out["energy"][1] - shifted_ref["energy"][0]) <= 1e-12 * abs(ref["energy"][0])
    assert rel_err(out["forces"][1], shifted_ref["forces"][0]) < 1e-11
    if name != "slab":
        np.testing.assert_allclose(out["stress"][0], ref["stress"][0], rtol=1e-10, atol=1e-13)


# ------------------------------------------------------- 3. batch = concatenation
def assert_batch_matches_singles(model, structures):
    """predict() on the batch equals predict() on each structure alone; returns the batch's."""
    batched = model.predict(structures)
    for index, atoms in enumerate(structures):
        single = model.predict([atoms])
        assert abs(batched["energy"][index] - single["energy"][0]) <= \
            1e-12 * abs(single["energy"][0])
        np.testing.assert_allclose(batched["forces"][index], single["forces"][0],
                                   rtol=0, atol=1e-12 * max(1, np.abs(single["forces"][0]).max()))
    return batched


def test_batch_equals_single_structures(model64):
    structures = [molecule(), bulk_cu(), ase.Atoms("H"), triclinic(), slab(),
                  ase.build.molecule("H2O")]
    batched = assert_batch_matches_singles(model64, structures)
    for index, atoms in enumerate(structures):
        single = model64.predict([atoms])
        np.testing.assert_allclose(batched["stress"][index], single["stress"][0],
                                   rtol=1e-11, atol=1e-14)


# --------------------------------------- 4. fused model == plain-PyTorch PaiNN from the paper
_ACTIVATIONS = {"silu": F.silu, "tanh": torch.tanh,
                "shifted_softplus": lambda x: F.softplus(x) - math.log(2.0)}


def _apply_mlp(mlp, x):
    act = _ACTIVATIONS[mlp.activation_name]
    for index, layer in enumerate(mlp.layers):
        x = F.linear(x, layer.weight, layer.bias)
        if index < len(mlp.layers) - 1:
            x = act(x)
    return x


def reference_energy_forces(model: EnergyModel, atoms_list, create_graph: bool):
    """PaiNN (Schütt et al. 2021, schnetpack's form) in plain torch, with ASE's
    neighbor list, using ``model``'s weights. Returns (energy [B], forces [N, 3])."""
    rep = model.representation
    Fn, cutoff = rep.n_features, rep.cutoff
    receivers, senders, offsets, numbers, positions, structure = [], [], [], [], [], []
    start = 0
    for b, atoms in enumerate(atoms_list):
        i, j, shift = ase_neighbor_list("ijS", atoms, cutoff)
        receivers.append(i + start)
        senders.append(j + start)
        offsets.append(shift @ atoms.cell.array)
        numbers.append(atoms.numbers)
        positions.append(atoms.positions)
        structure.append(np.full(len(atoms), b))
        start += len(atoms)
    i = torch.as_tensor(np.concatenate(receivers), dtype=torch.long)
    j = torch.as_tensor(np.concatenate(senders), dtype=torch.long)
    offset = torch.as_tensor(np.concatenate(offsets), dtype=torch.float64)
    z = torch.as_tensor(np.concatenate(numbers), dtype=torch.long)
    structure = torch.as_tensor(np.concatenate(structure), dtype=torch.long)
    pos = torch.as_tensor(np.concatenate(positions), dtype=torch.float64).requires_grad_(True)
    N, B = pos.shape[0], len(atoms_list)

    r = pos[j] - pos[i] + offset
    d = r.norm(dim=1)
    unit = r / d[:, None]
    basis = rep.radial_basis
    if hasattr(basis, "freqs"):  # sinc / Bessel: sin(k pi d / rc) / d
        rbf = torch.sin(d[:, None] * basis.freqs) / d[:, None]
    else:  # Gaussians on the module's centres (float32-built, as schnetpack's)
        rbf = torch.exp(-0.5 * (d[:, None] - basis.offsets) ** 2 / basis.widths ** 2)
    fcut = 0.5 * (torch.cos(math.pi * d / cutoff) + 1.0) * (d < cutoff)

    s = rep.embedding.weight[z]
    v = torch.zeros(N, 3, Fn, dtype=s.dtype)
    for t in range(rep.n_interactions):
        layer = rep.layers[0 if rep.shared_interactions else t]
        k = 0 if rep.shared_filters else t
        rows = slice(3 * Fn * k, 3 * Fn * (k + 1))
        W = (rbf @ rep.filter_net.weight[rows].T + rep.filter_net.bias[rows]) * fcut[:, None]
        x = _apply_mlp(layer.context, s)[j] * W
        x_s, x_r, x_m = x.split(Fn, dim=-1)
        dv = x_r[:, None, :] * unit[:, :, None] + x_m[:, None, :] * v[j]
        s = s + torch.zeros(N, Fn, dtype=s.dtype).index_add(0, i, x_s)
        v = v + torch.zeros(N, 3, Fn, dtype=s.dtype).index_add(0, i, dv)
        mix = v @ layer.channel_mix.weight.T
        V, Wv = mix[..., :Fn], mix[..., Fn:]
        norm = torch.sqrt((V ** 2).sum(1) + layer.epsilon)
        a = _apply_mlp(layer.update_net, torch.cat([s, norm], dim=-1))
        a_ss, a_vv, a_sv = a.split(Fn, dim=-1)
        s = s + a_ss + a_sv * (V * Wv).sum(1)
        v = v + a_vv[:, None, :] * Wv

    atomic = _apply_mlp(model.head, s).squeeze(-1) * model.scale
    counts = torch.bincount(structure, minlength=B).to(torch.float64)
    energy = torch.zeros(B, dtype=torch.float64).index_add(0, structure, atomic)
    offsets = torch.zeros(B, dtype=torch.float64).index_add(
        0, structure, model.shift + model.atom_energies[z])
    if model.aggregation == "mean":
        energy = energy / counts
    energy = energy + (offsets if model.extensive_offsets else offsets / counts)
    forces = -torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)[0]
    return energy, forces


def force_loss_and_grads(model, energy, forces, target_e, target_f):
    loss = ((forces - target_f) ** 2).sum() + 0.1 * ((energy - target_e) ** 2).sum()
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


VARIANTS = {
    "default": {},
    "shared_filters": dict(shared_filters=True),
    "shared_interactions": dict(shared_interactions=True),
    "shared_both": dict(shared_filters=True, shared_interactions=True),
    "sinc_tanh_mean": dict(radial_basis="sinc", activation="tanh", aggregation="mean"),
    "softplus_one_layer": dict(activation="shifted_softplus", n_interactions=1),
}


def equivalence_structures():
    far = ase.Atoms("HC", positions=[[0, 0, 0], [0, 0, 9.0]])  # no edges
    return [molecule(), bulk_cu(), slab(), ase.Atoms("O"), far, triclinic()]


def _fused(model, structures):
    batch = AtomicBatch.from_atoms(structures, dtype=torch.float64)
    model.train()  # keeps the graph: force losses are differentiable in the weights
    out = model(batch, forces=True)
    return out["energy"], out["forces"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_equals_plain_torch_painn(variant):
    kwargs = dict(VARIANTS[variant])
    model = make_model(n_features=8, n_rbf=6, seed=7, **kwargs)
    structures = equivalence_structures()
    energy, forces = _fused(model, structures)
    ref_e, ref_f = reference_energy_forces(model, structures, create_graph=True)
    assert (energy - ref_e).abs().max() <= 1e-12 * ref_e.abs().max()
    assert (forces - ref_f).abs().max() <= 1e-12 * ref_f.abs().max()

    gen = torch.Generator().manual_seed(3)
    target_f = torch.randn(forces.shape, generator=gen, dtype=torch.float64)
    target_e = torch.randn(energy.shape, generator=gen, dtype=torch.float64)
    loss, grads = force_loss_and_grads(model, energy, forces, target_e, target_f)
    ref_loss, ref_grads = force_loss_and_grads(model, ref_e, ref_f, target_e, target_f)
    assert abs(float(loss.detach() - ref_loss.detach())) <= 1e-12 * abs(float(ref_loss.detach()))
    scale = max(float(g.abs().max()) for g in ref_grads)
    for (name, _), g, ref in zip(model.named_parameters(), grads, ref_grads):
        if name == "representation.embedding.weight":
            assert ref.abs().sum() > 0
        error = float((g - ref).abs().max())
        assert error <= 1e-12 * max(float(ref.abs().max()), 1e-3 * scale), (name, error)


def test_kernels_equal_reference_ops_in_autograd(monkeypatch):
    """Force-training gradients through the fused kernels (with their own
    backward-of-backward) equal those through pygfm.ops.reference with torch's
    autograd (the kernels switched off)."""
    model = make_model(n_features=8, n_rbf=6, seed=11)
    structures = equivalence_structures()
    gen = torch.Generator().manual_seed(4)
    energy, forces = _fused(model, structures)
    target_f = torch.randn(forces.shape, generator=gen, dtype=torch.float64)
    target_e = torch.randn(energy.shape, generator=gen, dtype=torch.float64)
    _, grads = force_loss_and_grads(model, energy, forces, target_e, target_f)

    monkeypatch.setattr(pygfm.ops.painn, "_has_kernel", lambda device: False)
    ref_e, ref_f = _fused(model, structures)
    _, ref_grads = force_loss_and_grads(model, ref_e, ref_f, target_e, target_f)
    assert (energy - ref_e).abs().max() <= 1e-12 * ref_e.abs().max()
    assert (forces - ref_f).abs().max() <= 1e-12 * ref_f.abs().max()
    for (name, _), g, ref in zip(model.named_parameters(), grads, ref_grads):
        assert float((g - ref).abs().max()) <= 1e-12 * max(float(ref.abs().max()), 1e-12), name


# ------------------------------------------------------- 5. float32 / bfloat16 vs float64
def _errors_vs_float64(model64, dtype, structures):
    batch = AtomicBatch.from_atoms(structures, dtype=torch.float64)
    ref = model64.eval()(batch, forces=True, stress=True)
    low = copy.deepcopy(model64).to(dtype).eval()
    out = low(batch.to(dtype=torch.float32), forces=True, stress=True)
    periodic = batch.pbc.all(dim=1)
    e = rel_err(out["energy"].detach().double().numpy(), ref["energy"].detach().numpy())
    f = rel_err(out["forces"].detach().double().numpy(), ref["forces"].detach().numpy())
    s = rel_err(out["stress"][periodic].detach().double().numpy(),
                ref["stress"][periodic].detach().numpy())
    return e, f, s


@pytest.mark.parametrize("dtype, bounds", [
    # Errors are max |error| / max |float64 value| over the batch (energies of
    # single structures can be near 0). Measured (F=16, 3 layers, 2 seeds):
    # fp32 ~3e-7 energy, ~1e-6 forces, ~5e-6 stress; bf16 ~8e-3 energy,
    # ~2e-2 forces, ~2e-2 stress (bf16 also rounds scale, shift and atom energies).
    (torch.float32, dict(energy=1e-5, forces=1e-5, stress=1e-4)),
    (torch.bfloat16, dict(energy=4e-2, forces=8e-2, stress=1e-1)),
], ids=["float32", "bfloat16"])
def test_low_precision_error_vs_float64(dtype, bounds):
    structures = [molecule(), bulk_cu(), triclinic(), ase.build.molecule("C6H6")]
    worst = dict(energy=0.0, forces=0.0, stress=0.0)
    for seed in (0, 1):
        e, f, s = _errors_vs_float64(make_model(seed=seed), dtype, structures)
        worst = dict(energy=max(worst["energy"], e), forces=max(worst["forces"], f),
                     stress=max(worst["stress"], s))
    print(f"{dtype}: relative errors vs float64: {worst}")
    for key, bound in bounds.items():
        assert worst[key] < bound, (dtype, key, worst[key])


def test_predict_with_bfloat16_model():
    model = make_model(n_features=8, n_interactions=1)
    with torch.no_grad():
        model.atom_energies[8] = -2041.123456
    expected = model.double().predict([ase.build.molecule("H2O")])["energy"]
    model = model.to(torch.bfloat16)
    # the offsets are not rounded to BF16 (-2041.12 would become -2048 there)
    assert model.atom_energies.dtype == torch.float64
    out = model.predict([ase.build.molecule("H2O")])
    assert np.isfinite(out["energy"]).all()
    assert abs(out["energy"][0] - expected[0]) < 0.05 * abs(expected[0] + 2041.123456) + 0.05


def test_predict_nothing():
    out = make_model(n_features=8, n_interactions=1).predict([])
    assert out["energy"].shape == (0,) and out["forces"] == [] and out["stress"].shape == (0, 3, 3)


# ---------------------------------------------------------------- 6. edge cases
def test_single_atom(model64):
    out = model64.predict([ase.Atoms("O")])
    ref_e, _ = reference_energy_forces(model64, [ase.Atoms("O")], create_graph=False)
    ref_e = ref_e.detach()
    assert np.isfinite(out["energy"]).all()
    assert abs(out["energy"][0] - float(ref_e[0])) <= 1e-12 * abs(float(ref_e[0]))
    assert out["forces"][0].shape == (1, 3) and (out["forces"][0] == 0).all()
    assert np.isnan(out["stress"][0]).all()


def test_no_edges_anywhere(model64):
    """A batch without a single edge (every atom beyond the cutoff of every other)."""
    structures = [ase.Atoms("H"), ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 8.0]])]
    out = model64.predict(structures)
    assert np.isfinite(out["energy"]).all()
    assert all((f == 0).all() for f in out["forces"])
    # no edges: the energy is a sum of identical one-atom energies
    one = {z: model64.predict([ase.Atoms(numbers=[z])])["energy"][0] for z in (1, 6, 8)}
    np.testing.assert_allclose(out["energy"], [one[1], one[6] + one[8]], rtol=1e-13)


def test_isolated_atom_in_molecule(model64):
    mol = molecule()
    far = mol + ase.Atoms("N", positions=[[0.0, 0.0, 40.0]])
    out = model64.predict([far])
    mol_out = model64.predict([mol])
    atom = model64.predict([ase.Atoms("N")])
    expected = mol_out["energy"][0] + atom["energy"][0]
    assert abs(out["energy"][0] - expected) <= 1e-12 * abs(expected)
    assert (out["forces"][0][-1] == 0).all()
    np.testing.assert_allclose(out["forces"][0][:-1], mol_out["forces"][0], rtol=0, atol=1e-12)


def test_structure_without_edges_in_a_batch(model64):
    lonely = ase.Atoms("HH", positions=[[0, 0, 0], [7.0, 0, 0]])
    structures = [molecule(), lonely, bulk_cu(), ase.Atoms("O")]
    batched = assert_batch_matches_singles(model64, structures)
    assert (batched["forces"][1] == 0).all() and (batched["forces"][3] == 0).all()


@pytest.mark.parametrize("variant", ["shared_filters", "shared_interactions", "shared_both",
                                     "sinc_tanh_mean"])
def test_variants_forces_match_finite_differences(variant):
    kwargs = dict(VARIANTS[variant])
    model = make_model(n_features=8, n_rbf=6, seed=5, **kwargs)
    for atoms in (molecule(), triclinic()):
        forces = model.predict([atoms])["forces"][0]
        error = np.abs(forces - fd_forces(model, atoms)).max()
        assert error <= 1e-7 * max(1.0, np.abs(forces).max()), (variant, error)


def test_shared_weights_have_fewer_parameters():
    def count(**kw):
        return sum(p.numel() for p in PaiNN(8, 3, n_rbf=6, **kw).parameters())
    full = count()
    assert count(shared_filters=True) < full
    assert count(shared_interactions=True) < full
    assert count(shared_filters=True, shared_interactions=True) < \
        min(count(shared_filters=True), count(shared_interactions=True))


def test_predict_chunks_smaller_than_a_structure(model64):
    structures = [molecule(), ase.Atoms("O"), bulk_cu(), slab(), ase.build.molecule("H2O")]
    whole = model64.predict(structures)
    for max_atoms in (1, 3, 10):
        chunked = model64.predict(structures, max_atoms=max_atoms)
        np.testing.assert_allclose(chunked["energy"], whole["energy"], rtol=1e-12)
        for got, ref in zip(chunked["forces"], whole["forces"]):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(chunked["stress"], whole["stress"], rtol=1e-11, atol=1e-14)


def test_empty_structure_in_a_batch(model64):
    out = model64.predict([ase.Atoms(), molecule()])
    assert out["energy"][0] == 0.0 and out["forces"][0].shape == (0, 3)
    ref = model64.predict([molecule()])
    assert abs(out["energy"][1] - ref["energy"][0]) <= 1e-12 * abs(ref["energy"][0])


def test_predict_restores_training_mode(model64):
    model64.train()
    model64.predict([ase.build.molecule("H2O")])
    assert model64.training
    model64.eval()


# ---------------------------------------------------------------- 7. training
def morse(atoms, D=0.3, a=1.4, r0=2.6):
    """Energy and forces of a Morse pair potential (every pair, no cutoff)."""
    pos = torch.as_tensor(atoms.positions, dtype=torch.float64).requires_grad_(True)
    i, j = torch.triu_indices(len(atoms), len(atoms), offset=1)
    r = (pos[i] - pos[j]).norm(dim=1)
    energy = (D * ((1 - torch.exp(-a * (r - r0))) ** 2 - 1)).sum()
    forces = -torch.autograd.grad(energy, pos)[0]
    return float(energy.detach()), forces.numpy()


def morse_dataset(count=6, seed=0):
    rng = np.random.default_rng(seed)
    structures = []
    while len(structures) < count:
        n = int(rng.integers(3, 6))
        pos = rng.uniform(0, 4.0, size=(n, 3))
        dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
        if dist.min() > 2.0:
            structures.append(ase.Atoms(numbers=[18] * n, positions=pos))
    return structures


def test_adam_steps_reduce_energy_force_loss():
    structures = morse_dataset()
    targets = [morse(a) for a in structures]
    target_e = torch.tensor([e for e, _ in targets], dtype=torch.float64)
    target_f = torch.as_tensor(np.concatenate([f for _, f in targets]), dtype=torch.float64)
    batch = AtomicBatch.from_atoms(structures, dtype=torch.float64)
    counts = (batch.ptr[1:] - batch.ptr[:-1]).to(torch.float64)
    model = make_model(n_features=16, n_interactions=2, seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        out = model(batch, forces=True)
        loss = (((out["energy"] - target_e) / counts) ** 2).mean() + \
            ((out["forces"] - target_f) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    print("losses", losses[0], losses[-1])
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.3 * losses[0], losses
    # the force part of the loss reaches every weight of the trunk
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for name, p in model.named_parameters() if "embedding" not in name)


# ---------------------------------------------------------------- 8. bad input
def test_atomic_number_out_of_range():
    model = EnergyModel(PaiNN(8, 1, n_rbf=4, max_z=10)).double()
    with pytest.raises(ValueError, match=r"atomic numbers.*10.*29"):
        model.predict([ase.build.molecule("H2O"), ase.Atoms("Cu")])
    numbers, vectors, graph = painn_inputs([ase.build.molecule("H2O")], CUTOFF)
    with pytest.raises(ValueError, match="-1"):
        model.representation(torch.tensor([8, -1, 1]), vectors, graph)


def test_nan_positions_name_the_structure(model64):
    bad = ase.build.molecule("H2O")
    bad.positions[1, 2] = np.nan
    with pytest.raises(ValueError, match="structure 2"):
        AtomicBatch.from_atoms([molecule(), bulk_cu(), bad])
    with pytest.raises(ValueError, match="structure 1"):
        model64.predict([molecule(), bad])
    bad_cell = bulk_cu()
    bad_cell.cell[0, 0] = np.inf
    with pytest.raises(ValueError, match="structure 1.*cell"):
        AtomicBatch.from_atoms([molecule(), bad_cell])


def test_empty_list():
    with pytest.raises(ValueError, match="no structures"):
        AtomicBatch.from_atoms([])


def test_not_atoms():
    with pytest.raises(TypeError, match="structure 1"):
        AtomicBatch.from_atoms([molecule(), np.zeros((3, 3))])

"""pygfm.interop.schnetpack.convert: a converted schnetpack PaiNN model gives
schnetpack's energies, forces and stress (1e-10 relative in float64, 1e-5 in
float32), and models it cannot represent are refused with a clear ValueError.

schnetpack is run with its own input pipeline (AtomsConverter + ASE neighbor
list), so the comparison shares no code with pygfm besides the weights.
"""

from __future__ import annotations

import ase
import ase.build
import ase.collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import _schnetpack_shim  # noqa: F401  (before schnetpack: see the module's docstring)

spk = pytest.importorskip("schnetpack")

from pygfm.interop.schnetpack import convert  # noqa: E402
from pygfm.nn import EnergyModel  # noqa: E402

CUTOFF = 5.0
G2 = ase.collections.g2

# ASE (Atoms/Cell built by schnetpack's AtomsConverter) under numpy 2: noise only.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


# ----------------------------------------------------------------- helpers
def build_model(n_atom_basis=16, shared_filters=False, shared_interactions=False,
                basis="gaussian", aggregation="sum", extensive=True, activation=F.silu,
                head_layers=2, stress=False, offsets=True, seed=0,
                dtype=torch.float64):
    """A schnetpack NeuralNetworkPotential (PaiNN, Atomwise, Forces, AddOffsets)
    with every parameter perturbed, so that biases (zero at init) matter."""
    torch.manual_seed(seed)
    rbf = {"gaussian": lambda: spk.nn.GaussianRBF(20, CUTOFF),
           "bessel": lambda: spk.nn.BesselRBF(20, CUTOFF),
           "centered": lambda: spk.nn.GaussianRBFCentered(20, CUTOFF)}[basis]()
    representation = spk.representation.PaiNN(
        n_atom_basis=n_atom_basis, n_interactions=3, radial_basis=rbf,
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF), activation=activation,
        shared_filters=shared_filters, shared_interactions=shared_interactions)
    head = spk.atomistic.Atomwise(n_in=n_atom_basis, n_layers=head_layers,
                                  activation=activation, aggregation_mode=aggregation,
                                  output_key="energy")
    forces = spk.atomistic.Forces(energy_key="energy", force_key="forces",
                                  calc_stress=stress, stress_key="stress")
    postprocessors = [spk.transform.CastTo64()]
    if offsets:
        add = spk.transform.AddOffsets("energy", add_mean=True, add_atomrefs=True,
                                       is_extensive=extensive,
                                       property_mean=torch.tensor([-3.21]))
        # AddOffsets(atomrefs=tensor) fails in schnetpack 2.1.1 (`atomrefs or ...`
        # on a tensor), so the references are set after construction.
        gen = torch.Generator().manual_seed(seed + 17)
        add.atomref = torch.randn(100, generator=gen)
        postprocessors.append(add)
    inputs = ([spk.atomistic.Strain()] if stress else []) + \
        [spk.atomistic.PairwiseDistances()]
    model = spk.model.NeuralNetworkPotential(
        representation=representation, input_modules=inputs,
        output_modules=[head, forces], postprocessors=postprocessors)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.to(dtype).eval()


def run_schnetpack(model, atoms_list, dtype):
    converter = spk.interfaces.AtomsConverter(
        neighbor_list=spk.transform.ASENeighborList(cutoff=CUTOFF), dtype=dtype)
    out = model(converter(atoms_list))
    result = {key: out[key].detach().to(torch.float64).numpy()
              for key in ("energy", "forces", "stress") if key in out}
    return result


def molecules(names, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        atoms = G2[name]
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        out.append(atoms)
    return out


def bulks():
    cu = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.05, seed=1)
    al = ase.build.bulk("Al", "fcc", a=4.05).repeat((2, 2, 1))
    al.rattle(0.05, seed=2)
    alloy = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True)
    alloy.numbers[[1, 3]] = 13
    alloy.set_cell(alloy.cell.array @ np.array([[1, 0, 0], [0.2, 1, 0], [0, -0.15, 1]]),
                   scale_atoms=True)  # sheared, triclinic
    alloy.rattle(0.05, seed=3)
    return [cu, al, alloy]


SOME_MOLECULES = ["CH3CH2OH", "C6H6", "H2O", "NH3", "CO2", "SiH4", "CH3COCl", "Li",
                  "H2", "CF3CN"]

# (schnetpack-model keyword arguments, structures: "all" g2 or "some")
VARIANTS = {
    "separate_F32": (dict(n_atom_basis=32), "all"),
    "shared_filters": (dict(shared_filters=True), "some"),
    "shared_interactions": (dict(shared_interactions=True), "some"),
    "shared_both_bessel": (dict(shared_filters=True, shared_interactions=True,
                                basis="bessel"), "some"),
    "avg_intensive": (dict(aggregation="avg", extensive=False), "some"),
    "centered_softplus_3layer_head": (dict(basis="centered",
                                           activation=spk.nn.shifted_softplus,
                                           head_layers=3, n_atom_basis=24), "some"),
}


def structures_for(which):
    names = G2.names if which == "all" else SOME_MOLECULES
    return molecules(names) + bulks()


def compare(ours, ref, tol, stress=False, extensive=True):
    """Largest relative errors of energies (per structure), forces and stress
    (over the batch). An energy's error is relative to max(|E|, 1 eV per atom)
    (1 eV for an intensive, averaged energy): a sum of atomic terms that nearly
    cancel (a total of ~0 eV) is only known to the precision of its terms."""
    e, e_ref = ours["energy"], ref["energy"]
    floor = np.array([len(f) if extensive else 1 for f in ours["forces"]], dtype=float)
    energy_error = np.abs(e - e_ref) / np.maximum(np.abs(e_ref), floor)
    f, f_ref = np.concatenate(ours["forces"]), ref["forces"]
    assert f.shape == f_ref.shape
    force_error = np.abs(f - f_ref).max() / np.abs(f_ref).max()
    assert energy_error.max() <= tol, (energy_error.max(), int(energy_error.argmax()))
    assert force_error <= tol, force_error
    if stress:
        s_ref = ref["stress"]
        periodic = np.isfinite(ours["stress"]).all(axis=(1, 2))
        stress_error = np.abs(ours["stress"][periodic] - s_ref[periodic]).max() / \
            np.abs(s_ref[periodic]).max()
        assert stress_error <= tol, stress_error
    return energy_error.max(), force_error


# ----------------------------------------------------------------- equivalence
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)],
                         ids=["float64", "float32"])
def test_converted_model_equals_schnetpack(variant, dtype, tol):
    kwargs, which = VARIANTS[variant]
    model = build_model(dtype=dtype, **kwargs)
    ours = convert(model)
    assert isinstance(ours, EnergyModel)
    assert next(ours.parameters()).dtype == dtype
    structures = structures_for(which)
    ref = run_schnetpack(model, structures, dtype)
    errors = compare(ours.predict(structures), ref, tol,
                     extensive=kwargs.get("aggregation", "sum") == "sum")
    print(f"{variant} {dtype}: energy {errors[0]:.2e}, forces {errors[1]:.2e}")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)],
                         ids=["float64", "float32"])
def test_stress_equals_schnetpack(dtype, tol):
    model = build_model(stress=True, dtype=dtype, seed=3)
    ours = convert(model)
    structures = bulks() + molecules(["H2O"])
    ref = run_schnetpack(model, structures, dtype)
    compare(ours.predict(structures), ref, tol, stress=True)


def test_bare_representation_and_head():
    """convert(PaiNN, head=Atomwise) and a model without postprocessing: no offsets."""
    model = build_model(seed=5)
    structures = molecules(["CH3CH2OH", "H2O"]) + bulks()[:1]
    model.do_postprocessing = False
    ref = run_schnetpack(model, structures, torch.float64)
    compare(convert(model).predict(structures), ref, 1e-10)
    head = [m for m in model.output_modules if type(m).__name__ == "Atomwise"][0]
    bare = convert(model.representation, head=head)
    compare(bare.predict(structures), ref, 1e-10)


def test_offsets_are_kept_exactly():
    model = build_model(seed=6)
    ours = convert(model)
    add = model.postprocessors[-1]
    assert float(ours.shift) == pytest.approx(-3.21, rel=1e-7)
    np.testing.assert_array_equal(ours.atom_energies.numpy(),
                                  add.atomref.to(torch.float64).numpy())


def test_converted_model_trains_like_ours():
    """The converted model is an ordinary pygfm model: forces have weight gradients."""
    model = build_model(seed=8)
    ours = convert(model)
    from pygfm.data import AtomicBatch
    batch = AtomicBatch.from_atoms(molecules(["H2O", "NH3"]))
    ours.train()
    loss = (ours(batch, forces=True)["forces"] ** 2).sum()
    loss.backward()
    assert ours.representation.filter_net.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------- refusals
def _nnp(representation, head):
    return spk.model.NeuralNetworkPotential(
        representation=representation, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[head])


def _painn(**kw):
    kw.setdefault("cutoff_fn", spk.nn.CosineCutoff(CUTOFF))
    return spk.representation.PaiNN(n_atom_basis=8, n_interactions=2,
                                    radial_basis=spk.nn.GaussianRBF(10, CUTOFF), **kw)


def test_refuses_multi_output_head():
    head = spk.atomistic.Atomwise(n_in=8, n_out=2, output_key="energy")
    with pytest.raises(ValueError, match="2 outputs"):
        convert(_nnp(_painn(), head))


def test_refuses_schnet():
    schnet = spk.representation.SchNet(n_atom_basis=8, n_interactions=2,
                                       radial_basis=spk.nn.GaussianRBF(10, CUTOFF),
                                       cutoff_fn=spk.nn.CosineCutoff(CUTOFF))
    head = spk.atomistic.Atomwise(n_in=8, output_key="energy")
    with pytest.raises(ValueError, match="SchNet"):
        convert(_nnp(schnet, head))


def test_refuses_other_cutoff():
    head = spk.atomistic.Atomwise(n_in=8, output_key="energy")
    painn = _painn(cutoff_fn=spk.nn.MollifierCutoff(CUTOFF))
    with pytest.raises(ValueError, match="MollifierCutoff"):
        convert(_nnp(painn, head))


def test_refuses_other_nuclear_embedding():
    head = spk.atomistic.Atomwise(n_in=8, output_key="energy")
    painn = _painn(nuclear_embedding=spk.nn.embedding.NuclearEmbedding(100, 8))
    with pytest.raises(ValueError, match="NuclearEmbedding"):
        convert(_nnp(painn, head))


def test_refuses_unknown_postprocessor():
    """A postprocessor that changes the energy must not be silently dropped."""
    head = spk.atomistic.Atomwise(n_in=8, output_key="energy")
    scale = spk.transform.ScaleProperty("energy", scale=torch.tensor([2.0]))
    model = spk.model.NeuralNetworkPotential(
        representation=_painn(), input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[head], postprocessors=[scale])
    with pytest.raises(ValueError, match="ScaleProperty"):
        convert(model)


def test_refuses_bare_painn_without_head():
    with pytest.raises(ValueError, match="head"):
        convert(_painn())


def test_refuses_model_without_atomwise():
    dipole = spk.atomistic.DipoleMoment(n_in=8)
    with pytest.raises(ValueError, match="Atomwise"):
        convert(_nnp(_painn(), dipole))

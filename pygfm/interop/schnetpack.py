"""Convert schnetpack PaiNN energy models into pygfm :class:`~pygfm.nn.EnergyModel`.

Supported: ``schnetpack.model.NeuralNetworkPotential`` (or a bare ``PaiNN``
representation plus an ``Atomwise`` head) with

* representation ``PaiNN`` with shared or separate filters and interactions,
  an ``nn.Embedding`` nuclear embedding and no electronic embeddings;
* radial basis ``GaussianRBF`` (also ``GaussianRBFCentered``) or ``BesselRBF``
  (pygfm's ``SincRBF``), cutoff ``CosineCutoff``;
* head ``Atomwise`` with one output, ``sum`` or ``avg`` aggregation;
* postprocessors ``CastTo64``/``CastTo32`` (no effect here) and ``AddOffsets``
  on the energy (mean and/or atom references).

The converted model reproduces schnetpack's energies and forces to rounding
(tests: 1e-10 relative in float64). schnetpack itself is not imported here:
modules are recognised by class name, so converting needs only the object.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MLP, EnergyModel, PaiNN
from ..nn.mlp import shifted_softplus

__all__ = ["convert"]


def _name(module) -> str:
    return type(module).__name__


def _activation_name(activation) -> str:
    if activation is None or isinstance(activation, nn.Identity):
        return "identity"
    if activation is F.silu or isinstance(activation, nn.SiLU):
        return "silu"
    if activation is torch.tanh or isinstance(activation, nn.Tanh):
        return "tanh"
    if getattr(activation, "__name__", "") == "shifted_softplus" or \
            _name(activation) == "ShiftedSoftplus" or activation is shifted_softplus:
        return "shifted_softplus"
    raise ValueError(f"schnetpack.convert: unsupported activation {activation!r}")


def _dense_layers(sequential) -> list:
    layers = list(sequential)
    for layer in layers:
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"schnetpack.convert: expected Dense layers, found {_name(layer)}")
    return layers


def _copy_mlp(target: MLP, dense_layers: list) -> None:
    if len(target.layers) != len(dense_layers):
        raise ValueError("schnetpack.convert: MLP depth mismatch")
    for ours, theirs in zip(target.layers, dense_layers):
        ours.weight.data.copy_(theirs.weight.data)
        if theirs.bias is not None:
            ours.bias.data.copy_(theirs.bias.data)


def _mlp_like(dense_layers: list) -> MLP:
    sizes = [dense_layers[0].in_features] + [layer.out_features for layer in dense_layers]
    activation = _activation_name(getattr(dense_layers[0], "activation", None)) \
        if len(dense_layers) > 1 else "silu"
    last_bias = dense_layers[-1].bias is not None
    mlp = MLP(sizes, activation, last_bias=last_bias)
    _copy_mlp(mlp, dense_layers)
    return mlp


def _convert_painn(rep) -> PaiNN:
    if _name(rep) != "PaiNN":
        raise ValueError(f"schnetpack.convert: representation is {_name(rep)}, not PaiNN")
    if len(getattr(rep, "electronic_embeddings", [])) > 0:
        raise ValueError("schnetpack.convert: electronic embeddings are not supported")
    if not isinstance(rep.embedding, nn.Embedding):
        raise ValueError(f"schnetpack.convert: nuclear embedding {_name(rep.embedding)} "
                         "is not supported (only nn.Embedding)")
    if _name(rep.cutoff_fn) != "CosineCutoff":
        raise ValueError(f"schnetpack.convert: cutoff {_name(rep.cutoff_fn)} is not "
                         "supported (only CosineCutoff)")
    basis_name = _name(rep.radial_basis)
    if basis_name not in ("GaussianRBF", "GaussianRBFCentered", "BesselRBF"):
        raise ValueError(f"schnetpack.convert: radial basis {basis_name} is not supported")
    interactions, mixings = list(rep.interactions), list(rep.mixing)
    n_int = rep.n_interactions
    shared_interactions = n_int > 1 and interactions[0] is interactions[1]
    context = _dense_layers(interactions[0].interatomic_context_net)
    activation = _activation_name(context[0].activation)
    cutoff = float(rep.cutoff_fn.cutoff.reshape(-1)[0])
    ours = PaiNN(
        n_features=rep.n_atom_basis, n_interactions=n_int, cutoff=cutoff,
        n_rbf=rep.radial_basis.n_rbf,
        radial_basis="sinc" if basis_name == "BesselRBF" else "gaussian",
        activation=activation, shared_interactions=shared_interactions,
        shared_filters=rep.share_filters, epsilon=mixings[0].epsilon,
        max_z=rep.embedding.num_embeddings)
    dtype = rep.embedding.weight.dtype
    ours.to(dtype)
    # exact copies of the basis buffers (schnetpack builds them in float32)
    for buffer in ("offsets", "widths", "freqs"):
        if hasattr(rep.radial_basis, buffer):
            if not hasattr(ours.radial_basis, buffer):
                # GaussianRBFCentered keeps offsets/widths like GaussianRBF
                raise ValueError(f"schnetpack.convert: radial basis buffer {buffer} unmatched")
            getattr(ours.radial_basis, buffer).data = \
                getattr(rep.radial_basis, buffer).detach().clone()
    ours.cutoff_fn.cutoff.data = rep.cutoff_fn.cutoff.detach().reshape(()).clone()
    ours.embedding.weight.data.copy_(rep.embedding.weight.data)
    ours.filter_net.weight.data.copy_(rep.filter_net.weight.data)
    ours.filter_net.bias.data.copy_(rep.filter_net.bias.data)
    for layer, interaction, mixing in zip(ours.layers, interactions, mixings):
        _copy_mlp(layer.context, _dense_layers(interaction.interatomic_context_net))
        _copy_mlp(layer.update_net, _dense_layers(mixing.intraatomic_context_net))
        layer.channel_mix.weight.data.copy_(mixing.mu_channel_mix.weight.data)
    return ours


def _energy_offsets(postprocessors, energy_key: str, max_z: int):
    shift = 0.0
    atom_energies = torch.zeros(max_z, dtype=torch.float64)
    extensive = set()
    for post in postprocessors:
        name = _name(post)
        if name in ("CastTo64", "CastTo32", "CastTo16"):
            continue
        if name != "AddOffsets":
            raise ValueError(f"schnetpack.convert: postprocessor {name} is not supported")
        if post._property != energy_key:
            continue
        extensive.add(bool(post.is_extensive))
        if post.add_mean:
            shift += float(post.mean.reshape(-1)[0])
        if post.add_atomrefs:
            refs = post.atomref.detach().to(torch.float64).reshape(-1)
            atom_energies[: min(max_z, refs.numel())] += refs[:max_z]
    if len(extensive) > 1:
        raise ValueError("schnetpack.convert: AddOffsets mixing extensive and intensive "
                         "offsets is not supported")
    return shift, atom_energies, (extensive.pop() if extensive else None)


def convert(model, head=None) -> EnergyModel:
    """A pygfm EnergyModel equal to the schnetpack ``model``.

    ``model`` is a ``NeuralNetworkPotential`` (representation ``PaiNN``, an
    ``Atomwise`` energy output) or a bare ``PaiNN`` together with its ``Atomwise``
    ``head``. The result has the same dtype as ``model``'s parameters.
    """
    postprocessors = []
    if _name(model) == "PaiNN":
        representation = model
        if head is None:
            raise ValueError("schnetpack.convert: a bare PaiNN needs its Atomwise head")
    else:
        representation = getattr(model, "representation", None)
        if representation is None:
            raise ValueError(f"schnetpack.convert: {_name(model)} has no representation")
        heads = [m for m in getattr(model, "output_modules", []) if _name(m) == "Atomwise"]
        if len(heads) != 1:
            raise ValueError(f"schnetpack.convert: expected one Atomwise output, found "
                             f"{len(heads)}")
        head = heads[0]
        if getattr(model, "do_postprocessing", False):
            postprocessors = list(getattr(model, "postprocessors", []))
    if _name(head) != "Atomwise":
        raise ValueError(f"schnetpack.convert: head is {_name(head)}, not Atomwise")
    if head.n_out != 1:
        raise ValueError(f"schnetpack.convert: Atomwise has {head.n_out} outputs; energy needs 1")
    aggregation = {"sum": "sum", "avg": "mean"}.get(head.aggregation_mode)
    if aggregation is None:
        raise ValueError(f"schnetpack.convert: aggregation {head.aggregation_mode!r} "
                         "is not supported")
    painn = _convert_painn(representation)
    dtype = representation.embedding.weight.dtype
    mlp = _mlp_like(_dense_layers(head.outnet)).to(dtype)
    shift, atom_energies, extensive = _energy_offsets(postprocessors, head.output_key,
                                                      painn.max_z)
    energy_model = EnergyModel(painn, mlp, aggregation=aggregation,
                               extensive_offsets=extensive).to(dtype)
    # set after the cast, so a float64 model keeps all the offsets' digits
    energy_model.shift.fill_(shift)
    energy_model.atom_energies.copy_(atom_energies)
    return energy_model

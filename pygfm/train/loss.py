"""The multi-task loss: energy per atom, forces and stress, masked by label,
weighted per dataset, with MSE, MAE or Huber terms.

Each term is a sum over the labelled structures (or atoms, or components) of
this rank divided by the count over *all* ranks (``totals``), so summing the
gradients of the ranks gives exactly the gradient of the single-process loss
over the union of their batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["elementwise", "label_counts", "multitask_loss", "TERMS"]

TERMS = ("energy", "forces", "stress", "direct_forces")


def elementwise(kind: str, prediction: torch.Tensor, target: torch.Tensor,
                delta: float = 0.01) -> torch.Tensor:
    """Per-element loss (no reduction)."""
    if kind == "mse":
        return (prediction - target) ** 2
    if kind == "mae":
        return (prediction - target).abs()
    if kind == "huber":
        return F.huber_loss(prediction, target, reduction="none", delta=delta)
    raise ValueError(f"loss kind must be mse, mae or huber, got {kind!r}")


def _masks(batch):
    """(energy, forces-per-atom, stress) masks; missing labels are all False."""
    B, N = batch.num_structures, batch.num_atoms
    device = batch.positions.device
    none_b = torch.zeros(B, dtype=torch.bool, device=device)
    energy = batch.energy_mask if batch.energy is not None and batch.energy_mask is not None \
        else none_b
    forces_b = batch.forces_mask if batch.forces is not None and batch.forces_mask is not None \
        else none_b
    stress = batch.stress_mask if batch.stress is not None and batch.stress_mask is not None \
        else none_b
    stress = stress & batch.pbc.all(dim=1)  # stress needs a volume
    forces = forces_b[batch.structure_index()] if N else torch.zeros(0, dtype=torch.bool,
                                                                       device=device)
    return energy, forces, stress


def label_counts(batch) -> torch.Tensor:
    """[4] float64: labelled structures (energy), force components, stress
    components, and direct-force components in this batch; the loss divides by
    their sum over ranks."""
    energy, forces, stress = _masks(batch)
    f = float(forces.sum()) * 3
    return torch.tensor([float(energy.sum()), f, float(stress.sum()) * 9, f],
                        dtype=torch.float64)


def multitask_loss(out: dict, batch, config: dict, dataset_weights: torch.Tensor,
                   totals: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The weighted loss and its terms (detached floats, before term weights).

    out: the model's energy [B], forces [N, 3], stress [B, 3, 3] (as present),
        and ``direct_forces`` [N, 3] if the model has a direct force head.
    config: the ``loss`` section. dataset_weights: [D] per-dataset loss weights.
    totals: [4] the global label counts (see :func:`label_counts`).
    """
    kind, delta = config["kind"], config["huber_delta"]
    energy_mask, forces_mask, stress_mask = _masks(batch)
    weight_b = dataset_weights.to(batch.positions.device)[batch.dataset]
    weight_a = weight_b[batch.structure_index()]
    counts = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
    zero = out["energy"].sum() * 0
    terms = {}
    if config["energy"] > 0 and bool(energy_mask.any()):
        predicted = out["energy"] / counts
        target = batch.energy.to(predicted.dtype) / counts
        values = elementwise(kind, predicted, target, delta) * weight_b
        terms["energy"] = torch.where(energy_mask, values, 0).sum() / totals[0].clamp(min=1)
    if config["forces"] > 0 and "forces" in out and bool(forces_mask.any()):
        values = elementwise(kind, out["forces"], batch.forces.to(out["forces"].dtype), delta)
        values = values.sum(dim=1) * weight_a
        terms["forces"] = torch.where(forces_mask, values, 0).sum() / totals[1].clamp(min=1)
    if config["stress"] > 0 and "stress" in out and bool(stress_mask.any()):
        values = elementwise(kind, out["stress"], batch.stress.to(out["stress"].dtype), delta)
        values = values.sum(dim=(1, 2)) * weight_b
        terms["stress"] = torch.where(stress_mask, values, 0).sum() / totals[2].clamp(min=1)
    if config["direct_forces"] > 0 and "direct_forces" in out and bool(forces_mask.any()):
        values = elementwise(kind, out["direct_forces"],
                             batch.forces.to(out["direct_forces"].dtype), delta)
        values = values.sum(dim=1) * weight_a
        terms["direct_forces"] = torch.where(forces_mask, values, 0).sum() / \
            totals[3].clamp(min=1)
    loss = zero
    for name, value in terms.items():
        loss = loss + config[name] * value.to(loss.dtype)
    return loss, {name: float(value.detach()) for name, value in terms.items()}

"""pygfm.train.loss: the multi-task loss against a hand-written float64 reference:
label masks, per-dataset weights, mse / mae / huber, normalization by the global label
counts, and the split of a batch over ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _train_helpers import make_batch, random_samples
from pygfm.train.config import defaults
from pygfm.train.loss import TERMS, label_counts, multitask_loss

KINDS = ("mse", "mae", "huber")
WEIGHTS = (1.0, 0.25, 2.5)  # per dataset


def loss_config(kind="mse", **weights) -> dict:
    config = dict(defaults()["loss"])
    config.update(kind=kind, huber_delta=0.3, energy=1.7, forces=0.9, stress=3.0,
                  direct_forces=0.6)
    config.update(weights)
    return config


def predictions(batch, seed=0, direct=True, requires_grad=True) -> dict:
    """Random float64 model outputs, non-zero everywhere (labels are not)."""
    g = torch.Generator().manual_seed(seed)
    B, N = batch.num_structures, batch.num_atoms
    out = {"energy": batch.energy.double() + torch.randn(B, generator=g, dtype=torch.float64)
           * 2.0,
           "forces": torch.randn(N, 3, generator=g, dtype=torch.float64),
           "stress": torch.randn(B, 3, 3, generator=g, dtype=torch.float64) * 0.3}
    if direct:
        out["direct_forces"] = torch.randn(N, 3, generator=g, dtype=torch.float64)
    return {k: v.requires_grad_(requires_grad) for k, v in out.items()}


def element(kind, prediction: float, target: float, delta: float) -> float:
    x = prediction - target
    if kind == "mse":
        return x * x
    if kind == "mae":
        return abs(x)
    return 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)


def reference(out, samples, owners, config, weights, totals=None):
    """The loss by loops over structures, atoms and components, in Python floats."""
    kind, delta = config["kind"], config["huber_delta"]
    o = {k: v.detach().double().numpy() for k, v in out.items()}
    sums = dict.fromkeys(TERMS, 0.0)
    counts = dict.fromkeys(TERMS, 0)
    start = 0
    for b, (sample, d) in enumerate(zip(samples, owners)):
        n, w = sample.num_atoms, weights[d]
        rows = range(start, start + n)
        if sample.energy is not None:
            sums["energy"] += w * element(kind, o["energy"][b] / n, sample.energy / n, delta)
            counts["energy"] += 1
        if sample.forces is not None:
            for name in ("forces", "direct_forces"):
                for i, row in enumerate(rows):
                    for k in range(3):
                        if name in o:
                            sums[name] += w * element(kind, o[name][row, k],
                                                      sample.forces[i, k], delta)
                counts[name] += 3 * n
        if sample.stress is not None and sample.pbc.all():
            for i in range(3):
                for k in range(3):
                    sums["stress"] += w * element(kind, o["stress"][b, i, k],
                                                  sample.stress[i, k], delta)
            counts["stress"] += 9
        start += n
    if totals is None:
        totals = [counts[t] for t in TERMS]
    terms = {}
    for t, total in zip(TERMS, totals):
        if config[t] > 0 and counts[t] and t in o:
            terms[t] = sums[t] / max(float(total), 1.0)
    return sum(config[t] * v for t, v in terms.items()), terms, counts


@pytest.fixture(scope="module")
def data():
    samples, owners = random_samples(21, seed=4)
    return samples, owners, make_batch(samples, owners)


def test_the_random_batch_covers_every_case(data):
    samples, owners, batch = data
    labels = {s.labels for s in samples}
    assert () in labels and ("energy",) in labels and ("forces",) in labels
    assert any(s.stress is not None and not s.pbc.all() for s in samples)  # slab with stress
    assert any(s.stress is not None and s.pbc.all() for s in samples)
    assert set(owners) == {0, 1, 2}
    assert not batch.energy_mask.all() and batch.energy_mask.any()


def test_label_counts(data):
    samples, _, batch = data
    counts = label_counts(batch)
    assert counts.dtype == torch.float64 and counts.shape == (4,)
    energy = sum(s.energy is not None for s in samples)
    forces = sum(3 * s.num_atoms for s in samples if s.forces is not None)
    stress = sum(9 for s in samples if s.stress is not None and s.pbc.all())
    assert counts.tolist() == [energy, forces, stress, forces]


@pytest.mark.parametrize("kind", KINDS)
def test_matches_the_reference(data, kind):
    samples, owners, batch = data
    config = loss_config(kind)
    out = predictions(batch)
    totals = label_counts(batch)
    loss, terms = multitask_loss(out, batch, config, torch.tensor(WEIGHTS, dtype=torch.float64),
                                 totals)
    expected, expected_terms, _ = reference(out, samples, owners, config, WEIGHTS)
    assert set(terms) == set(expected_terms) == set(TERMS)
    for name in TERMS:
        assert terms[name] == pytest.approx(expected_terms[name], rel=1e-12), name
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    if kind == "huber":  # both branches of Huber's loss were used
        residual = (out["forces"].detach() - batch.forces).abs()
        assert (residual < 0.3).any() and (residual > 0.3).any()


@pytest.mark.parametrize("kind", KINDS)
def test_missing_labels_contribute_nothing(data, kind):
    _, _, batch = data
    config = loss_config(kind)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    out = predictions(batch)
    totals = label_counts(batch)
    loss, _ = multitask_loss(out, batch, config, weights, totals)
    loss.backward()
    owner = batch.structure_index()
    no_energy = ~batch.energy_mask
    no_forces = ~batch.forces_mask[owner]
    no_stress = ~(batch.stress_mask & batch.pbc.all(dim=1))
    assert no_energy.any() and no_forces.any() and no_stress.any()
    assert (out["energy"].grad[no_energy] == 0).all()
    assert (out["forces"].grad[no_forces] == 0).all()
    assert (out["direct_forces"].grad[no_forces] == 0).all()
    assert (out["stress"].grad[no_stress] == 0).all()
    # and the labelled ones do get a gradient
    assert (out["energy"].grad[~no_energy] != 0).any()
    assert (out["forces"].grad[~no_forces] != 0).any()
    assert (out["stress"].grad[~no_stress] != 0).any()
    # wild predictions where there is no label change nothing
    wild = {k: v.detach().clone() for k, v in out.items()}
    wild["energy"][no_energy] = 1e6
    wild["forces"][no_forces] = -1e6
    wild["direct_forces"][no_forces] = 1e6
    wild["stress"][no_stress] = 1e6
    again, _ = multitask_loss(wild, batch, config, weights, totals)
    assert again.item() == loss.item()


def test_unlabelled_structures_removed_give_the_same_loss(data):
    samples, owners, batch = data
    config = loss_config("mse")
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    out = predictions(batch, requires_grad=False)
    loss, terms = multitask_loss(out, batch, config, weights, label_counts(batch))
    keep = [b for b, s in enumerate(samples) if s.labels]
    assert len(keep) < len(samples)
    small = make_batch([samples[b] for b in keep], [owners[b] for b in keep])
    atoms = torch.cat([torch.arange(int(batch.ptr[b]), int(batch.ptr[b + 1])) for b in keep])
    small_out = {"energy": out["energy"][keep], "stress": out["stress"][keep],
                 "forces": out["forces"][atoms], "direct_forces": out["direct_forces"][atoms]}
    assert label_counts(small).tolist() == label_counts(batch).tolist()
    small_loss, small_terms = multitask_loss(small_out, small, config, weights,
                                             label_counts(small))
    assert small_loss.item() == pytest.approx(loss.item(), rel=1e-13)
    assert small_terms == pytest.approx(terms, rel=1e-13)


def test_a_batch_without_any_label():
    samples, owners = random_samples(6, seed=9)
    bare = [type(s)(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
            for s in samples]
    batch = make_batch(bare, owners)
    assert label_counts(batch).tolist() == [0, 0, 0, 0]
    out = predictions(batch)
    loss, terms = multitask_loss(out, batch, loss_config("mse"),
                                 torch.ones(3, dtype=torch.float64), label_counts(batch))
    assert terms == {} and loss.item() == 0.0
    # a rank whose batch has no label still takes part in the backward pass
    assert loss.requires_grad
    loss.backward()
    assert all(v.grad is None or (v.grad == 0).all() for v in out.values())


def test_energy_only_batch_has_only_an_energy_term():
    samples, owners = random_samples(9, seed=3)
    only = [type(s)(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc,
                    energy=-1.0 * s.num_atoms) for s in samples]
    batch = make_batch(only, owners)
    out = predictions(batch, requires_grad=False)
    loss, terms = multitask_loss(out, batch, loss_config("mae"),
                                 torch.ones(3, dtype=torch.float64), label_counts(batch))
    assert set(terms) == {"energy"}
    expected, _, _ = reference(out, only, owners, loss_config("mae"), (1.0, 1.0, 1.0))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_dataset_weights(data):
    samples, owners, batch = data
    config = loss_config("mse")
    out = predictions(batch)
    totals = label_counts(batch)
    weights = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    loss, _ = multitask_loss(out, batch, config, weights, totals)
    expected, _, _ = reference(out, samples, owners, config, weights.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    # dataset 1 has weight 0: no gradient reaches its structures
    silent = batch.dataset == 1
    assert silent.any()
    assert (out["energy"].grad[silent] == 0).all()
    assert (out["forces"].grad[silent[batch.structure_index()]] == 0).all()
    # weights scale each dataset's contribution linearly
    ones = torch.ones(3, dtype=torch.float64)
    per_dataset = []
    for d in range(3):
        only = torch.zeros(3, dtype=torch.float64)
        only[d] = 1.0
        per_dataset.append(multitask_loss(out, batch, config, only, totals)[0].item())
    assert multitask_loss(out, batch, config, ones, totals)[0].item() == \
        pytest.approx(sum(per_dataset), rel=1e-12)
    assert loss.item() == pytest.approx(per_dataset[0] + 3.0 * per_dataset[2], rel=1e-12)


def test_term_weights_and_missing_outputs(data):
    _, _, batch = data
    totals = label_counts(batch)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    out = predictions(batch, requires_grad=False)
    config = loss_config("mse", stress=0.0, direct_forces=0.0)
    loss, terms = multitask_loss(out, batch, config, weights, totals)
    assert set(terms) == {"energy", "forces"}
    assert loss.item() == pytest.approx(1.7 * terms["energy"] + 0.9 * terms["forces"], rel=1e-13)
    # a model without stress / direct force outputs: those terms are left out
    partial = {k: out[k] for k in ("energy", "forces")}
    loss2, terms2 = multitask_loss(partial, batch, loss_config("mse"), weights, totals)
    assert set(terms2) == {"energy", "forces"}
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_normalized_by_the_given_totals(data, kind):
    samples, owners, batch = data
    config = loss_config(kind)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    out = predictions(batch, requires_grad=False)
    local = label_counts(batch)
    scale = torch.tensor([2.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    _, terms = multitask_loss(out, batch, config, weights, local)
    scaled_loss, scaled = multitask_loss(out, batch, config, weights, local * scale)
    for k, name in enumerate(TERMS):
        assert scaled[name] == pytest.approx(terms[name] / float(scale[k]), rel=1e-13), name
    expected, _, _ = reference(out, samples, owners, config, WEIGHTS, (local * scale).tolist())
    assert scaled_loss.item() == pytest.approx(expected, rel=1e-12)
    # the loss is a mean over labels: energy MSE of a constant error e per atom is e^2
    if kind == "mse":
        shifted = dict(out)
        counts = (batch.ptr[1:] - batch.ptr[:-1]).double()
        shifted["energy"] = batch.energy.double() + 0.1 * counts
        _, t = multitask_loss(shifted, batch, config, torch.ones(3, dtype=torch.float64), local)
        assert t["energy"] == pytest.approx(0.01, rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_halves_with_global_totals_sum_to_the_whole(data, kind):
    """What data-parallel training relies on: the loss (and its gradient) of the
    whole batch is the sum over ranks of each rank's loss divided by global counts."""
    samples, owners, batch = data
    config = loss_config(kind)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    out = predictions(batch)
    whole, _ = multitask_loss(out, batch, config, weights, label_counts(batch))
    whole.backward()
    for cut in (1, 7, 13):
        parts = [(samples[:cut], owners[:cut]), (samples[cut:], owners[cut:])]
        batches = [make_batch(s, o) for s, o in parts]
        totals = label_counts(batches[0]) + label_counts(batches[1])
        assert totals.tolist() == label_counts(batch).tolist()
        n_cut = int(batch.ptr[cut])
        pieces = [{"energy": out["energy"].detach()[:cut], "stress": out["stress"].detach()[:cut],
                   "forces": out["forces"].detach()[:n_cut],
                   "direct_forces": out["direct_forces"].detach()[:n_cut]},
                  {"energy": out["energy"].detach()[cut:], "stress": out["stress"].detach()[cut:],
                   "forces": out["forces"].detach()[n_cut:],
                   "direct_forces": out["direct_forces"].detach()[n_cut:]}]
        total, grads = 0.0, {k: [] for k in out}
        for piece, part in zip(pieces, batches):
            piece = {k: v.clone().requires_grad_(True) for k, v in piece.items()}
            loss, _ = multitask_loss(piece, part, config, weights, totals)
            loss.backward()
            total += loss.item()
            for k, v in piece.items():
                grads[k].append(v.grad if v.grad is not None else torch.zeros_like(v))
        assert total == pytest.approx(whole.item(), rel=1e-12, abs=1e-15), cut
        for k in out:
            torch.testing.assert_close(torch.cat(grads[k]), out[k].grad, rtol=1e-12,
                                       atol=1e-15, msg=f"{k} (cut {cut})")


def test_float32_predictions():
    """The trainer's fp32 path: float32 outputs, float64 totals; the loss is float32
    and close to the float64 reference."""
    samples, owners = random_samples(12, seed=5)
    batch = make_batch(samples, owners, dtype=torch.float32)
    out64 = predictions(make_batch(samples, owners), requires_grad=False)
    out = {k: v.float().requires_grad_(True) for k, v in out64.items()}
    config = loss_config("huber")
    loss, _ = multitask_loss(out, batch, config, torch.tensor(WEIGHTS), label_counts(batch))
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(v.grad).all() for v in out.values())
    expected, _, _ = reference(out64, samples, owners, config, WEIGHTS)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_bad_kind():
    samples, owners = random_samples(3, seed=1)
    batch = make_batch(samples, owners)
    with pytest.raises(ValueError, match="mse, mae or huber"):
        multitask_loss(predictions(batch), batch, loss_config("l1"),
                       torch.ones(3, dtype=torch.float64), label_counts(batch))


def test_reference_sanity():
    # the reference's Huber is torch's
    x = np.linspace(-1, 1, 41)
    ours = [element("huber", v, 0.0, 0.3) for v in x]
    theirs = torch.nn.functional.huber_loss(torch.tensor(x), torch.zeros(41), reduction="none",
                                            delta=0.3)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-14)

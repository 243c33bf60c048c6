"""Run under ``mpiexec -n 2`` by tests/train/test_parallel.py: data-parallel gradients of
a tiny float64 MultiHeadModel equal the single-process gradient of the whole batch.

Every rank builds the same batch (random structures with every label subset, three
datasets), takes its own share of it (rank 1's share has no structure of dataset 2, so
its head 2 gets no gradient there), computes the multi-task loss with the global label
counts (``Parallel.sum(label_counts(...))``), runs backward and ``Parallel.sum_gradients``,
and compares with the gradient of the whole batch computed alone (every rank does that
too). Also checks ``broadcast_parameters``, ``sum``, ``allreduce_max`` and ``any``, and
that an optimizer step keeps the ranks' weights identical.

Exits 0 and prints ``ALL OK`` on success; on any mismatch prints ``FAIL rank R: ...`` and
ends the whole job with a non-zero code (MPI Abort, so no rank waits forever).
"""

from __future__ import annotations

import copy
import sys
import traceback

import torch

from _train_helpers import make_batch, random_samples  # the script's own directory
from pygfm.models import MultiHeadModel
from pygfm.nn import PaiNN
from pygfm.train.config import defaults
from pygfm.train.loss import label_counts, multitask_loss
from pygfm.train.parallel import Parallel

TOLERANCE = 1e-10
WEIGHTS = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)


def build_model(seed: int) -> MultiHeadModel:
    torch.manual_seed(seed)
    trunk = PaiNN(n_features=8, n_interactions=2, cutoff=4.0, n_rbf=6)
    model = MultiHeadModel(trunk, ["a", "b", "c"], direct_forces=True, normalization={
        "a": {"reference_energies": {"H": -1.0, "C": -3.0, "O": -4.0, "Cu": -2.0},
              "energy_scale": 0.7},
        "b": {"reference_energies": {"H": -0.5, "Cu": -1.0}, "energy_scale": 1.3}})
    return model.double()


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def gradients(model: MultiHeadModel, batch, totals, config) -> tuple[torch.Tensor, list]:
    model.zero_grad(set_to_none=True)
    out = model(batch, forces=True, stress=True, direct_forces=True)
    loss, _ = multitask_loss(out, batch, config, WEIGHTS, totals)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def main() -> None:
    torch.set_num_threads(1)
    parallel = Parallel("gloo", None, 120.0)
    rank = parallel.rank

    def check(condition: bool, message: str) -> None:
        if not condition:
            print(f"FAIL rank {rank}/{parallel.size}: {message}", flush=True)
            parallel.abort(1)

    check(parallel.size == 2 and parallel.launcher == "mpi",
          f"expected 2 MPI ranks, got size {parallel.size} ({parallel.launcher})")

    # the collectives
    check(parallel.allreduce_max(5 + rank) == 6, "allreduce_max")
    check(parallel.any(rank == 1) and not parallel.any(False), "any")
    summed = parallel.sum(torch.tensor([1.0, rank], dtype=torch.float64))
    check(summed.tolist() == [2.0, 1.0], f"sum gave {summed.tolist()}")

    # the same batch everywhere; rank 0 takes every structure of dataset 2
    samples, owners = random_samples(18, seed=11)
    order = [k for k in range(len(samples)) if owners[k] == 2] + \
        [k for k in range(len(samples)) if owners[k] != 2]
    cut = len([k for k in order if owners[k] == 2]) + 3
    shares = [order[:cut], order[cut:]]
    check(all(owners[k] != 2 for k in shares[1]) and len(shares[1]) > 3, "bad split")
    mine = shares[rank]
    whole = make_batch(samples, owners)
    local = make_batch([samples[k] for k in mine], [owners[k] for k in mine])
    check(bool((whole.stress_mask & whole.pbc.all(dim=1)).any()), "no stress labels")

    # weights: every rank starts from rank 0's
    model = build_model(seed=3)
    if rank == 1:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
    parallel.broadcast_parameters(model)
    own = flat(model.parameters())
    check(torch.equal(parallel.sum(own), 2 * own), "broadcast_parameters left ranks apart")
    reference = build_model(seed=3)
    check(torch.equal(flat(reference.parameters()), own), "rank 0's weights not the seed's")

    model.train()
    for kind in ("mse", "huber", "mae"):
        config = dict(defaults()["loss"], kind=kind, huber_delta=0.05, energy=2.0, forces=1.0,
                      stress=5.0, direct_forces=0.5)
        totals = parallel.sum(label_counts(local))
        check(totals.tolist() == label_counts(whole).tolist(),
              f"{kind}: global label counts {totals.tolist()} != {label_counts(whole).tolist()}")
        loss, _ = gradients(model, local, totals, config)
        if rank == 1:
            head_c = [p for name, p in model.named_parameters()
                      if name.startswith(("heads.2.", "force_heads.2."))]
            check(len(head_c) > 0 and all(p.grad is None for p in head_c),
                  f"{kind}: rank 1 has no structure of dataset 2, yet head 2 got a gradient")
        parallel.sum_gradients(model.parameters())
        check(all(p.grad is not None for p in model.parameters()),
              f"{kind}: sum_gradients left a parameter without a gradient")
        data_parallel = flat([p.grad for p in model.parameters()])
        total_loss = float(parallel.sum(loss.reshape(1))[0])

        alone = copy.deepcopy(model)
        whole_loss, whole_grads = gradients(alone, whole, label_counts(whole), config)
        single = flat([g if g is not None else torch.zeros_like(p)
                       for g, p in zip(whole_grads, alone.parameters())])
        scale = float(single.abs().max())
        error = float((data_parallel - single).abs().max())
        check(scale > 0, f"{kind}: zero gradient")
        check(abs(total_loss - float(whole_loss)) <= TOLERANCE * abs(float(whole_loss)),
              f"{kind}: loss summed over ranks {total_loss!r} != whole batch {float(whole_loss)!r}")
        check(error <= TOLERANCE * scale,
              f"{kind}: data-parallel gradient differs from the single-process one by "
              f"{error:.3g} (largest component {scale:.3g})")
        # per parameter, too (a small tensor's error could hide under the global max)
        for (name, p), g in zip(model.named_parameters(), whole_grads):
            g = torch.zeros_like(p) if g is None else g
            bound = TOLERANCE * max(float(g.abs().max()), scale * 1e-3)
            check(float((p.grad - g).abs().max()) <= bound, f"{kind}: gradient of {name}")
        print(f"rank {rank}: {kind}: loss {total_loss:.12g}, max gradient error "
              f"{error / scale:.2e} (relative)", flush=True)

    # an optimizer step on the summed gradients keeps the ranks identical
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer.step()
    after = flat(model.parameters())
    check(not torch.equal(after, own), "the optimizer step changed nothing")
    check(torch.equal(parallel.sum(after), 2 * after), "ranks diverged after a step")

    parallel.barrier()
    parallel.close()
    print(f"rank {rank}: ALL OK", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - any error ends the job, never a hang
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(1)

"""Use pygfm's ops inside your own torch model.

A minimal message-passing energy model written by a user: atoms embedded by
element, one round of messages gathered per receiver with a CSR sum
(``pygfm.ops.segment_sum``), atomic energies summed per structure, forces by
autograd, and a few training steps on energies and forces. Run it with

    python examples/custom_model.py
"""

import torch

import pygfm


class TinyMessagePassing(torch.nn.Module):
    def __init__(self, num_elements: int = 10, features: int = 32, cutoff: float = 4.0):
        super().__init__()
        self.cutoff = cutoff
        self.embed = torch.nn.Embedding(num_elements, features)
        self.filter = torch.nn.Linear(8, features)
        self.readout = torch.nn.Sequential(
            torch.nn.Linear(features, features), torch.nn.SiLU(), torch.nn.Linear(features, 1)
        )
        self.register_buffer("centers", torch.linspace(0.0, cutoff, 8))

    def forward(self, numbers, positions, ptr, receiver, sender, edge_ptr):
        """Energy per structure [B] (eV) of atoms [N] in structures ptr [B+1].

        Edges are sorted by receiver; edge_ptr [N+1] marks each atom's edges.
        """
        vectors = positions[sender] - positions[receiver]
        distance = vectors.norm(dim=1)
        envelope = 0.5 * (torch.cos(torch.pi * distance / self.cutoff) + 1.0)
        basis = torch.exp(-((distance[:, None] - self.centers) ** 2)) * envelope[:, None]
        features = self.embed(numbers)
        messages = self.filter(basis) * features[sender]             # [E, F]
        features = features + pygfm.ops.segment_sum(messages, edge_ptr)  # [N, F]
        atomic_energy = self.readout(features)                        # [N, 1]
        return pygfm.ops.segment_sum(atomic_energy, ptr)[:, 0]        # [B]


def make_batch(generator, structures=16):
    counts = torch.randint(3, 12, (structures,), generator=generator)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    numbers = torch.randint(0, 10, (int(ptr[-1]),), generator=generator)
    positions = torch.randn(int(ptr[-1]), 3, generator=generator) * 1.5
    receiver, sender = [], []
    for start, stop in zip(ptr[:-1].tolist(), ptr[1:].tolist()):
        for i in range(start, stop):
            for j in range(start, stop):
                if i != j and (positions[i] - positions[j]).norm() < 4.0:
                    receiver.append(i)
                    sender.append(j)
    receiver, sender = torch.tensor(receiver), torch.tensor(sender)
    edge_ptr = torch.zeros(len(numbers) + 1, dtype=torch.long)
    edge_ptr[1:] = torch.bincount(receiver, minlength=len(numbers)).cumsum(0)
    return numbers, positions, ptr, receiver, sender, edge_ptr


def main():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    numbers, positions, ptr, receiver, sender, edge_ptr = make_batch(generator)
    # Labels from a fixed "teacher" model of the same form.
    teacher, student = TinyMessagePassing(), TinyMessagePassing()
    positions.requires_grad_(True)
    target_energy = teacher(numbers, positions, ptr, receiver, sender, edge_ptr)
    (target_forces,) = torch.autograd.grad(-target_energy.sum(), positions)
    target_energy = target_energy.detach()

    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    for step in range(61):
        energy = student(numbers, positions, ptr, receiver, sender, edge_ptr)
        (forces,) = torch.autograd.grad(-energy.sum(), positions, create_graph=True)
        loss = (energy - target_energy).pow(2).mean() + (forces - target_forces).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()  # goes through the double backward of segment_sum
        optimizer.step()
        if step == 0:
            first = loss.item()
        if step % 20 == 0:
            print(f"step {step:3d}  energy+force loss {loss.item():.4f}")
    assert loss.item() < first, "training did not reduce the loss"
    print(f"loss {first:.4f} -> {loss.item():.4f}")


if __name__ == "__main__":
    main()

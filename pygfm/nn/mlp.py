"""Multilayer perceptrons and the activations pygfm models use."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "shifted_softplus", "ACTIVATIONS"]


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus(x) - ln 2 (SchNet's activation; 0 at x = 0)."""
    return F.softplus(x) - math.log(2.0)


#: Activations by name, as configs and checkpoints spell them.
ACTIVATIONS = {"silu": F.silu, "shifted_softplus": shifted_softplus, "tanh": torch.tanh,
               "identity": lambda x: x}


class MLP(nn.Module):
    """Linear layers of the given ``sizes`` (in, hidden..., out) with ``activation``
    between them and none after the last. Weights Xavier-uniform, biases zero."""

    def __init__(self, sizes: Sequence[int], activation: str = "silu",
                 last_bias: bool = True):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes needs at least input and output, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {activation!r}; "
                             f"known: {sorted(ACTIVATIONS)}")
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]
        layers = []
        for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = index == len(sizes) - 2
            layer = nn.Linear(n_in, n_out, bias=last_bias or not last)
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = self.activation(x)
        return x

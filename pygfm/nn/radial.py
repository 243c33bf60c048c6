"""Radial bases and cutoff functions of interatomic distances (Å)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GaussianRBF", "SincRBF", "CosineCutoff"]


class GaussianRBF(nn.Module):
    """exp(-(d - mu_k)^2 / (2 sigma^2)), k = 1..n_rbf, centres mu evenly spaced
    from ``start`` to ``cutoff`` and sigma their spacing (schnetpack's GaussianRBF).

    d [...] -> [..., n_rbf].
    """

    def __init__(self, n_rbf: int, cutoff: float, start: float = 0.0,
                 trainable: bool = False):
        super().__init__()
        if n_rbf < 2:
            raise ValueError(f"GaussianRBF: n_rbf must be >= 2, got {n_rbf}")
        self.n_rbf = n_rbf
        offsets = torch.linspace(start, cutoff, n_rbf)
        widths = (offsets[1] - offsets[0]).abs() * torch.ones_like(offsets)
        if trainable:
            self.offsets, self.widths = nn.Parameter(offsets), nn.Parameter(widths)
        else:
            self.register_buffer("offsets", offsets)
            self.register_buffer("widths", widths)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        coefficient = -0.5 / self.widths.pow(2)
        return torch.exp(coefficient * (distance[..., None] - self.offsets).pow(2))


class SincRBF(nn.Module):
    """sin(k pi d / cutoff) / d, k = 1..n_rbf (the 0th-order spherical Bessel
    basis of DimeNet; schnetpack's BesselRBF). d [...] -> [..., n_rbf]."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.n_rbf = n_rbf
        self.register_buffer("freqs", torch.arange(1, n_rbf + 1) * math.pi / cutoff)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        safe = torch.where(distance == 0, torch.ones_like(distance), distance)
        return torch.sin(distance[..., None] * self.freqs) / safe[..., None]


class CosineCutoff(nn.Module):
    """0.5 (cos(pi d / cutoff) + 1) for d < cutoff, else 0 (Behler)."""

    def __init__(self, cutoff: float):
        super().__init__()
        if not (cutoff > 0 and math.isfinite(cutoff)):
            raise ValueError(f"CosineCutoff: cutoff must be positive and finite, got {cutoff}")
        self.register_buffer("cutoff", torch.tensor(float(cutoff)))

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        value = 0.5 * (torch.cos(distance * math.pi / self.cutoff) + 1.0)
        return value * (distance < self.cutoff).to(value.dtype)

"""PaiNN: the equivariant message-passing trunk (Schütt, Unke, Gastegger, ICML 2021).

The equations follow schnetpack's ``PaiNN`` (so its trained models convert
exactly, see :mod:`pygfm.interop.schnetpack`). Per layer, with s [N, F] and
v [N, 3, F]:

* message: x = phi(s) (F -> F -> 3F MLP), filters W = filter_net(rbf(d)) * fcut(d),
  ds_i = sum_j x_s(j) W_s, dv_i = sum_j x_r(j) W_r d_ij + x_m(j) W_m v_j
  (the fused op :func:`pygfm.ops.painn_message`);
* update: (V | W) = U v (no bias), a = MLP([s, |V|]) split (a_ss | a_vv | a_sv),
  s += a_ss + a_sv <V, W>, v += a_vv W (:func:`pygfm.ops.painn_update`).

d_ij is the unit vector r_ij / |r_ij| (the paper's; HydraGNN's variant divides
by the distance once more).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import MessageGraph, painn_message, painn_update
from .mlp import MLP
from .radial import CosineCutoff, GaussianRBF, SincRBF

__all__ = ["PaiNN", "PaiNNLayer", "make_radial_basis"]


def make_radial_basis(name: str, n_rbf: int, cutoff: float) -> nn.Module:
    """``"gaussian"`` (default of PaiNN) or ``"sinc"``."""
    if name == "gaussian":
        return GaussianRBF(n_rbf, cutoff)
    if name == "sinc":
        return SincRBF(n_rbf, cutoff)
    raise ValueError(f"unknown radial basis {name!r}; known: 'gaussian', 'sinc'")


def _embedding(max_z: int, n_features: int) -> nn.Embedding:
    """nn.Embedding(max_z, n_features) whose first 100 rows take the same random
    draws as the 100-row table pygfm had before it embedded every element, and
    whose other rows come from a fixed generator: a seeded model (a run, a test)
    keeps the weights it had, for every element it could embed then."""
    old = min(max_z, 100)
    weight = torch.empty(max_z, n_features)
    nn.init.normal_(weight[:old])
    if max_z > old:
        weight[old:].normal_(generator=torch.Generator().manual_seed(max_z))
    return nn.Embedding.from_pretrained(weight, freeze=False)


class PaiNNLayer(nn.Module):
    """One interaction (message) plus one mixing (update) block."""

    def __init__(self, n_features: int, activation: str = "silu", epsilon: float = 1e-8):
        super().__init__()
        F_ = n_features
        self.n_features = F_
        self.epsilon = epsilon
        self.context = MLP([F_, F_, 3 * F_], activation)
        self.channel_mix = nn.Linear(F_, 2 * F_, bias=False)
        nn.init.xavier_uniform_(self.channel_mix.weight)
        self.update_net = MLP([2 * F_, F_, 3 * F_], activation)

    def forward(self, s, v, filters, direction, graph: MessageGraph):
        ds, dv = painn_message(self.context(s), v, filters, direction, graph)
        s, v = s + ds, v + dv
        mix = self.channel_mix(v)                                   # [N, 3, 2F]
        norm = torch.sqrt(mix[..., :self.n_features].pow(2).sum(1) + self.epsilon)
        a = self.update_net(torch.cat([s, norm], dim=-1))           # [N, 3F]
        return painn_update(s, v, a, mix)


class PaiNN(nn.Module):
    """PaiNN representation: atomic numbers and edge vectors -> (s [N, F], v [N, 3, F]).

    Args:
        n_features: F, features per atom (schnetpack's n_atom_basis).
        n_interactions: number of message + update layers.
        cutoff: radial cutoff (Å), applied by a cosine cutoff.
        n_rbf: radial basis functions; ``radial_basis`` "gaussian" or "sinc".
        shared_interactions: one set of layer weights for every layer.
        shared_filters: one filter network for every layer.
        max_z: atomic numbers 0..max_z-1 are embedded; the default 119 covers
            every element (Z = 1..118, the range of the data format).
    """

    def __init__(self, n_features: int = 128, n_interactions: int = 3, cutoff: float = 5.0,
                 n_rbf: int = 20, radial_basis: str = "gaussian", activation: str = "silu",
                 shared_interactions: bool = False, shared_filters: bool = False,
                 epsilon: float = 1e-8, max_z: int = 119):
        super().__init__()
        # the constructor's arguments, so a checkpoint can rebuild this module
        self.config = dict(n_features=n_features, n_interactions=n_interactions,
                           cutoff=float(cutoff), n_rbf=n_rbf, radial_basis=radial_basis,
                           activation=activation, shared_interactions=shared_interactions,
                           shared_filters=shared_filters, epsilon=epsilon, max_z=max_z)
        self.n_features = n_features
        self.n_interactions = n_interactions
        self.cutoff = float(cutoff)
        self.max_z = max_z
        self.shared_filters = shared_filters
        self.shared_interactions = shared_interactions
        self.radial_basis = make_radial_basis(radial_basis, n_rbf, cutoff)
        self.cutoff_fn = CosineCutoff(cutoff)
        self.embedding = _embedding(max_z, n_features)
        filter_sets = 1 if shared_filters else n_interactions
        self.filter_net = nn.Linear(n_rbf, filter_sets * 3 * n_features)
        nn.init.xavier_uniform_(self.filter_net.weight)
        nn.init.zeros_(self.filter_net.bias)
        layer_count = 1 if shared_interactions else n_interactions
        self.layers = nn.ModuleList(
            PaiNNLayer(n_features, activation, epsilon) for _ in range(layer_count))

    def forward(self, numbers: torch.Tensor, vectors: torch.Tensor, graph: MessageGraph):
        """numbers [N] int64; vectors [E, 3] r_ij (Å) of the edges of ``graph``."""
        if numbers.numel() and (int(numbers.min()) < 0 or int(numbers.max()) >= self.max_z):
            raise ValueError(f"PaiNN: atomic numbers must lie in [0, {self.max_z}) (this "
                             f"model embeds {self.max_z} elements), got "
                             f"{int(numbers.min())}..{int(numbers.max())}")
        dtype = self.embedding.weight.dtype
        distance = vectors.norm(dim=1)
        direction = vectors / distance[:, None]
        fcut = self.cutoff_fn(distance).to(dtype)[:, None]
        # (basis @ W.T + b) * fcut as one product: [basis * fcut, fcut] @ [W, b].T
        cut_basis = torch.cat([self.radial_basis(distance).to(dtype) * fcut, fcut], dim=1)
        s = self.embedding(numbers)
        v = s.new_zeros(s.shape[0], 3, self.n_features)
        width = 3 * self.n_features
        for index in range(self.n_interactions):
            layer = self.layers[0 if self.shared_interactions else index]
            rows = slice(0, width) if self.shared_filters else \
                slice(index * width, (index + 1) * width)
            if index == 0 or not self.shared_filters:
                weight = torch.cat([self.filter_net.weight[rows],
                                    self.filter_net.bias[rows, None]], dim=1)
                filters = F.linear(cut_basis, weight)
            s, v = layer(s, v, filters, direction, graph)
        return s, v

"""HydraGNN PAINN models in pygfm: ``load(logdir)`` -> a model with HydraGNN's numbers.

HydraGNN (github.com/ORNL/HydraGNN) is not imported: its log directory
(``config.json`` + ``<name>.pk``) is read as files, and the model is rebuilt here
from the equations of its ``PAINNStack`` / ``Base`` (commit d251f816), which
differ from the PaiNN paper and from pygfm's own :class:`~pygfm.nn.PaiNN`:

* node input: the atomic number as one float feature (no embedding table); the
  first layer runs at width 1 (``input_dim``), every later one at ``hidden_dim``;
* edges (i = edge_index[0] receives, j sends), r_ij = x_j - x_i + S, d = |r_ij|,
  u = r_ij / (d + 1e-9); radial basis sin(n pi d / r_c) / d (n = 1..R), cosine
  cutoff 0.5 (cos(pi d / r_c) + 1) for d < r_c, 0 beyond;
* message: phi = Linear(F,F) SiLU Linear(F,3F) of s_j, W = Linear(R,3F)(rbf) fcut,
  (g_vv | g_ve | m_s) = phi_j * W; s_i += sum m_s, v_i += sum v_j g_vv + g_ve u/d
  (the direction enters divided by the distance once more);
* update: U = update_U v, V = update_V v (biases in checkpoints older than
  HydraGNN PR #511, commit e9ff3391; each bias is added to x, y and z alike),
  a = MLP([|V|, s]) split (a_vv | a_sv | a_ss), s += a_sv <U, V> + a_ss,
  v += a_vv U; the last layer has no vector update (its MLP gives a_sv | a_ss);
* output embedding s = Linear(F,H) Tanh Linear(H,H), v = vec_embed_out v (not in
  the last layer); then graph_attr conditioning (``concat_node``: a shared
  Linear(H+2, H) of [s, charge, spin]; ``film``: s (1 + tanh(scale)) + shift) and
  the model's activation (config ``activation_function``, ReLU by default) after
  every layer, the last included;
* graph heads: pooled node features (``graph_pooling``: add, mean or max; with
  ``fuse_pool`` conditioning Linear(H+2,H) act Linear(H,H) of [pool, charge,
  spin]), per branch a shared MLP (each Linear followed by the activation) and a
  head MLP whose last Linear has none; the energy is that MLP's output, not a sum
  of atomic energies; forces = -dE/dx by autograd;
* the branch-weighting MLP of HydraGNN's SC26 screening (``mlp_weights/*.pt``):
  softmax(MLP(element counts Z = 1..118)) blends the branch energies and forces.

The kernels are pygfm's: the fused PaiNN message and update ops with HydraGNN's
weights permuted into their (s | r | m) and (a_ss | a_vv | a_sv) order, and
pygfm's neighbor list (``radius`` and ``max_neighbours`` from the config; when
the cap binds pygfm keeps the nearest neighbours per atom, as HydraGNN's periodic
``RadiusGraphPBC`` does; its molecular ``radius_graph`` keeps an arbitrary
subset, so capped molecules can differ from HydraGNN there, by its choice).

Loading is strict: every tensor of the checkpoint is used (after the ``module.``
prefix of DDP and the ``model.`` prefix of HydraGNN's interatomic-potential
wrapper are stripped; graph heads other than the energy's are left out and listed
in ``loaded_from["ignored_heads"]``) and every parameter is set, or the error
lists what did not match. HydraGNN's own inference loader (``strict=False``) silently drops such
keys (all of them for a DDP checkpoint); pygfm says what it loaded.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HydraGNNConfig", "HydraGNNModel", "hydragnn_neighbors", "load", "load_branch_weights",
           "set_energy_offsets"]

_EPS = 1e-9  # HydraGNN adds it to the edge length before normalising (operations.py)
_ACTIVATIONS = {
    "relu": nn.ReLU, "silu": nn.SiLU, "selu": nn.SELU, "elu": nn.ELU, "sigmoid": nn.Sigmoid,
    "prelu": nn.PReLU, "lrelu_01": lambda: nn.LeakyReLU(0.1),
    "lrelu_025": lambda: nn.LeakyReLU(0.25), "lrelu_05": lambda: nn.LeakyReLU(0.5),
}
_POOLING = ("add", "sum", "mean", "max")
_CONDITIONING = ("concat_node", "film", "fuse_pool")


# ------------------------------------------------------------------ config

@dataclass
class HydraGNNConfig:
    """The parts of a HydraGNN ``config.json`` a PAINN energy model depends on."""
    hidden_dim: int
    num_conv_layers: int
    num_radial: int
    radius: float
    max_neighbours: int | None
    input_dim: int = 1
    activation: str = "relu"
    pooling: str = "mean"
    branches: list = field(default_factory=list)  # [(name, shared dims, head dims)]
    conditioning: str | None = None  # None, concat_node, film, fuse_pool
    graph_attr_dim: int = 2
    dtype: torch.dtype = torch.float32
    energy_head: int = 0  # which graph head is the energy

    @classmethod
    def from_json(cls, config: dict, where: str = "config.json") -> "HydraGNNConfig":
        try:
            network = config["NeuralNetwork"]
            arch = network["Architecture"]
        except (KeyError, TypeError):
            raise ValueError(f"{where}: not a HydraGNN config (no NeuralNetwork.Architecture)") \
                from None

        def need(key):
            if key not in arch or arch[key] is None:
                raise ValueError(f"{where}: NeuralNetwork.Architecture.{key} is missing")
            return arch[key]

        mpnn = str(arch.get("mpnn_type", arch.get("model_type", ""))).upper()
        if mpnn != "PAINN":
            raise ValueError(f"{where}: mpnn_type {arch.get('mpnn_type')!r}; pygfm imports "
                             "HydraGNN's PAINN models only")
        if arch.get("global_attn_engine"):
            raise ValueError(f"{where}: global_attn_engine {arch['global_attn_engine']!r} "
                             "(GPS / transformer layers) is not supported; only plain PAINN")
        if arch.get("edge_dim") or arch.get("edge_features"):
            raise ValueError(f"{where}: edge features are not supported (an interatomic "
                             "potential has none)")
        features = (network.get("Variables_of_interest") or {}).get("input_node_features")
        if features is not None and list(features) != [0]:
            raise ValueError(f"{where}: Variables_of_interest.input_node_features {features}; "
                             "pygfm feeds the atomic number as the only node feature ([0])")
        input_dim = int(arch.get("input_dim", 1))
        if input_dim != 1:
            raise ValueError(f"{where}: Architecture.input_dim {input_dim}; expected 1 (the "
                             "atomic number)")
        activation = str(arch.get("activation_function") or "relu").lower()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"{where}: activation_function {activation!r}; known: "
                             f"{', '.join(_ACTIVATIONS)}")
        pooling = str(arch.get("graph_pooling") or "mean").lower()
        if pooling not in _POOLING:
            raise ValueError(f"{where}: graph_pooling {pooling!r}; known: {', '.join(_POOLING)}")
        heads = arch.get("output_heads") or {}
        if "node" in heads:
            raise ValueError(f"{where}: node output heads are not supported yet; pygfm "
                             "imports graph (energy) heads")
        graph = heads.get("graph")
        if isinstance(graph, dict):  # legacy single-branch form
            graph = [{"type": "branch-0", "architecture": graph}]
        if not graph:
            raise ValueError(f"{where}: no graph output head (output_heads.graph)")
        branches = []
        for item in graph:
            a = item.get("architecture", item)
            shared = [int(a["dim_sharedlayers"])] * int(a["num_sharedlayers"])
            dims = a["dim_headlayers"]
            dims = [int(d) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
            dims = dims[:int(a["num_headlayers"])]
            branches.append((str(item.get("type", f"branch-{len(branches)}")), shared, dims))
        types = [str(t) for t in (network.get("Variables_of_interest") or {}).get("type", [])]
        names = [str(n) for n in (network.get("Variables_of_interest") or {}).get(
            "output_names", [])]
        graph_heads = [k for k, t in enumerate(types) if t == "graph"] or [0]
        if len(graph_heads) > 1:
            energy = [k for k in graph_heads if k < len(names) and "energy" in names[k].lower()]
            if len(energy) != 1:
                raise ValueError(f"{where}: {len(graph_heads)} graph heads and no single one "
                                 f"named energy (output_names {names})")
            energy_head = graph_heads.index(energy[0])
        else:
            energy_head = 0
        conditioning = None
        if arch.get("use_graph_attr_conditioning"):
            conditioning = str(arch.get("graph_attr_conditioning_mode") or "concat_node")
            if conditioning not in _CONDITIONING:
                raise ValueError(f"{where}: graph_attr_conditioning_mode {conditioning!r}; "
                                 f"known: {', '.join(_CONDITIONING)}")
        precision = str((network.get("Training") or {}).get("precision", "fp32")).lower()
        dtype = {"fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
                 "bf16": torch.bfloat16}.get(precision, torch.float32)
        cap = arch.get("max_neighbours")
        return cls(hidden_dim=int(need("hidden_dim")), num_conv_layers=int(need("num_conv_layers")),
                   num_radial=int(need("num_radial")), radius=float(need("radius")),
                   max_neighbours=None if cap is None else int(cap), input_dim=input_dim,
                   activation=activation, pooling="add" if pooling == "sum" else pooling,
                   branches=branches, conditioning=conditioning, dtype=dtype,
                   energy_head=energy_head)


# ------------------------------------------------------------------ modules

def _mlp(sizes: Sequence[int], activation: nn.Module, last_activation: bool) -> nn.Sequential:
    """Linear, act, Linear, act, ... as HydraGNN's Sequential (the same activation
    module at every odd index, so that state-dict indices match)."""
    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2 or last_activation:
            layers.append(activation)
    return nn.Sequential(*layers)


class _Message(nn.Module):
    def __init__(self, F_: int, R: int):
        super().__init__()
        self.scalar_message_mlp = nn.Sequential(nn.Linear(F_, F_), nn.SiLU(), nn.Linear(F_, 3 * F_))
        self.filter_layer = nn.Linear(R, 3 * F_)


class _Update(nn.Module):
    def __init__(self, F_: int, last: bool, vector_bias: bool):
        super().__init__()
        self.update_U = nn.Linear(F_, F_, bias=vector_bias)
        self.update_V = nn.Linear(F_, F_, bias=vector_bias)
        self.update_mlp = nn.Sequential(nn.Linear(2 * F_, F_), nn.SiLU(),
                                        nn.Linear(F_, (2 if last else 3) * F_))


class HydraPaiNNLayer(nn.Module):
    """One HydraGNN PAINN conv: message, update, output embedding (width F -> H)."""

    def __init__(self, F_: int, H: int, R: int, last: bool, vector_bias: bool):
        super().__init__()
        self.F, self.H, self.last = F_, H, last
        self.message = _Message(F_, R)
        self.update = _Update(F_, last, vector_bias)
        self.node_embed_out = nn.Sequential(nn.Linear(F_, H), nn.Tanh(), nn.Linear(H, H))
        self.vec_embed_out = None if last else nn.Linear(F_, H, bias=vector_bias)

    def forward(self, s, v, rbf_cut, direction, edges, graph, kernels: bool):
        F_ = self.F
        phi = self.message.scalar_message_mlp(s)                 # [N, 3F] (g_vv|g_ve|m_s)
        W = self.message.filter_layer(rbf_cut[0]) * rbf_cut[1]   # [E, 3F]
        if kernels:
            from ..ops import painn_message
            # pygfm's op takes (x_s | x_r | x_m) = HydraGNN's (m_s | g_ve | g_vv)
            order = [2, 1, 0]
            x = torch.cat([phi[:, k * F_:(k + 1) * F_] for k in order], dim=1)
            Wp = torch.cat([W[:, k * F_:(k + 1) * F_] for k in order], dim=1)
            ds, dv = painn_message(x, v, Wp, direction, graph)
        else:
            i, j = edges
            f = W * phi[j]
            g_vv, g_ve, m_s = f[:, :F_], f[:, F_:2 * F_], f[:, 2 * F_:]
            m_v = v[j] * g_vv[:, None, :] + g_ve[:, None, :] * direction[:, :, None]
            ds = torch.zeros_like(s).index_add_(0, i, m_s)
            dv = torch.zeros_like(v).index_add_(0, i, m_v)
        s, v = s + ds, v + dv
        U = self.update.update_U(v)                               # [N, 3, F]
        V = self.update.update_V(v)
        norm = torch.linalg.vector_norm(V, dim=1)                 # no epsilon, as HydraGNN
        a = self.update.update_mlp(torch.cat([norm, s], dim=1))
        inner = (U * V).sum(dim=1)
        if self.last:
            s = s + a[:, :F_] * inner + a[:, F_:]
        elif kernels:
            from ..ops import painn_update
            # pygfm's op: (a_ss | a_vv | a_sv), mix (V | W) with W the vector update
            a = torch.cat([a[:, 2 * F_:], a[:, :F_], a[:, F_:2 * F_]], dim=1)
            s, v = painn_update(s, v, a, torch.cat([V, U], dim=2))
        else:
            s = s + a[:, F_:2 * F_] * inner + a[:, 2 * F_:]
            v = v + a[:, None, :F_] * U
        s = self.node_embed_out(s)
        if self.vec_embed_out is not None:
            v = self.vec_embed_out(v)
        return s, v


class HydraGNNModel(nn.Module):
    """A HydraGNN PAINN energy model rebuilt in pygfm (see the module docstring).

    ``head_names`` are the branch names (``branch-0`` ...); :meth:`predict` gives
    per-branch energies and forces, or their blend by the branch-weighting MLP
    (``head="auto"``) when the log directory has one. ``energy_offsets`` [119]
    (eV per atom of each element, e.g. HydraGNN's
    ``energy_linear_regression_coeff``) are added to every branch's energy.
    """

    def __init__(self, config: HydraGNNConfig, *, vector_bias: bool = False):
        super().__init__()
        self.config = config
        act = _ACTIVATIONS[config.activation]()
        self.activation_function = act
        H, R = config.hidden_dim, config.num_radial
        widths = [config.input_dim] + [H] * (config.num_conv_layers - 1)
        self.graph_convs = nn.ModuleList(
            HydraPaiNNLayer(F_, H, R, k == config.num_conv_layers - 1, vector_bias)
            for k, F_ in enumerate(widths))
        self.head_names = [name for name, _, _ in config.branches]
        self.graph_shared = nn.ModuleDict({
            name: _mlp([H] + shared, act, last_activation=True)
            for name, shared, _ in config.branches})
        self.heads = nn.ModuleDict({
            name: _mlp([shared[-1] if shared else H] + dims + [1], act, last_activation=False)
            for name, shared, dims in config.branches})
        G = config.graph_attr_dim
        self.graph_concat_projector = nn.Linear(H + G, H) \
            if config.conditioning == "concat_node" else None
        self.graph_conditioner = nn.Sequential(nn.Linear(G, max(H, G)), act,
                                               nn.Linear(max(H, G), 2 * H)) \
            if config.conditioning == "film" else None
        self.graph_pool_projector = nn.Sequential(nn.Linear(H + G, H), act, nn.Linear(H, H)) \
            if config.conditioning == "fuse_pool" else None
        self.branch_weights: nn.Module | None = None
        self.register_buffer("energy_offsets", torch.zeros(119, dtype=torch.float64))
        # the elements each branch was trained on: unknown (a HydraGNN checkpoint
        # does not say), so nothing is flagged as unseen
        self.register_buffer("head_elements", torch.zeros(len(config.branches), 119,
                                                          dtype=torch.bool))
        self.register_buffer("composition_logp", torch.zeros(len(config.branches), 119,
                                                             dtype=torch.float64))
        self.loaded_from: dict = {}

    def _apply(self, fn, recurse=True):
        # the energy offsets stay float64 whatever the weights' dtype (hundreds of
        # eV whose sum must not lose the meV the heads predict)
        kept = {name: getattr(self, name) for name in ("energy_offsets", "composition_logp")}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            setattr(self, name, old.to(device=getattr(self, name).device))
        return self

    @property
    def cutoff(self) -> float:
        return self.config.radius

    @property
    def uses_graph_attr(self) -> bool:
        """Whether charge and spin (``atoms.info``) condition the model."""
        return self.config.conditioning is not None

    @property
    def neighbor_cap(self) -> int | None:
        """HydraGNN's ``max_neighbours``: the nearest this many pairs per atom are kept."""
        return self.config.max_neighbours

    # ---------------------------------------------------------- the forward
    def energies(self, positions, numbers, edge_index, shifts, batch, num_graphs: int,
                 graph_attr=None, *, kernels: bool = True):
        """Per-branch energies [B, K] (eV) of graphs given as HydraGNN's inputs:
        ``edge_index`` [2, E] (row 0 receives), ``shifts`` [E, 3] Cartesian (Å),
        ``batch`` [N] graph of each atom, ``graph_attr`` [B, 2] (charge, spin)."""
        from ..ops import message_graph

        i = edge_index[0]
        if i.numel() > 1 and not bool((i[1:] >= i[:-1]).all()):  # the ops take sorted edges
            order = torch.argsort(i, stable=True)
            edge_index, shifts = edge_index[:, order], shifts[order]
        vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts.to(positions.dtype)
        graph = message_graph(edge_index, positions.shape[0])
        return self.energy_of_vectors(vectors, graph, numbers, batch, num_graphs, graph_attr,
                                      kernels=kernels)

    def energy_of_vectors(self, vectors, graph, numbers, batch, num_graphs: int,
                          graph_attr=None, *, kernels: bool = True):
        """[B, K] branch energies from the edge vectors r_ij [E, 3] of ``graph`` (a
        receiver-sorted :class:`~pygfm.ops.MessageGraph`)."""
        dtype = vectors.dtype
        i, j = graph.receiver, graph.sender
        d = torch.linalg.vector_norm(vectors, dim=1)
        u = vectors / (d + _EPS)[:, None]
        direction = u / d[:, None]
        rc = self.config.radius
        n = torch.arange(1, self.config.num_radial + 1, dtype=dtype, device=vectors.device)
        rbf = torch.sin(n * math.pi * d[:, None] / rc) / d[:, None]
        fcut = torch.where(d < rc, 0.5 * (torch.cos(math.pi * d / rc) + 1.0),
                           torch.zeros_like(d))
        N = numbers.shape[0]
        s = numbers.to(dtype)[:, None]
        v = torch.zeros(N, 3, 1, dtype=dtype, device=vectors.device)
        attr = None
        if self.config.conditioning is not None:
            attr = (torch.zeros(num_graphs, self.config.graph_attr_dim, dtype=dtype,
                                device=vectors.device) if graph_attr is None
                    else graph_attr.to(dtype).reshape(num_graphs, -1))
        for layer in self.graph_convs:
            s, v = layer(s, v, (rbf, fcut[:, None]), direction, (i, j), graph, kernels)
            if self.graph_concat_projector is not None:
                s = self.graph_concat_projector(torch.cat([s, attr[batch]], dim=1))
            elif self.graph_conditioner is not None:
                scale, shift = self.graph_conditioner(attr).split(self.config.hidden_dim, dim=1)
                s = s * (1 + torch.tanh(scale)[batch]) + shift[batch]
            s = self.activation_function(s)
        pooled = self._pool(s, batch, num_graphs)
        if self.graph_pool_projector is not None:
            pooled = self.graph_pool_projector(torch.cat([pooled, attr], dim=1))
        energies = torch.stack([self.heads[name](self.graph_shared[name](pooled))[:, 0]
                                for name in self.head_names], dim=1)
        counts = torch.zeros(num_graphs, 119, dtype=torch.float64, device=vectors.device)
        counts.index_put_((batch, numbers.long()), torch.ones_like(batch, dtype=torch.float64),
                          accumulate=True)
        offsets = counts @ self.energy_offsets
        return energies + offsets[:, None].to(energies.dtype)

    def _pool(self, s, batch, num_graphs):
        H = s.shape[1]
        total = torch.zeros(num_graphs, H, dtype=s.dtype, device=s.device).index_add_(0, batch, s)
        if self.config.pooling == "add":
            return total
        if self.config.pooling == "mean":
            count = torch.bincount(batch, minlength=num_graphs).clamp(min=1).to(s.dtype)
            return total / count[:, None]
        out = torch.full((num_graphs, H), -torch.inf, dtype=s.dtype, device=s.device)
        return out.scatter_reduce(0, batch[:, None].expand_as(s), s, "amax", include_self=True)

    def branch_blend(self, numbers, batch, num_graphs):
        """[B, K] branch weights: softmax of the branch-weighting MLP of the element
        counts (Z = 1..118), as HydraGNN's SC26 fused inference."""
        if self.branch_weights is None:
            raise ValueError("this HydraGNN model has no branch-weighting MLP (mlp_weights/ "
                             "in its log directory); choose a head")
        counts = torch.zeros(num_graphs, 118, dtype=torch.float64, device=numbers.device)
        counts.index_put_((batch, numbers.long() - 1), torch.ones_like(batch, dtype=torch.float64),
                          accumulate=True)
        weight = next(self.branch_weights.parameters())
        return torch.softmax(self.branch_weights(counts.to(weight.dtype)), dim=-1)

    def head_index(self, head: str) -> int:
        try:
            return self.head_names.index(head)
        except ValueError:
            raise KeyError(f"no head {head!r}; this model has {self.head_names}") from None

    def head_weights(self, numbers, ptr, heads=None):
        """[B, H] blend weights of ``heads`` (names or indices; default all) for
        screening's ``--heads auto``: the branch-weighting MLP's softmax,
        renormalised over the heads chosen."""
        batch = torch.repeat_interleave(torch.arange(ptr.shape[0] - 1, device=ptr.device),
                                        ptr.diff())
        with torch.no_grad():  # weights, not a function of positions: no graph
            weights = self.branch_blend(numbers, batch, ptr.shape[0] - 1).double()
        if heads is not None:
            index = [h if isinstance(h, int) else self.head_index(h) for h in heads]
            weights = weights[:, index]
            weights = weights / weights.sum(1, keepdim=True)
        return weights

    def forward(self, batch, heads=None, *, forces: bool = True, stress: bool = False,
                neighbors=None, force_weights=None, graph_attr=None, kernels: bool = True,
                **_unused) -> dict:
        """Energies, forces and stress of an :class:`~pygfm.data.AtomicBatch`, as
        :meth:`pygfm.models.MultiHeadModel.forward`: ``heads`` a name (energy [B],
        forces [N, 3]), a list or None/"all" (energy [B, K], forces [K, N, 3]) or
        "auto" (the branch-weighting MLP's blend: [B], [N, 3]). ``graph_attr``
        [B, 2] (charge, spin multiplicity) feeds a conditioned model (default 0, 1).
        Stress is (1/V) dE/d(strain) of the same energy (HydraGNN computes none)."""
        from ..nn.conservative import blended, conservative

        if heads in (None, "all"):
            columns, single = list(range(len(self.head_names))), False
        elif heads == "auto":
            columns, single = None, True
        elif isinstance(heads, str):
            if heads not in self.head_names:
                raise KeyError(f"no head {heads!r}; this model has {self.head_names}")
            columns, single = [self.head_names.index(heads)], True
        else:
            unknown = [h for h in heads if h not in self.head_names]
            if unknown:
                raise KeyError(f"no head {unknown[0]!r}; this model has {self.head_names}")
            columns, single = [self.head_names.index(h) for h in heads], False
        owner = batch.structure_index()
        B = batch.num_structures
        if graph_attr is None and self.config.conditioning is not None:
            graph_attr = torch.tensor([[0.0, 1.0]], dtype=batch.positions.dtype,
                                      device=batch.positions.device).expand(B, 2)
        blend = None
        if heads == "auto":
            with torch.no_grad():
                blend = self.branch_blend(batch.numbers, owner, B)
        if neighbors is None and self.config.max_neighbours is not None:
            # capped: HydraGNN's convention (uncapped, the batch's own list serves)
            neighbors = hydragnn_neighbors(batch.positions.detach(), self.config.radius,
                                           batch.cell, batch.pbc, batch.ptr,
                                           self.config.max_neighbours)

        def energy_of(vectors, graph):
            e = self.energy_of_vectors(vectors, graph, batch.numbers, owner, B, graph_attr,
                                       kernels=kernels)
            if blend is not None:
                return (e * blend.to(e.dtype)).sum(1)
            e = e[:, columns]
            return e[:, 0] if single else e

        if force_weights is not None and not single:
            kept = {}
            result = conservative(batch, self.cutoff, blended(energy_of, force_weights, kept),
                                  forces=forces, stress=stress, neighbors=neighbors,
                                  create_graph=self.training)
            result.update(kept)
            return result
        return conservative(batch, self.cutoff, energy_of, forces=forces, stress=stress,
                            neighbors=neighbors, create_graph=self.training)

    # ---------------------------------------------------------- predict
    def predict(self, atoms_list, head: str | Sequence[str] | None = None, *,
                forces: bool = True, max_atoms: int = 4096, kernels: bool = True) -> dict:
        """Energies (and forces) of ``ase.Atoms``: ``head`` a branch name, a list of
        them, ``None`` (every branch) or ``"auto"`` (the branch-weighting MLP's blend).
        Returns ``{"energy": [B] or [B, K] numpy, "forces": list of [n, 3] (or
        [n, 3, K]), "heads": names}``; charge and spin from ``atoms.info`` (0 and 1
        by default, as HydraGNN's dataset scripts)."""
        from ..data import AtomicBatch

        names = self.head_names if head is None else ["auto"] if head == "auto" else \
            [head] if isinstance(head, str) else list(head)
        param = next(self.parameters())
        energies, all_forces = [], []
        for chunk in _chunks(atoms_list, max_atoms):
            batch = AtomicBatch.from_atoms(chunk, dtype=param.dtype, device=param.device)
            attr = torch.as_tensor([[float(a.info.get("charge", 0)),
                                     float(a.info.get("spin", 1))] for a in chunk],
                                   dtype=param.dtype, device=param.device)
            out = self(batch, head, forces=forces, graph_attr=attr, kernels=kernels)
            e = out["energy"].detach().double().cpu().numpy()
            energies.append(e)
            if forces:
                f = out["forces"].detach().double().cpu().numpy()
                ptr = batch.ptr.tolist()
                for a, b in zip(ptr[:-1], ptr[1:]):
                    all_forces.append(f[a:b] if f.ndim == 2 else np.moveaxis(f[:, a:b], 0, -1))
        single = isinstance(head, str)
        energy = np.concatenate(energies) if energies else \
            np.zeros((0,) if single else (0, len(names)))
        out = {"energy": energy, "heads": names}
        if forces:
            out["forces"] = all_forces
        return out


def hydragnn_neighbors(positions, radius, cell, pbc, ptr, cap=None):
    """The pairs HydraGNN's graphs hold, as a pygfm NeighborList: every pair within
    ``radius``; with a cap, each atom j keeps its ``cap`` nearest neighbours i
    (HydraGNN caps per edge_index[1], the atom whose features are sent, as its
    RadiusGraphPBC and PyG's radius_graph do), i.e. pygfm's per-receiver nearest
    list with every pair reversed."""
    from ..ops import NeighborList, neighbor_list

    pairs = neighbor_list(positions, radius, cell, pbc, ptr, max_neighbors=cap)
    if cap is None:
        return pairs
    edge_index, shifts = pairs.edge_index.flip(0), -pairs.shifts
    N = positions.shape[0]
    order = torch.argsort(edge_index[0] * max(N, 1) + edge_index[1], stable=True)
    edge_index, shifts = edge_index[:, order].contiguous(), shifts[order].contiguous()
    row_ptr = torch.zeros(N + 1, dtype=torch.int64, device=positions.device)
    row_ptr[1:] = torch.cumsum(torch.bincount(edge_index[0], minlength=N), 0)
    return NeighborList(edge_index, shifts, row_ptr)


def _chunks(atoms_list, max_atoms):
    chunk, count = [], 0
    for atoms in atoms_list:
        if chunk and count + len(atoms) > max_atoms:
            yield chunk
            chunk, count = [], 0
        chunk.append(atoms)
        count += len(atoms)
    if chunk:
        yield chunk


# ------------------------------------------------------------------ loading

_PREFIXES = ("module.", "model.")
# HydraGNN conv Sequential children: module_0 message, module_1 update,
# module_2 node_embed_out, module_3 vec_embed_out
_CONV = re.compile(r"^graph_convs\.(\d+)\.module_(\d)\.(.+)$")
_CONV_PART = {"0": "message", "1": "update", "2": "node_embed_out", "3": "vec_embed_out"}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _our_key(key: str, energy_head: int) -> str | None:
    """HydraGNN state-dict key (prefixes stripped) -> this module's key, or None
    (a tensor without a place here)."""
    match = _CONV.match(key)
    if match:
        layer, part, rest = match.groups()
        return f"graph_convs.{layer}.{_CONV_PART[part]}.{rest}" if part in _CONV_PART else None
    match = re.match(r"^heads_NN\.(\d+)\.(branch-\d+|[^.]+)\.(.+)$", key)
    if match:
        head, branch, rest = match.groups()
        return f"heads.{branch}.{rest}" if int(head) == energy_head else None
    if key.startswith(("graph_shared.", "graph_concat_projector.", "graph_conditioner.",
                       "graph_pool_projector.", "activation_function.")):
        return key
    return None


def _checkpoint_state(path: Path) -> dict:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a file that is not a checkpoint
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: "
                         f"{error})") from None
    state = content.get("model_state_dict", content) if isinstance(content, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no model_state_dict of tensors (keys: "
                         f"{sorted(content)[:10] if isinstance(content, dict) else type(content)})")
    return state


def _find_files(path: Path, checkpoint=None) -> tuple[Path, list[Path]]:
    path = Path(path)
    if path.is_file():
        raise ValueError(f"{path}: give the HydraGNN log directory (config.json + <name>.pk), "
                         "or load(config_json, checkpoint=...)")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such HydraGNN log directory")
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"{path}: no config.json (files: {sorted(p.name for p in path.iterdir())[:12]})")
    if checkpoint is not None:
        return config, [Path(checkpoint)]
    pks = sorted(path.glob("*.pk"))
    branches = [p for p in pks if re.search(r"_branch\d+\.pk$", p.name)]
    plain = [p for p in pks if p not in branches and "_epoch_" not in p.name]
    if plain:
        named = [p for p in plain if p.stem == path.name]
        if len(plain) > 1 and not named:
            raise ValueError(f"{path}: several checkpoints ({', '.join(p.name for p in plain)}); "
                             "pass checkpoint=")
        return config, [named[0] if named else plain[0]]
    if branches:
        return config, sorted(branches, key=lambda p: int(re.search(r"_branch(\d+)\.pk$",
                                                                     p.name).group(1)))
    raise ValueError(f"{path}: no <name>.pk checkpoint")


def load_branch_weights(path) -> nn.Sequential:
    """The branch-weighting MLP of HydraGNN's SC26 screening (``mlp_weights/*.pt``:
    ``{"mlp_state_dict": {"net.0.weight" ...}}``): Linear/ReLU layers, element
    counts (118) in, one logit per branch out."""
    content = torch.load(path, map_location="cpu", weights_only=True)
    state = content.get("mlp_state_dict", content) if isinstance(content, dict) else {}
    indices = sorted({int(m.group(1)) for k in state
                      if (m := re.match(r"^net\.(\d+)\.weight$", k))})
    if not indices:
        raise ValueError(f"{path}: no net.<k>.weight tensors of a branch-weighting MLP")
    layers, used = [], set()
    for position, index in enumerate(indices):
        weight, bias = state[f"net.{index}.weight"], state.get(f"net.{index}.bias")
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        used.update({f"net.{index}.weight", f"net.{index}.bias"})
        layers.append(linear)
        if position < len(indices) - 1:
            layers.append(nn.ReLU())
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{path}: tensors of no known layer: {unused[:10]}")
    if layers[0].in_features != 118:
        raise ValueError(f"{path}: the MLP takes {layers[0].in_features} inputs, not the 118 "
                         "element counts")
    return nn.Sequential(*layers)


def load(path, *, checkpoint=None, branch_weights=None, energy_offsets=None,
         dtype: torch.dtype | None = None) -> HydraGNNModel:
    """A HydraGNN PAINN log directory -> :class:`HydraGNNModel`, loaded strictly.

    ``checkpoint``: the ``.pk`` file (default ``<dir>/<dir name>.pk``, the only
    ``*.pk``, or the task-parallel ``*_branch<k>.pk`` files together);
    ``branch_weights``: a branch-weighting MLP file (default the newest
    ``mlp_weights/*.pt``, if any); ``energy_offsets``: per-element energies added
    to every branch (a length-118 sequence for Z = 1..118, HydraGNN's
    ``energy_linear_regression_coeff``, or {Z or symbol: eV}); ``dtype``: the
    parameters' dtype (default the config's ``Training.precision``).
    """
    config_path, pk_files = _find_files(Path(path), checkpoint)
    try:
        raw = json.loads(config_path.read_text())
    except ValueError as error:
        raise ValueError(f"{config_path}: not JSON ({error})") from None
    config = HydraGNNConfig.from_json(raw, str(config_path))
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for pk in pk_files:
        for key, tensor in _checkpoint_state(pk).items():
            stripped = _strip(key)
            if stripped in state and not torch.equal(state[stripped], tensor):
                raise ValueError(f"{pk}: {key} differs from the same tensor in {origin[stripped]}")
            state[stripped], origin[stripped] = tensor, pk.name
    vector_bias = any(k.endswith(("update_U.bias", "update_V.bias")) for k in state)
    if config.conditioning is not None and not any(
            k.startswith(("graph_concat_projector.", "graph_conditioner.",
                          "graph_pool_projector.")) for k in state):
        raise ValueError(f"{config_path}: graph_attr conditioning ({config.conditioning}) is on "
                         "but the checkpoint holds no conditioning weights (HydraGNN creates "
                         "them at the first forward; a task-parallel model never has them): "
                         "the trained model had none; set use_graph_attr_conditioning false")
    # in the final dtype before the weights are copied in (a float32 module would
    # round a float64 checkpoint)
    model = HydraGNNModel(config, vector_bias=vector_bias).to(dtype or config.dtype)
    ours = model.state_dict()
    buffers = {key: ours.pop(key) for key in ("energy_offsets", "head_elements",
                                              "composition_logp")}
    mapped, unused = {}, []
    for key, tensor in state.items():
        target = _our_key(key, config.energy_head)
        if target is None:
            unused.append(key)
            continue
        mapped[target] = tensor  # a shared PReLU weight is listed under every holder
    missing = sorted(set(ours) - set(mapped))
    unexpected = sorted(k for k in mapped if k not in ours)
    shapes = sorted(f"{k}: checkpoint {tuple(mapped[k].shape)}, model {tuple(ours[k].shape)}"
                    for k in mapped if k in ours and mapped[k].shape != ours[k].shape)
    other_heads = [k for k in unused if k.startswith("heads_NN.")]
    unused = [k for k in unused if k not in other_heads]
    if missing or unexpected or shapes or unused:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {missing[:12]}")
        if unexpected or unused:
            parts.append(f"checkpoint tensors with no place in a PAINN model of this config: "
                         f"{(unexpected + unused)[:12]}")
        if shapes:
            parts.append(f"shape mismatches: {shapes[:8]}")
        raise ValueError(f"{', '.join(p.name for p in pk_files)}: does not match "
                         f"{config_path} ({'; '.join(parts)})")
    model.load_state_dict({**mapped, **buffers}, strict=True)
    mlp_dir = Path(path) / "mlp_weights"
    if branch_weights is None and mlp_dir.is_dir():
        candidates = sorted(mlp_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime)
        branch_weights = candidates[-1] if candidates else None
    if branch_weights is not None:
        mlp = load_branch_weights(branch_weights)
        if mlp[-1].out_features != len(model.head_names):
            raise ValueError(f"{branch_weights}: {mlp[-1].out_features} branch weights for a "
                             f"model of {len(model.head_names)} branches")
        model.branch_weights = mlp.to(dtype or config.dtype)
    if energy_offsets is not None:
        set_energy_offsets(model, energy_offsets)
    model.loaded_from = {"config": str(config_path), "checkpoints": [str(p) for p in pk_files],
                         "tensors": len(mapped), "ignored_heads": other_heads,
                         "vector_biases": vector_bias,
                         "branch_weights": None if branch_weights is None else str(branch_weights)}
    return model.eval()


def set_energy_offsets(model: HydraGNNModel, offsets) -> None:
    """Per-element energies (eV) added to every branch: a sequence of 118 values
    (Z = 1..118, as HydraGNN's ``energy_linear_regression_coeff``) or a mapping of
    Z or symbol to eV."""
    from ase.data import atomic_numbers

    row = torch.zeros(119, dtype=torch.float64)
    if isinstance(offsets, dict):
        for key, value in offsets.items():
            z = atomic_numbers[key] if isinstance(key, str) else int(key)
            row[z] = float(value)
    else:
        values = np.asarray(offsets, dtype=np.float64).reshape(-1)
        if values.shape[0] != 118:
            raise ValueError(f"energy_offsets: {values.shape[0]} values; expected 118 (Z = 1..118)")
        row[1:] = torch.from_numpy(values)
    if not torch.isfinite(row).all():
        raise ValueError("energy_offsets: NaN or infinite values")
    model.energy_offsets.data = row.to(model.energy_offsets.device)

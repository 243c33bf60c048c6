"""MultiHeadModel: one PaiNN trunk, one energy head per dataset (fidelity).

A head maps the trunk's scalar features to atomic energies; its dataset's
normalization lives in the model, so every head predicts absolute energies in
its own dataset's convention:

    E_h = Σ_atoms (scale_h · head_h(s_i) + e_ref_h[Z_i])          (eV)

with e_ref_h the per-element reference energies fitted on dataset h and scale_h
its residual energy scale (``pygfm.data`` statistics). Training routes each
structure to its own dataset's head; the atoms are grouped by head, so every
head runs once over its own atoms (no masking of every head over every atom).
Inference can ask for one head, several or all ([B, H] energies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..data import AtomicBatch
from ..data.sample import MAX_ATOMIC_NUMBER
from ..nn.conservative import blended, conservative
from ..nn.mlp import MLP
from ..nn.painn import PaiNN
from ..ops import segment_sum

__all__ = ["MultiHeadModel"]


class MultiHeadModel(nn.Module):
    """PaiNN trunk + one MLP energy head per name in ``heads``.

    normalization: ``{head: {"reference_energies": {symbol: eV}, "energy_scale":
    eV/atom, "elements": [symbols]}}`` (the ``statistics.json`` of a pygfm dataset
    fits as is); heads without an entry start at zero references and scale 1.

    ``head_elements`` [H, 119] bool records the elements each head was trained on
    (its statistics' ``elements``, else its reference energies' symbols); a row
    of False means unknown. :meth:`predict` warns, per head, about structures
    holding elements their head never saw (:meth:`unseen_elements`).
    """

    def __init__(self, representation: PaiNN, heads: Sequence[str], *,
                 normalization: Mapping[str, Mapping] | None = None,
                 head_hidden: int | None = None, head_layers: int = 1,
                 activation: str = "silu", direct_forces: bool = False):
        super().__init__()
        heads = list(heads)
        if not heads:
            raise ValueError("heads: give at least one head name")
        if len(set(heads)) != len(heads):
            raise ValueError(f"heads: names must be unique, got {heads}")
        self.representation = representation
        self.head_names = heads
        if int(head_layers) < 1:
            raise ValueError(f"head_layers: at least one hidden layer, got {head_layers}")
        self.head_config = dict(head_hidden=head_hidden, head_layers=int(head_layers),
                                activation=activation, direct_forces=bool(direct_forces))
        features = representation.n_features
        hidden = head_hidden or max(features // 2, 1)
        # ModuleDict keys may not contain "."; heads are stored by position
        sizes = [features] + [hidden] * int(head_layers) + [1]
        self.heads = nn.ModuleList(MLP(sizes, activation) for _ in heads)
        # optional direct (non-conservative) force heads: F_i = scale * (v_i @ w), an
        # equivariant readout of the vector features; no backward pass needed
        self.force_heads = nn.ModuleList(nn.Linear(features, 1, bias=False) for _ in heads) \
            if direct_forces else None
        self.register_buffer("reference", torch.zeros(len(heads), MAX_ATOMIC_NUMBER + 1,
                                                      dtype=torch.float64))
        self.register_buffer("scale", torch.ones(len(heads), dtype=torch.float64))
        # composition model for blending heads (screening's --heads auto): log
        # p(element | head) [H, Z] and log prior [H], a naive-Bayes classifier of
        # which training set a composition resembles; zeros = uniform weights
        self.register_buffer("composition_logp", torch.zeros(len(heads), MAX_ATOMIC_NUMBER + 1,
                                                             dtype=torch.float64))
        self.register_buffer("composition_prior", torch.zeros(len(heads), dtype=torch.float64))
        self.register_buffer("head_elements", torch.zeros(len(heads), MAX_ATOMIC_NUMBER + 1,
                                                          dtype=torch.bool))
        for name, stats in (normalization or {}).items():
            self.set_normalization(name, stats)

    @property
    def cutoff(self) -> float:
        return self.representation.cutoff

    def head_index(self, head: str) -> int:
        try:
            return self.head_names.index(head)
        except ValueError:
            raise KeyError(f"no head {head!r}; this model has {self.head_names}") from None

    def set_normalization(self, head: str, statistics: Mapping) -> None:
        """Set a head's per-element reference energies (eV) and energy scale."""
        from ase.data import atomic_numbers

        index = self.head_index(head)
        references = statistics.get("reference_energies", {})
        row = torch.zeros(MAX_ATOMIC_NUMBER + 1, dtype=torch.float64)
        for symbol, value in references.items():
            if symbol not in atomic_numbers:
                raise ValueError(f"normalization of {head!r}: unknown element {symbol!r}")
            row[atomic_numbers[symbol]] = float(value)
        scale = statistics.get("energy_scale") or 1.0
        if not scale > 0:
            raise ValueError(f"normalization of {head!r}: energy_scale must be > 0, got {scale}")
        seen = torch.zeros(MAX_ATOMIC_NUMBER + 1, dtype=torch.bool)
        for symbol in list(statistics.get("elements") or []) + list(references):
            if symbol not in atomic_numbers:
                raise ValueError(f"normalization of {head!r}: unknown element {symbol!r}")
            seen[atomic_numbers[symbol]] = True
        with torch.no_grad():
            self.reference[index] = row.to(self.reference.device)
            self.scale[index] = float(scale)
            self.head_elements[index] = seen.to(self.head_elements.device)

    # buffers with one row per head (fine-tuning copies the old heads' rows)
    _PER_HEAD_BUFFERS = ("reference", "scale", "composition_logp", "composition_prior",
                         "head_elements")

    @staticmethod
    def upgrade_state(state: dict) -> dict:
        """A state dict of an older pygfm, completed: the composition model
        (uniform) and ``head_elements`` (the elements with a nonzero reference
        energy) where absent, and a PaiNN embedding of fewer than 119 rows
        padded with zeros (elements it never embedded get a zero vector: every
        head flags them as unseen)."""
        state = dict(state)
        heads = state["scale"].shape[0]
        width = MAX_ATOMIC_NUMBER + 1
        state.setdefault("composition_logp", torch.zeros(heads, width, dtype=torch.float64))
        state.setdefault("composition_prior", torch.zeros(heads, dtype=torch.float64))
        if "head_elements" not in state:
            state["head_elements"] = state["reference"] != 0
        key = "representation.embedding.weight"
        if key in state and state[key].shape[0] < width:
            table = state[key]
            state[key] = torch.cat([table, table.new_zeros(width - table.shape[0],
                                                           table.shape[1])])
        return state

    def unseen_elements(self, numbers: torch.Tensor, ptr: torch.Tensor,
                        heads: Sequence[int]) -> dict:
        """{(structure b, head k): [Z, ...]} for every structure holding elements
        head ``heads[k]`` was not trained on (heads whose elements are unknown are
        skipped). numbers [N], ptr [B + 1]."""
        from ..ops.reference import segment_ids

        known = self.head_elements[list(heads)].cpu()                  # [H, Z]
        numbers, ptr = numbers.cpu(), ptr.cpu()
        owner = segment_ids(ptr, numbers.shape[0])
        present = torch.zeros(ptr.numel() - 1, MAX_ATOMIC_NUMBER + 1, dtype=torch.bool)
        present[owner, numbers] = True                                   # [B, Z]
        missing = present[:, None, :] & ~known[None] & known.any(dim=1)[None, :, None]
        found = {}
        for b, k in torch.nonzero(missing.any(dim=2)).tolist():
            found[(b, k)] = torch.nonzero(missing[b, k]).reshape(-1).tolist()
        return found

    _FLOAT64_BUFFERS = ("reference", "scale", "composition_logp", "composition_prior")

    def fit_composition(self, compositions) -> None:
        """Fit the head-blending weights from the training sets' compositions:
        ``compositions[head] = element counts [Z+1]`` summed over that set. Laplace
        smoothing keeps unseen elements possible; the prior is uniform."""
        with torch.no_grad():
            for name, counts in compositions.items():
                index = self.head_index(name)
                counts = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
                if counts.numel() != MAX_ATOMIC_NUMBER + 1:
                    raise ValueError(f"fit_composition: counts of {name!r} must have "
                                     f"{MAX_ATOMIC_NUMBER + 1} entries")
                smoothed = counts + 0.5
                self.composition_logp[index] = (smoothed / smoothed.sum()).log().to(
                    self.composition_logp.device)
                self.composition_prior[index] = 0.0

    def head_weights(self, numbers: torch.Tensor, ptr: torch.Tensor,
                     heads: Sequence[int] | None = None, temperature: float = 1.0):
        """[B, H] weights of ``heads`` (default all) per structure: the softmax of
        each head's mean log-likelihood per atom of the structure's elements
        (divided by ``temperature``), the paper's composition-based blending."""
        index = torch.arange(len(self.heads), device=numbers.device) if heads is None \
            else torch.as_tensor(list(heads), device=numbers.device)
        logp = self.composition_logp[index][:, numbers]          # [H, N]
        per_structure = segment_sum(logp.t().contiguous(), ptr)  # [B, H]
        counts = (ptr[1:] - ptr[:-1]).clamp(min=1).to(per_structure.dtype)[:, None]
        score = per_structure / counts / temperature + self.composition_prior[index]
        return torch.softmax(score, dim=1)

    def _apply(self, fn, recurse=True):
        # normalization stays float64 whatever the weights' dtype (references are
        # hundreds of eV; their sum must not lose the meV the heads predict)
        kept = {name: getattr(self, name) for name in self._FLOAT64_BUFFERS}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = getattr(self, name)
            setattr(self, name, old.to(device=new.device))
        return self

    def _through_heads(self, modules, x: torch.Tensor, atom_head: torch.Tensor):
        """Row i of ``x`` through ``modules[atom_head[i]]``, times that head's
        scale, grouped by head (one call per head present): [N] or [N, 3]."""
        out = torch.zeros(x.shape[0], *x.shape[1:-1], dtype=self.scale.dtype, device=x.device)
        order = torch.argsort(atom_head, stable=True)
        counts = torch.bincount(atom_head, minlength=len(self.heads)).tolist()
        start = 0
        for index, count in enumerate(counts):
            if count:
                rows = order[start:start + count]
                value = modules[index](x[rows]).squeeze(-1).to(out.dtype)
                out = out.index_put((rows,), value * self.scale[index])
                start += count
        return out

    def _atomic_energies(self, s: torch.Tensor, numbers: torch.Tensor,
                         atom_head: torch.Tensor) -> torch.Tensor:
        """[N] eV: atom i through head atom_head[i]."""
        return self._through_heads(self.heads, s, atom_head) + self.reference[atom_head, numbers]

    def _all_atoms_energies(self, s: torch.Tensor, numbers: torch.Tensor,
                            selected: Sequence[int]) -> torch.Tensor:
        """[N, H] eV: every atom through every head of ``selected``. Two-layer heads
        run stacked (one GEMM for all first layers, one batched product for the
        second), with no per-head host syncs; other shapes run head by head."""
        heads = [self.heads[k] for k in selected]
        index = torch.as_tensor(list(selected), device=s.device)
        stackable = all(len(h.layers) == 2 and h.layers[1].out_features == 1 for h in heads)
        if stackable:
            first = torch.cat([h.layers[0].weight for h in heads])               # [H*K, F]
            bias = torch.cat([h.layers[0].bias for h in heads])
            hidden = heads[0].activation(torch.nn.functional.linear(s, first, bias))
            hidden = hidden.view(s.shape[0], len(heads), first.shape[0] // len(heads))
            second = torch.stack([h.layers[1].weight[0] for h in heads])         # [H, K]
            out = torch.einsum("nhk,hk->nh", hidden, second)
            if heads[0].layers[1].bias is not None:
                out = out + torch.cat([h.layers[1].bias for h in heads])
        else:
            out = torch.stack([h(s).squeeze(-1) for h in heads], dim=1)
        out = out.to(self.scale.dtype) * self.scale[index]
        return out + self.reference[index][:, numbers].t()

    def _direct_forces(self, v: torch.Tensor, atom_head: torch.Tensor) -> torch.Tensor:
        """[N, 3] eV/Å from the direct force heads, atom i through head atom_head[i]."""
        return self._through_heads(self.force_heads, v, atom_head)

    def forward(self, batch: AtomicBatch, heads=None, *, forces: bool = True,
                stress: bool = False, dataset_heads: Sequence[int] | None = None,
                neighbors=None, direct_forces: bool = False,
                force_weights: torch.Tensor | None = None) -> dict:
        """Energies (eV), forces (eV/Å) and stress (eV/Å³) by autograd.

        heads None: route every structure to its dataset's head, where
        ``batch.dataset`` indexes the heads (or ``dataset_heads[d]`` gives the head of
        dataset d): energy [B], forces [N, 3], stress [B, 3, 3].
        heads a name or a list of names (or "all"): every structure through those
        heads: energy [B, H], forces [H, N, 3], stress [H, B, 3, 3] (a single name
        gives [B], [N, 3], [B, 3, 3]).

        direct_forces: also return ``direct_forces`` ([N, 3], or [H, N, 3]) from
        the direct force heads (a model built with ``direct_forces=True``); with
        ``forces=False`` no backward pass is made at all (fast screening).

        force_weights: [B, H] with several heads: one backward pass for the forces
        (and stress) of the blend sum_h w[b, h] E[b, h] instead of one per head
        (screening: ``head_weights`` or uniform 1/H); energy stays [B, H].
        """
        if direct_forces and self.force_heads is None:
            raise ValueError("forward: this model has no direct force heads (build it with "
                             "direct_forces=True)")
        extra = {}
        if heads is None:
            if batch.dataset is None:
                raise ValueError("forward: the batch has no dataset index to route by; "
                                 "pass heads=...")
            mapping = torch.as_tensor(list(range(len(self.heads))) if dataset_heads is None
                                      else list(dataset_heads), device=batch.dataset.device)
            if int(batch.dataset.max()) >= len(mapping) or int(batch.dataset.min()) < 0:
                raise ValueError(f"forward: batch.dataset holds {int(batch.dataset.max())}; "
                                 f"only {len(mapping)} heads/datasets are known")
            structure_head = mapping[batch.dataset]
            selected = None
        else:
            names = self.head_names if heads == "all" else (
                [heads] if isinstance(heads, str) else list(heads))
            selected = [self.head_index(name) for name in names]
        single = isinstance(heads, str) and heads != "all"

        def energy_of(vectors, graph):
            s, v = self.representation(batch.numbers, vectors, graph)
            owner = batch.structure_index()
            if selected is None:
                atom_head = structure_head[owner]
                if direct_forces:
                    extra["direct_forces"] = self._direct_forces(v, atom_head)
                atomic = self._atomic_energies(s, batch.numbers, atom_head)
                return segment_sum(atomic, batch.ptr)
            direct = []
            energy = segment_sum(self._all_atoms_energies(s, batch.numbers, selected),
                                 batch.ptr)  # [B, H]
            if direct_forces:  # every atom through each selected head
                direct = [self.force_heads[k](v).squeeze(-1).to(self.scale.dtype)
                          * self.scale[k] for k in selected]
            if direct_forces:
                extra["direct_forces"] = direct[0] if single else torch.stack(direct)
            return energy[:, 0] if single else energy

        if force_weights is not None:
            if selected is None or single:
                raise ValueError("forward: force_weights needs several heads (heads=[...] "
                                 "or 'all')")
            result = conservative(batch, self.cutoff, blended(energy_of, force_weights, extra),
                                  forces=forces, stress=stress, neighbors=neighbors,
                                  create_graph=self.training)
        else:
            result = conservative(batch, self.cutoff, energy_of, forces=forces,
                                  stress=stress, neighbors=neighbors,
                                  create_graph=self.training)
        result.update(extra)
        return result

    @torch.no_grad()
    def predict(self, atoms_list: Sequence, head: str | Sequence[str] = None,
                max_atoms: int = 4096) -> dict:
        """Energies, forces and (fully periodic structures) stress of ASE Atoms
        through ``head`` (a name; default the first head) or several heads.

        One head: ``{"energy": [B], "forces": list of [n_i, 3], "stress": [B, 3, 3]}``
        (NaN stress where not periodic in 3D). Several: energy [B, H], forces a list
        of [H, n_i, 3], stress [B, H, 3, 3]. Units eV, eV/Å, eV/Å³.

        Two atoms closer than :data:`~pygfm.data.overlap.MIN_DISTANCE` raise
        :class:`~pygfm.data.overlap.OverlapError` naming the structure (its index
        in ``atoms_list``). Structures holding elements a head was not trained on
        give one ``UserWarning`` per call, naming each such head, its unseen
        elements and the structures.
        """
        import numpy as np

        from ..nn.energy import _chunks, _listed

        heads = self.head_names[0] if head is None else head
        several = not isinstance(heads, str)
        count = len(self.head_names) if heads == "all" else (len(heads) if several else 1)
        several = several or heads == "all"
        was_training = self.training
        self.eval()
        parameter = next(self.parameters())
        geometry = torch.promote_types(parameter.dtype, torch.float32)
        names = self.head_names if heads == "all" else ([heads] if not several else list(heads))
        selected = [self.head_index(name) for name in names]
        energies, forces, stresses, unseen = [], [], [], {}
        try:
            for start, chunk in _chunks(atoms_list, max_atoms, offsets=True):
                with _listed(start):
                    batch = AtomicBatch.from_atoms(chunk, dtype=geometry,
                                                   device=parameter.device)
                    periodic = batch.pbc.all(dim=1)
                    out = self.forward(batch, heads, forces=True, stress=bool(periodic.any()))
                for (b, k), elements in self.unseen_elements(batch.numbers, batch.ptr,
                                                             selected).items():
                    entry = unseen.setdefault(names[k], (set(), []))
                    entry[0].update(elements)
                    entry[1].append(start + b)
                energy = out["energy"].detach().double().cpu().numpy()
                energies.append(energy if several else energy[:, None])
                sizes = (batch.ptr[1:] - batch.ptr[:-1]).tolist()
                f = out["forces"].detach().double().cpu()
                f = f if several else f[None]
                forces.extend(part.numpy() if several else part[0].numpy()
                              for part in f.split(sizes, dim=1))
                stress = np.full((batch.num_structures, count, 3, 3), np.nan)
                if "stress" in out:
                    values = out["stress"].detach().double().cpu().numpy()
                    values = np.moveaxis(values, 0, 1) if several else values[:, None]
                    mask = periodic.cpu().numpy()
                    stress[mask] = values[mask]
                stresses.append(stress)
        finally:
            self.train(was_training)
        if unseen:
            _warn_unseen(unseen)
        energy = np.concatenate(energies) if energies else np.zeros((0, count))
        stress = np.concatenate(stresses) if stresses else np.zeros((0, count, 3, 3))
        if not several:
            energy, stress = energy[:, 0], stress[:, 0]
        return {"energy": energy, "forces": forces, "stress": stress}


def _warn_unseen(unseen: dict) -> None:
    """One warning for {head: (unseen Z set, structure indices)}."""
    import warnings

    from ase.data import chemical_symbols

    parts = []
    for head, (elements, structures) in unseen.items():
        shown = ", ".join(map(str, structures[:10])) + (" ..." if len(structures) > 10 else "")
        parts.append(f"head {head!r} was not trained on "
                     f"{[chemical_symbols[z] for z in sorted(elements)]} (structures {shown})")
    warnings.warn("MultiHeadModel.predict: " + "; ".join(parts) + "; its predictions for them "
                  "are not meaningful", UserWarning, stacklevel=4)

"""PyGFMCalculator: an ASE calculator for pygfm models (relaxations, MD, screening).

::

    from pygfm.calculator import PyGFMCalculator
    atoms.calc = PyGFMCalculator("runs/demo/best.pt", head="metals")
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

The model is a :class:`~pygfm.models.MultiHeadModel` (one head is chosen), an
:class:`~pygfm.nn.EnergyModel`, or a checkpoint path read with
:func:`pygfm.load`. Energies are in eV, forces in eV/Å and stress (only for
cells periodic along all three axes) in eV/Å³ as ASE's Voigt 6-vector
(xx, yy, zz, yz, xz, xy) with ASE's sign: (1/V) dE/d(strain), positive under
tension.

The neighbor list is built at ``cutoff + skin`` and reused from call to call
until an atom has moved more than ``skin / 2`` since it was built (then a pair
now inside the cutoff may be missing from it), or the cell, the periodicity,
the atom count or the atomic numbers change. Pairs beyond the cutoff add
exactly nothing to a PaiNN energy (its cosine cutoff and therefore every
filter is 0 there), so a reused list gives the same results as a fresh one.
"""

from __future__ import annotations

import os
import warnings
from typing import ClassVar

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .data import AtomicBatch
from .models import MultiHeadModel, load
from .nn import EnergyModel
from .data.overlap import OverlapError
from .ops import neighbor_list

__all__ = ["PyGFMCalculator"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _has_heads(model) -> bool:
    """A multi-head model (pygfm's MultiHeadModel, an imported HydraGNN model)."""
    return isinstance(model, MultiHeadModel) or hasattr(model, "head_names")


def _resolve_model(model_or_checkpoint):
    if isinstance(model_or_checkpoint, (MultiHeadModel, EnergyModel)) or \
            _has_heads(model_or_checkpoint):
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        path = os.fspath(model_or_checkpoint)
        try:
            # load() names the path for a missing, unreadable or foreign file
            return load(path)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as error:  # readable, but not a model this pygfm can rebuild
            raise ValueError(f"{path}: incompatible checkpoint ({type(error).__name__}: "
                             f"{str(error)[:300]})") from error
    raise TypeError("PyGFMCalculator: model_or_checkpoint must be a pygfm MultiHeadModel, "
                    "an EnergyModel or a checkpoint path, got "
                    f"{type(model_or_checkpoint).__name__}")


def _trained_elements(model, head: str | None) -> set:
    """Symbols ``head`` was trained on (its ``head_elements`` row), else the
    checkpoint's element list; empty when unknown (then nothing is warned)."""
    from ase.data import chemical_symbols

    if isinstance(model, MultiHeadModel):
        row = model.head_elements[model.head_index(head)].cpu()
        if bool(row.any()):
            return {chemical_symbols[z] for z in torch.nonzero(row).reshape(-1).tolist()}
    return set(getattr(model, "elements", None) or [])


def _resolve_dtype(dtype, parameter_dtype: torch.dtype) -> torch.dtype:
    if dtype is None:
        return torch.promote_types(parameter_dtype, torch.float32)
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "")
        if name not in _DTYPES:
            raise ValueError(f"PyGFMCalculator: dtype must be float32 or float64, got {dtype!r}")
        return _DTYPES[name]
    if dtype not in _DTYPES.values():
        raise ValueError(f"PyGFMCalculator: dtype must be float32 or float64, got {dtype!r}")
    return dtype


class PyGFMCalculator(Calculator):
    """ASE calculator for a pygfm model.

    Args:
        model_or_checkpoint: a :class:`~pygfm.models.MultiHeadModel`, an
            :class:`~pygfm.nn.EnergyModel`, or the path of a checkpoint
            (:func:`pygfm.load`). A model object is moved to ``device`` in
            place; it runs in eval mode during each calculation and is put
            back in its previous mode afterwards.
        head: the head of a multi-head model to predict with. Required when the
            model has more than one head; a single-head model uses its head.
            An :class:`~pygfm.nn.EnergyModel` has no heads (leave it None).
        device: where the model runs ("cpu", "cuda", a torch.device).
        dtype: float type of the geometry (positions, cell) fed to the model;
            default: the model's parameter dtype promoted to at least float32.
            The weights keep their dtype (cast the model to change it).
        skin: extra neighbor-list radius (Å, >= 0) that lets the list be
            reused until some atom has moved more than ``skin / 2``.

    Attributes:
        neighbor_list_builds: how many neighbor lists have been built.
        head: the head in use (None for an EnergyModel).
        cutoff: the model's cutoff (Å).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model_or_checkpoint, head: str | None = None, device="cpu",
                 dtype=None, skin: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        model = _resolve_model(model_or_checkpoint)
        if _has_heads(model):
            names = list(model.head_names)
            if head is None:
                if len(names) != 1:
                    raise ValueError(f"PyGFMCalculator: this model has {len(names)} heads "
                                     f"{names}; choose one with head=...")
                head = names[0]
            elif not isinstance(head, str) or head not in names:
                raise ValueError(f"PyGFMCalculator: no head {head!r}; this model has "
                                 f"{names}")
        elif head is not None:
            raise ValueError(f"PyGFMCalculator: an EnergyModel has no heads; got head={head!r} "
                             "(leave it None)")
        skin = float(skin)
        if not (np.isfinite(skin) and skin >= 0):
            raise ValueError(f"PyGFMCalculator: skin must be a finite number >= 0 (Å), "
                             f"got {skin}")
        self.dtype = _resolve_dtype(dtype, next(model.parameters()).dtype)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.head = head
        self.skin = skin
        self.cutoff = float(model.cutoff)
        self.neighbor_list_builds = 0
        self._neighbors = None        # NeighborList at cutoff + skin
        self._built_for = None        # (positions, cell, pbc, numbers) it was built for
        self._elements = _trained_elements(model, head)
        self._warned = set()          # compositions (element sets) already warned about

    # ----------------------------------------------------------- neighbor lists
    def _needs_rebuild(self, atoms) -> bool:
        if self._built_for is None:
            return True
        positions, cell, pbc, numbers = self._built_for
        if len(atoms) != len(numbers) or not np.array_equal(atoms.numbers, numbers) \
                or not np.array_equal(atoms.pbc, pbc) \
                or not np.array_equal(atoms.cell.array, cell):
            return True
        moved = np.linalg.norm(atoms.positions - positions, axis=1).max()
        return not moved <= 0.5 * self.skin  # NaN moves rebuild (and fail there)

    def _neighbor_list(self, atoms, batch: AtomicBatch):
        if self._needs_rebuild(atoms):
            self._neighbors = None
            self._built_for = None
            self._neighbors = neighbor_list(batch.positions, self.cutoff + self.skin,
                                            batch.cell, batch.pbc, batch.ptr)
            self._built_for = (atoms.positions.copy(), atoms.cell.array.copy(),
                               atoms.pbc.copy(), atoms.numbers.copy())
            self.neighbor_list_builds += 1
        return self._neighbors

    def _check_elements(self, atoms) -> None:
        """Warn once per new composition (element set) holding elements the head
        was not trained on (an MD run warns once, not every step)."""
        composition = frozenset(atoms.get_chemical_symbols())
        if not self._elements or composition in self._warned:
            return
        self._warned.add(composition)
        unknown = composition - self._elements
        if unknown:
            which = "the model" if self.head is None else f"the head {self.head!r}"
            warnings.warn(f"PyGFMCalculator: {which} was not trained on {sorted(unknown)} "
                          f"(it knows {sorted(self._elements)}); its predictions for "
                          f"{atoms.get_chemical_formula()} are not meaningful", stacklevel=3)

    # ----------------------------------------------------------- calculation
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.all())
        if len(atoms) == 0:  # nothing to evaluate (the models need at least one atom)
            self.results = {"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((0, 3))}
            if periodic:
                self.results["stress"] = np.zeros(6)
            return
        self._check_elements(atoms)
        was_training = self.model.training
        self.model.eval()
        try:
            batch = AtomicBatch.from_atoms([atoms], dtype=self.dtype, device=self.device)
            # a model that caps neighbours (HydraGNN's max_neighbours) builds its own
            # list: the skin's extra pairs would change which neighbours are kept
            neighbors = None if getattr(self.model, "neighbor_cap", None) else \
                self._neighbor_list(atoms, batch)
            extra = {}
            if getattr(self.model, "uses_graph_attr", False):  # charge and spin condition it
                extra["graph_attr"] = torch.tensor(
                    [[float(atoms.info.get("charge", 0)), float(atoms.info.get("spin", 1))]],
                    dtype=self.dtype, device=self.device)
            if _has_heads(self.model):
                out = self.model(batch, self.head, forces=True, stress=periodic,
                                 neighbors=neighbors, **extra)
            else:
                out = self.model(batch, forces=True, stress=periodic, neighbors=neighbors)
        except OverlapError as error:  # "structure 0" says nothing here
            raise error.renamed(where=f"PyGFMCalculator: {atoms.get_chemical_formula()}") \
                from None
        finally:
            self.model.train(was_training)
        energy = float(out["energy"].detach().double().cpu()[0])
        if not (np.isfinite(energy) and bool(torch.isfinite(out["forces"]).all())):
            raise ValueError("PyGFMCalculator: the model returned a non-finite energy or forces")
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().double().cpu().numpy().reshape(len(atoms), 3),
        }
        if periodic:
            stress = out["stress"].detach().double().cpu().numpy()[0]
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)

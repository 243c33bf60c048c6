"""Checkpoints of multi-head models: weights plus everything needed to use them.

A checkpoint is one ``torch.save`` file holding: format name and version, the
pygfm version that wrote it, the trunk's constructor arguments, head names and
head settings, per-head normalization (in the weights: ``reference``, ``scale``),
the element symbols the model was trained on, units, the resolved training
config, and any extra state (optimizer, scheduler, sampler) the caller adds.
Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

from .multihead import MultiHeadModel

__all__ = ["save_checkpoint", "load", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "pygfm-multihead-checkpoint"
CHECKPOINT_VERSION = 1
UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3", "positions": "Å"}


def save_checkpoint(model: MultiHeadModel, path, *, elements=None, config: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write ``model`` (and ``extra`` state) to ``path`` atomically; returns the path."""
    from .. import __version__

    path = Path(path)
    content = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
        "pygfm_version": __version__,
        "representation": dict(model.representation.config),
        "heads": list(model.head_names), "head_config": dict(model.head_config),
        "elements": list(elements or []), "units": UNITS,
        "config": config or {}, "state_dict": model.state_dict(),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "extra": extra or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(content, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """The raw checkpoint dict, checked; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many kinds on a damaged file
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: "
                         f"{str(error)[:200]})") from error
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a pygfm multi-head checkpoint")
    if content.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {content.get('format_version')}; "
                         f"this pygfm reads version {CHECKPOINT_VERSION}")
    return content


def load(path, map_location="cpu") -> MultiHeadModel:
    """A ready-to-use model from a checkpoint (in eval mode, the saved dtype)."""
    from ..nn import PaiNN

    content = load_checkpoint(path, map_location)
    model = MultiHeadModel(PaiNN(**content["representation"]), content["heads"],
                           **content["head_config"])
    model = model.to(getattr(torch, content["dtype"]))
    state = dict(content["state_dict"])
    for name in ("composition_logp", "composition_prior"):  # absent before they existed
        state.setdefault(name, getattr(model, name))
    model.load_state_dict(state)
    model.elements = list(content["elements"])
    model.checkpoint_config = content["config"]
    return model.eval()

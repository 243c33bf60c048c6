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

from pathlib import Path

import torch

from .._files import atomic_output
from .multihead import MultiHeadModel

__all__ = ["save_checkpoint", "load", "load_checkpoint", "representation_config",
           "CHECKPOINT_FORMAT"]

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
    # through a Python file object: a full disk then raises OSError (ENOSPC), which
    # atomic_output turns into "cannot write PATH: No space left on device"
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        torch.save(content, handle)
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


def representation_config(content: dict) -> dict:
    """The trunk's constructor arguments of a checkpoint; older ones embedded
    Z < 100 and get every element (see :meth:`MultiHeadModel.upgrade_state`)."""
    from ..data.sample import MAX_ATOMIC_NUMBER

    config = dict(content["representation"])
    config["max_z"] = max(int(config.get("max_z", 100)), MAX_ATOMIC_NUMBER + 1)
    return config


HYDRAGNN_PREFIX = "hydragnn:"


def load(path, map_location="cpu") -> MultiHeadModel:
    """A ready-to-use model from a checkpoint (in eval mode, the saved dtype).

    ``hydragnn:DIR`` (or a directory holding a HydraGNN ``config.json``) loads a
    HydraGNN PAINN log directory instead (:func:`pygfm.interop.hydragnn.load`)."""
    from ..nn import PaiNN

    text = os.fspath(path)
    if text.startswith(HYDRAGNN_PREFIX) or (os.path.isdir(text) and os.path.isfile(
            os.path.join(text, "config.json"))):
        from ..interop.hydragnn import load as load_hydragnn
        return load_hydragnn(text[len(HYDRAGNN_PREFIX):] if text.startswith(HYDRAGNN_PREFIX)
                             else text).to(map_location)
    content = load_checkpoint(path, map_location)
    model = MultiHeadModel(PaiNN(**representation_config(content)), content["heads"],
                           **content["head_config"])
    model = model.to(getattr(torch, content["dtype"]))
    # buffers absent before they existed, a 100-row embedding padded to 119
    model.load_state_dict(MultiHeadModel.upgrade_state(content["state_dict"]))
    model.elements = list(content["elements"])
    model.checkpoint_config = content["config"]
    return model.eval()

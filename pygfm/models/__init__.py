"""Foundation models: a shared trunk with one head per dataset."""

from .checkpoint import load, load_checkpoint, save_checkpoint
from .multihead import MultiHeadModel

__all__ = ["MultiHeadModel", "load", "load_checkpoint", "save_checkpoint"]

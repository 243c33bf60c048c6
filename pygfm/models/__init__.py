"""Foundation models: a shared trunk with one head per dataset."""

from .multihead import MultiHeadModel

__all__ = ["MultiHeadModel"]

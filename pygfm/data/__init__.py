"""Atomic structures as flat tensors (:class:`AtomicBatch`) and their readers."""

from .batch import AtomicBatch

__all__ = ["AtomicBatch"]

"""pygfm ops: checked, differentiable front ends of the kernels in ``torch.ops.pygfm``.

Use them inside your own models::

    import pygfm
    energy = pygfm.ops.segment_sum(atomic_energy, ptr)   # per-structure sums

Every op has a plain-PyTorch definition in :mod:`pygfm.ops.reference`.
"""

from .segment import (
    MAX_MIN_EMPTY_FILL,
    scatter_max,
    scatter_mean,
    scatter_min,
    scatter_sum,
    segment_max,
    segment_mean,
    segment_min,
    segment_sum,
)
from .neighbors import NeighborList, edge_vectors, neighbor_list
from .painn import MessageGraph, message_graph, painn_message, painn_update
from . import reference

__all__ = [
    "MAX_MIN_EMPTY_FILL",
    "MessageGraph",
    "NeighborList",
    "edge_vectors",
    "message_graph",
    "neighbor_list",
    "painn_message",
    "painn_update",
    "reference",
    "scatter_max",
    "scatter_mean",
    "scatter_min",
    "scatter_sum",
    "segment_max",
    "segment_mean",
    "segment_min",
    "segment_sum",
]

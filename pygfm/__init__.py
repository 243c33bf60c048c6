"""pygfm: fast kernels and tools for multi-task atomistic graph foundation models.

``import pygfm`` loads the compiled ops into ``torch.ops.pygfm`` and exposes
their checked, differentiable Python front ends in :mod:`pygfm.ops`.
"""

from ._extension import build_info
from . import ops

__version__ = build_info()["version"]

__all__ = ["build_info", "ops", "__version__"]

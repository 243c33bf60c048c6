"""pygfm: fast kernels and tools for multi-task atomistic graph foundation models.

``import pygfm`` loads the compiled ops into ``torch.ops.pygfm`` and exposes
their checked, differentiable Python front ends in :mod:`pygfm.ops`; models
are in :mod:`pygfm.nn` and :mod:`pygfm.models` (``pygfm.load(checkpoint)``),
structures and datasets in :mod:`pygfm.data`. Importing pygfm changes nothing
process-wide; the few process settings are explicit opt-ins in :mod:`pygfm.settings`.
"""

from ._extension import build_info, cpu_allocator_active, set_cpu_allocator
from . import settings
from . import ops
from . import data, nn
from . import models
from .models import load

__version__ = build_info()["version"]

__all__ = ["build_info", "cpu_allocator_active", "data", "load", "models", "nn", "ops",
           "set_cpu_allocator", "settings", "__version__"]

"""Loads the compiled extension (pygfm._C) after checking it matches the running torch."""

from __future__ import annotations

import torch


def _load():
    try:
        from . import _build_config
    except ImportError as error:
        raise ImportError(
            "pygfm's compiled extension is not installed next to this package "
            f"({__file__}). Build it with `pip install --no-build-isolation .` after "
            "installing torch; if pygfm is installed, you may be importing the source "
            "tree instead: run Python from another directory."
        ) from error
    if _build_config.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"pygfm was compiled against torch {_build_config.TORCH_VERSION} but torch "
            f"{torch.__version__} is running; a torch extension only works with the torch "
            "it was built for. Rebuild it: "
            "`pip install --no-build-isolation --no-deps --force-reinstall .`"
        )
    from . import _C

    return _C


_C = _load()


def build_info() -> dict:
    """How the extension was built.

    Returns a dict with ``version``, ``torch_version`` (the torch compiled
    against), ``backends`` (a list, e.g. ``["cpu", "cuda"]``), ``gpu_archs``
    (e.g. ``["80", "90"]`` or ``["gfx90a"]``; empty for CPU-only builds),
    ``compiler`` and ``build_type``.
    """
    info = dict(_C.build_info())
    info["backends"] = [b for b in info["backends"].split(",") if b]
    info["gpu_archs"] = [a for a in info["gpu_archs"].split(",") if a]
    return info


def set_cpu_allocator(enable: bool) -> bool:
    """Serve torch CPU tensors of 4 MiB or more from pygfm's block cache (huge
    pages, blocks reused instead of returned to the system) or from torch's
    allocator; returns the previous setting.

    Off unless asked for: it affects every torch CPU tensor in the process, so
    importing pygfm never turns it on. The same as
    ``pygfm.settings.set("cpu_allocator", enable)``; ``PYGFM_CPU_ALLOCATOR=1``
    turns it on at import. See :mod:`pygfm.settings`.
    """
    return bool(_C.set_cpu_allocator(bool(enable)))


def cpu_allocator_active() -> bool:
    """Whether torch's large CPU tensors currently come from pygfm's block cache."""
    return bool(_C.cpu_allocator_active())

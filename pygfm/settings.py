"""pygfm's run-time settings: one table, one API.

Every knob of the compiled extension lives here; nothing in ``csrc/`` reads the
environment. Each setting has a ``PYGFM_*`` environment variable, read once when
pygfm is imported (setting the variable is the user's explicit choice), and can
be read and changed at any time::

    import pygfm
    pygfm.settings.get("cpu_allocator")            # False
    with pygfm.settings.override(cpu_allocator=True):
        ...                                         # large torch CPU tensors from the cache
    print(pygfm.settings.describe())                # the table below, with current values

Only ``cpu_allocator`` reaches beyond pygfm's own kernels (it serves every torch
CPU tensor of the process), and it is off unless asked for: importing pygfm
leaves torch as it was.

=================  ======================  =======  ==========================================
setting            environment             default  effect
=================  ======================  =======  ==========================================
cpu_allocator      PYGFM_CPU_ALLOCATOR     0        torch CPU tensors of >= 4 MiB from pygfm's
                                                    block cache (process-wide; opt-in)
huge_pages         PYGFM_HUGE_PAGES        1        pygfm's large CPU outputs in 2 MiB-aligned,
                                                    MADV_HUGEPAGE blocks
cpu_cache_mb       PYGFM_CPU_CACHE_MB      2048     freed large blocks kept for reuse (MiB;
                                                    0: none kept)
cpu_stream         PYGFM_CPU_STREAM        1        streaming stores in write-bound CPU
                                                    kernels (outputs over 8 MB)
neighbor_memory_mb PYGFM_NEIGHBOR_MEMORY_MB 0       MiB a CPU neighbor search may use (0:
                                                    what the system reports available)
=================  ======================  =======  ==========================================
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

from ._extension import _C

__all__ = ["SETTINGS", "describe", "get", "override", "set"]


@dataclass(frozen=True)
class Setting:
    """One row of the table: its name, environment variable, type, default and effect."""
    name: str
    env: str
    kind: type
    default: object
    effect: str
    process_wide: bool = False


SETTINGS = {s.name: s for s in (
    Setting("cpu_allocator", "PYGFM_CPU_ALLOCATOR", bool, False,
            "torch CPU tensors of 4 MiB or more come from pygfm's block cache (huge pages, "
            "blocks reused instead of returned to the system)", process_wide=True),
    Setting("huge_pages", "PYGFM_HUGE_PAGES", bool, True,
            "pygfm's large CPU outputs and scratch in 2 MiB-aligned MADV_HUGEPAGE blocks; "
            "off also turns the block cache off for new tensors"),
    Setting("cpu_cache_mb", "PYGFM_CPU_CACHE_MB", int, 2048,
            "MiB of freed large blocks kept for reuse (0: none)"),
    Setting("cpu_stream", "PYGFM_CPU_STREAM", bool, True,
            "streaming (cache-bypassing) stores in write-bound CPU kernels"),
    Setting("neighbor_memory_mb", "PYGFM_NEIGHBOR_MEMORY_MB", int, 0,
            "MiB a CPU neighbor search may use before it refuses (0: the memory the system "
            "reports available)"),
)}

# settings kept in bytes on the C++ side
_BYTES = {"cpu_cache_mb": "cpu_cache_bytes", "neighbor_memory_mb": "neighbor_memory_bytes"}

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _lookup(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"pygfm has no setting {name!r}; the settings are "
                       f"{', '.join(SETTINGS)}") from None


def _checked(setting: Setting, value, source: str):
    if setting.kind is bool:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
        elif isinstance(value, (bool, int)) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{source}: expected a boolean (1/0, true/false, on/off), got {value!r}")
    try:
        number = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"{source}: expected a whole number >= 0, got {value!r}")
    return number


def get(name: str):
    """The current value of setting ``name`` (see :data:`SETTINGS`)."""
    setting = _lookup(name)
    if name == "cpu_allocator":
        return bool(_C.cpu_allocator_active())
    if name in _BYTES:
        return int(_C.get_setting(_BYTES[name])) >> 20
    return setting.kind(_C.get_setting(name))


def set(name: str, value):  # noqa: A001 - the natural name, used as pygfm.settings.set
    """Change setting ``name`` now; returns the previous value.

    Raises ``KeyError`` for an unknown name and ``ValueError`` for a value of
    the wrong kind. Blocks already handed out keep working whatever the
    settings become (each carries the deleter that made it)."""
    setting = _lookup(name)
    value = _checked(setting, value, f"setting {name}")
    previous = get(name)
    if name == "cpu_allocator":
        _C.set_cpu_allocator(value)
    elif name in _BYTES:
        _C.set_setting(_BYTES[name], value << 20)
    else:
        _C.set_setting(name, int(value))
    return previous


@contextlib.contextmanager
def override(**values) -> Iterator[None]:
    """Set the given settings inside a ``with`` block and restore them after it."""
    for name in values:
        _lookup(name)
    previous = {}
    try:
        for name, value in values.items():
            previous[name] = set(name, value)
        yield
    finally:
        for name, value in reversed(list(previous.items())):
            set(name, value)


def describe() -> str:
    """The settings as a Markdown table with their current values."""
    rows = ["| setting | environment | default | now | effect |", "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS.values():
        scope = " (process-wide)" if s.process_wide else ""
        rows.append(f"| `{s.name}` | `{s.env}` | {s.default} | {get(s.name)} | {s.effect}{scope} |")
    return "\n".join(rows)


def _from_environment() -> None:
    """Apply the PYGFM_* variables the user set (called once, at import)."""
    for setting in SETTINGS.values():
        text = os.environ.get(setting.env)
        if text is None or text == "":
            continue
        value = _checked(setting, text, f"environment variable {setting.env}")
        if value != setting.default:
            set(setting.name, value)


_from_environment()

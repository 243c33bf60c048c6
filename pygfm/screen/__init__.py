"""High-throughput screening with trained multi-head models (``pygfm-screen``):
inputs and generators (:mod:`.inputs`), the streaming, sharded, resumable
driver (:mod:`.driver`)."""

from .driver import ScreenError, ScreenSettings, screen
from .inputs import InputError, open_input

__all__ = ["ScreenError", "ScreenSettings", "screen", "InputError", "open_input"]

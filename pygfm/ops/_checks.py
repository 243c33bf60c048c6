"""Argument checks for the public op front ends.

Each check raises TypeError (wrong type or dtype) or ValueError (wrong shape,
value or device) with a message that names the op, the argument, what it got
and what was expected. Checks that read tensor values (and so synchronize a
GPU) are skipped while torch.compile traces, where values are unknown.
"""

from __future__ import annotations

import torch

FLOATING = (torch.float64, torch.float32, torch.bfloat16)


def tracing() -> bool:
    return torch.compiler.is_compiling()


def check_floating(op: str, name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOATING:
        raise TypeError(
            f"{op}: {name} has dtype {value.dtype}; supported are float64, float32 and bfloat16"
        )
    if value.dim() < 1:
        raise ValueError(f"{op}: {name} must have at least one dimension (rows), got a scalar")


def as_index(op: str, name: str, value, device: torch.device) -> torch.Tensor:
    """A 1-D integer tensor on `device`, returned as int64."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{op}: {name} must be an integer tensor, got dtype {value.dtype}")
    if value.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D, got shape {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{op}: {name} is on {value.device} but src is on {device}")
    return value.long()


def check_ptr(op: str, ptr: torch.Tensor, num_rows: int) -> None:
    """ptr[0] == 0, non-decreasing, ptr[-1] == num_rows (one device sync)."""
    if ptr.numel() < 1:
        raise ValueError(f"{op}: ptr must have at least one entry (S + 1 for S segments)")
    if tracing():
        return
    first, last, drops = torch.stack(
        [ptr[0], ptr[-1], (ptr.diff() < 0).sum()]
    ).tolist()
    if first != 0:
        raise ValueError(f"{op}: ptr[0] must be 0, got {first}")
    if drops:
        where = int(torch.nonzero(ptr.diff() < 0)[0, 0]) + 1
        raise ValueError(
            f"{op}: ptr must be non-decreasing, but ptr[{where}] = {int(ptr[where])} "
            f"< ptr[{where - 1}] = {int(ptr[where - 1])}"
        )
    if last != num_rows:
        raise ValueError(
            f"{op}: ptr[-1] = {last} must equal the number of rows of src ({num_rows})"
        )


def check_index_values(op: str, index: torch.Tensor, dim_size: int) -> None:
    if tracing() or index.numel() == 0:
        return
    low, high = torch.aminmax(index)
    low, high = int(low), int(high)
    if low < 0:
        raise ValueError(f"{op}: index holds a negative value ({low})")
    if high >= dim_size:
        raise ValueError(f"{op}: index holds {high}, outside [0, dim_size = {dim_size})")

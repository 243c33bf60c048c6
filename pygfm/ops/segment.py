"""Segmented (CSR) and scattered reductions: autograd, fake kernels, checked front ends.

The kernels are ``torch.ops.pygfm.*`` (csrc/ops/segment_reduce.cpp). Each
backward is itself a registered op with a registered backward, so gradients of
gradients (force training) work:

=================  ======================  =========================
op                 backward                backward of the backward
=================  ======================  =========================
segment_sum        segment_broadcast       segment_sum
segment_mean       segment_broadcast / n   segment_sum / n
segment_max/min    arg_scatter             arg_gather
scatter_sum        index_select (torch)    index_add (torch)
scatter_max/min    arg_scatter             arg_gather
=================  ======================  =========================

The public functions check their arguments (see ``_checks``) and then call the
kernel; model code that has already validated its graph may call
``torch.ops.pygfm.*`` directly. On a device for which no kernel was compiled
they fall back to :mod:`pygfm.ops.reference`.
"""

from __future__ import annotations

import torch

from .. import _extension
from . import reference
from ._checks import as_index, check_floating, check_index_values, check_ptr

_ops = torch.ops.pygfm

__all__ = [
    "segment_sum",
    "segment_mean",
    "segment_max",
    "segment_min",
    "scatter_sum",
    "scatter_mean",
    "scatter_max",
    "scatter_min",
    "MAX_MIN_EMPTY_FILL",
]

#: Value written by segment/scatter max and min where a segment has no rows
#: (its arg is -1). 0 keeps downstream arithmetic finite, as torch_scatter does.
MAX_MIN_EMPTY_FILL = 0.0


def _with_rows(like: torch.Tensor, rows) -> tuple:
    return (rows, *like.shape[1:])


# ----------------------------------------------------------------- fake kernels
@torch.library.register_fake("pygfm::segment_sum")
def _(src, ptr):
    return src.new_empty(_with_rows(src, ptr.shape[0] - 1))


@torch.library.register_fake("pygfm::segment_mean")
def _(src, ptr):
    return src.new_empty(_with_rows(src, ptr.shape[0] - 1))


def _fake_extreme(src, rows):
    shape = _with_rows(src, rows)
    return src.new_empty(shape), src.new_empty(shape, dtype=torch.long)


@torch.library.register_fake("pygfm::segment_max")
def _(src, ptr):
    return _fake_extreme(src, ptr.shape[0] - 1)


@torch.library.register_fake("pygfm::segment_min")
def _(src, ptr):
    return _fake_extreme(src, ptr.shape[0] - 1)


@torch.library.register_fake("pygfm::segment_broadcast")
def _(src, ptr, num_rows):
    return src.new_empty(_with_rows(src, num_rows))


@torch.library.register_fake("pygfm::arg_scatter")
def _(src, arg, num_rows):
    return src.new_empty(_with_rows(src, num_rows))


@torch.library.register_fake("pygfm::arg_gather")
def _(src, arg):
    return src.new_empty(arg.shape)


@torch.library.register_fake("pygfm::scatter_sum")
def _(src, index, dim_size):
    return src.new_empty(_with_rows(src, dim_size))


@torch.library.register_fake("pygfm::scatter_max")
def _(src, index, dim_size):
    return _fake_extreme(src, dim_size)


@torch.library.register_fake("pygfm::scatter_min")
def _(src, index, dim_size):
    return _fake_extreme(src, dim_size)


# ----------------------------------------------------------------- autograd
def _save_rows_and(ctx, tensor, rows):
    ctx.save_for_backward(tensor)
    ctx.num_rows = rows


def _setup_by_ptr(ctx, inputs, output):
    src, ptr = inputs
    _save_rows_and(ctx, ptr, src.shape[0])


def _segment_sum_backward(ctx, grad):
    (ptr,) = ctx.saved_tensors
    return _ops.segment_broadcast(grad, ptr, ctx.num_rows), None


def _divide_by_counts(total, counts):
    """total [S, ...] / counts [S] (0 -> 1), computed in FP32 for BF16 and rounded once."""
    dtype = torch.float32 if total.dtype == torch.bfloat16 else total.dtype
    divisor = counts.clamp(min=1).to(dtype).view(-1, *([1] * (total.dim() - 1)))
    return (total.to(dtype) / divisor).to(total.dtype)


def _segment_mean_backward(ctx, grad):
    (ptr,) = ctx.saved_tensors
    return _ops.segment_broadcast(_divide_by_counts(grad, ptr.diff()), ptr, ctx.num_rows), None


def _setup_extreme(ctx, inputs, output):
    _save_rows_and(ctx, output[1], inputs[0].shape[0])


def _extreme_backward(ctx, grad, _grad_arg):
    (arg,) = ctx.saved_tensors
    return _ops.arg_scatter(grad, arg, ctx.num_rows), None


def _extreme_scatter_backward(ctx, grad, _grad_arg):
    return (*_extreme_backward(ctx, grad, _grad_arg), None)


def _setup_broadcast(ctx, inputs, output):
    _src, ptr, _rows = inputs
    ctx.save_for_backward(ptr)


def _broadcast_backward(ctx, grad):
    (ptr,) = ctx.saved_tensors
    return _ops.segment_sum(grad, ptr), None, None


def _setup_arg_scatter(ctx, inputs, output):
    _src, arg, _rows = inputs
    ctx.save_for_backward(arg)


def _arg_scatter_backward(ctx, grad):
    (arg,) = ctx.saved_tensors
    return _ops.arg_gather(grad, arg), None, None


def _setup_arg_gather(ctx, inputs, output):
    src, arg = inputs
    _save_rows_and(ctx, arg, src.shape[0])


def _arg_gather_backward(ctx, grad):
    (arg,) = ctx.saved_tensors
    return _ops.arg_scatter(grad, arg, ctx.num_rows), None


def _setup_scatter_sum(ctx, inputs, output):
    _src, index, _dim_size = inputs
    ctx.save_for_backward(index)


def _scatter_sum_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    return grad.index_select(0, index), None, None


def _setup_scatter_extreme(ctx, inputs, output):
    _save_rows_and(ctx, output[1], inputs[0].shape[0])


for _name, _backward, _setup in [
    ("segment_sum", _segment_sum_backward, _setup_by_ptr),
    ("segment_mean", _segment_mean_backward, _setup_by_ptr),
    ("segment_max", _extreme_backward, _setup_extreme),
    ("segment_min", _extreme_backward, _setup_extreme),
    ("segment_broadcast", _broadcast_backward, _setup_broadcast),
    ("arg_scatter", _arg_scatter_backward, _setup_arg_scatter),
    ("arg_gather", _arg_gather_backward, _setup_arg_gather),
    ("scatter_sum", _scatter_sum_backward, _setup_scatter_sum),
    ("scatter_max", _extreme_scatter_backward, _setup_scatter_extreme),
    ("scatter_min", _extreme_scatter_backward, _setup_scatter_extreme),
]:
    torch.library.register_autograd(f"pygfm::{_name}", _backward, setup_context=_setup)


# ----------------------------------------------------------------- front ends
_GPU_BUILT = bool({"cuda", "hip"} & set(_extension.build_info()["backends"]))


def _has_kernel(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and _GPU_BUILT)


def _segment_args(op: str, src, ptr):
    check_floating(op, "src", src)
    ptr = as_index(op, "ptr", ptr, src.device)
    check_ptr(op, ptr, src.shape[0])
    return ptr


def _scatter_args(op: str, src, index, dim_size):
    check_floating(op, "src", src)
    index = as_index(op, "index", index, src.device)
    if index.shape[0] != src.shape[0]:
        raise ValueError(
            f"{op}: index has {index.shape[0]} entries but src has {src.shape[0]} rows"
        )
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    elif not isinstance(dim_size, (int, torch.SymInt)) or isinstance(dim_size, bool):
        raise TypeError(f"{op}: dim_size must be an int, got {type(dim_size).__name__}")
    if dim_size < 0:
        raise ValueError(f"{op}: dim_size must be >= 0, got {dim_size}")
    check_index_values(op, index, dim_size)
    return index, dim_size


def segment_sum(src: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """Sum rows of ``src`` [E, ...] over CSR segments ``ptr`` [S+1] -> [S, ...].

    Segment ``s`` is ``src[ptr[s]:ptr[s+1]]``; an empty segment sums to 0.
    float64, float32 or bfloat16 (accumulated in float32). Deterministic.
    """
    ptr = _segment_args("segment_sum", src, ptr)
    if not _has_kernel(src.device):
        return reference.segment_sum(src, ptr)
    return _ops.segment_sum(src, ptr)


def segment_mean(src: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of each CSR segment -> [S, ...]; an empty segment gives 0."""
    ptr = _segment_args("segment_mean", src, ptr)
    if not _has_kernel(src.device):
        return reference.segment_mean(src, ptr)
    return _ops.segment_mean(src, ptr)


def segment_max(src: torch.Tensor, ptr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest row of each CSR segment, per feature -> (values [S, ...], arg [S, ...]).

    ``arg`` is the row index (into ``src``) holding the maximum; the lowest such
    row on ties; NaN counts as the maximum. Empty segments give
    ``MAX_MIN_EMPTY_FILL`` (0) and arg -1. The gradient goes to the arg row.
    """
    ptr = _segment_args("segment_max", src, ptr)
    if not _has_kernel(src.device):
        return reference.segment_max(src, ptr)
    return _ops.segment_max(src, ptr)


def segment_min(src: torch.Tensor, ptr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest row of each CSR segment, per feature; see :func:`segment_max`."""
    ptr = _segment_args("segment_min", src, ptr)
    if not _has_kernel(src.device):
        return reference.segment_min(src, ptr)
    return _ops.segment_min(src, ptr)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int | None = None):
    """``out[index[e]] += src[e]`` for rows of ``src`` [E, ...] -> [dim_size, ...].

    ``index`` [E] need not be sorted (sorted input is better served by
    :func:`segment_sum`). ``dim_size`` defaults to ``index.max() + 1``. On the
    CPU the result is deterministic; on GPUs atomics make the last bits vary.
    """
    index, dim_size = _scatter_args("scatter_sum", src, index, dim_size)
    if not _has_kernel(src.device):
        return reference.scatter_sum(src, index, dim_size)
    return _ops.scatter_sum(src, index, dim_size)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int | None = None):
    """Mean of the rows sent to each output row; rows receiving nothing give 0."""
    index, dim_size = _scatter_args("scatter_mean", src, index, dim_size)
    if not _has_kernel(src.device):
        return reference.scatter_mean(src, index, dim_size)
    # BF16 sums are kept in FP32 until after the division: one rounding, as the reference.
    total = _ops.scatter_sum(src.float() if src.dtype == torch.bfloat16 else src, index, dim_size)
    return _divide_by_counts(total, torch.bincount(index, minlength=dim_size)).to(src.dtype)


def scatter_max(src: torch.Tensor, index: torch.Tensor, dim_size: int | None = None):
    """Per output row and feature, the largest row sent there -> (values, arg).

    Same conventions as :func:`segment_max` (lowest row on ties, NaN wins,
    empty rows give 0 and arg -1), on the CPU and on GPUs alike.
    """
    index, dim_size = _scatter_args("scatter_max", src, index, dim_size)
    if not _has_kernel(src.device):
        return reference.scatter_max(src, index, dim_size)
    return _ops.scatter_max(src, index, dim_size)


def scatter_min(src: torch.Tensor, index: torch.Tensor, dim_size: int | None = None):
    """Per output row and feature, the smallest row sent there; see :func:`scatter_max`."""
    index, dim_size = _scatter_args("scatter_min", src, index, dim_size)
    if not _has_kernel(src.device):
        return reference.scatter_min(src, index, dim_size)
    return _ops.scatter_min(src, index, dim_size)

"""Plain-PyTorch definitions of every pygfm op.

These are the specification the kernels are tested against (in float64) and
the fallback used on a device for which no kernel was compiled. They are
differentiable through torch's own autograd. BF16 inputs are reduced in FP32,
as the kernels do.

Conventions shared with the kernels:

* ``ptr`` [S+1] int64: segment ``s`` owns rows ``ptr[s]:ptr[s+1]``.
* ``index`` [E] int64: row ``e`` goes to output row ``index[e]``.
* Empty segments / output rows give 0 for every reduction, and arg -1.
* Max/min return ``(values, arg)`` where arg is the row that holds the extreme
  (the lowest such row on ties); NaN counts as the extreme.
"""

from __future__ import annotations

import torch

__all__ = [
    "segment_ids",
    "segment_sum",
    "segment_mean",
    "segment_max",
    "segment_min",
    "segment_broadcast",
    "arg_scatter",
    "arg_gather",
    "scatter_sum",
    "scatter_mean",
    "scatter_max",
    "scatter_min",
]


def _acc(src: torch.Tensor) -> torch.Tensor:
    return src.float() if src.dtype == torch.bfloat16 else src


def segment_ids(ptr: torch.Tensor, num_rows: int | None = None) -> torch.Tensor:
    """Segment of every row: [E] int64 from ptr [S+1]."""
    counts = ptr.diff()
    segments = torch.arange(counts.numel(), device=ptr.device)
    return torch.repeat_interleave(segments, counts, output_size=num_rows)


def _counts_shape(counts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return counts.view(-1, *([1] * (like.dim() - 1)))


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    acc = _acc(src)
    out = acc.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add(0, index, acc).to(src.dtype)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    acc = _acc(src)
    total = acc.new_zeros((dim_size, *src.shape[1:])).index_add(0, index, acc)
    counts = torch.bincount(index, minlength=dim_size).clamp(min=1).to(acc.dtype)
    return (total / _counts_shape(counts, total)).to(src.dtype)


def _scatter_extreme(src, index, dim_size, largest: bool):
    acc = _acc(src)
    rows = src.shape[0]
    trailing = src.shape[1:]
    expanded = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    row_ids = torch.arange(rows, device=src.device).view(-1, *([1] * (src.dim() - 1)))
    row_ids = row_ids.expand_as(src)
    no_row = torch.full_like(expanded, rows)

    def first_row_where(hit):
        arg = torch.full((dim_size, *trailing), rows, dtype=torch.long, device=src.device)
        candidates = torch.where(hit, row_ids, no_row)
        return arg.scatter_reduce(0, expanded, candidates, reduce="amin", include_self=True)

    # NaN wins over any number: the first NaN row, where a row has one ...
    nan = torch.isnan(acc)
    first_nan = first_row_where(nan)
    # ... else the first row holding the extreme of the numbers.
    fill = float("-inf") if largest else float("inf")
    numbers = torch.where(nan, torch.full_like(acc, fill), acc)
    best = acc.new_full((dim_size, *trailing), fill).scatter_reduce(
        0, expanded, numbers, reduce="amax" if largest else "amin", include_self=True
    )
    first_best = first_row_where(~nan & (numbers == best.gather(0, expanded)))
    arg = torch.where(first_nan < rows, first_nan, first_best)
    arg = torch.where(arg == rows, torch.full_like(arg, -1), arg)
    return arg_gather(src, arg), arg


def scatter_max(src, index, dim_size):
    return _scatter_extreme(src, index, dim_size, largest=True)


def scatter_min(src, index, dim_size):
    return _scatter_extreme(src, index, dim_size, largest=False)


def segment_sum(src: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    return scatter_sum(src, segment_ids(ptr, src.shape[0]), ptr.numel() - 1)


def segment_mean(src: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    return scatter_mean(src, segment_ids(ptr, src.shape[0]), ptr.numel() - 1)


def segment_max(src: torch.Tensor, ptr: torch.Tensor):
    return scatter_max(src, segment_ids(ptr, src.shape[0]), ptr.numel() - 1)


def segment_min(src: torch.Tensor, ptr: torch.Tensor):
    return scatter_min(src, segment_ids(ptr, src.shape[0]), ptr.numel() - 1)


def segment_broadcast(src: torch.Tensor, ptr: torch.Tensor, num_rows: int) -> torch.Tensor:
    return src.index_select(0, segment_ids(ptr, num_rows))


def arg_scatter(src: torch.Tensor, arg: torch.Tensor, num_rows: int) -> torch.Tensor:
    valid = arg >= 0
    out = src.new_zeros((num_rows + 1, *src.shape[1:]))
    # Rows named -1 go to a spare last row, dropped below.
    target = torch.where(valid, arg, torch.full_like(arg, num_rows))
    return out.scatter(0, target, src)[:num_rows]


def arg_gather(src: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
    padded = torch.cat([src, src.new_zeros((1, *src.shape[1:]))])
    target = torch.where(arg >= 0, arg, torch.full_like(arg, src.shape[0]))
    return padded.gather(0, target)

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
    "painn_message",
    "painn_message_backward_edge",
    "painn_message_backward_node",
    "painn_update",
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


# ------------------------------------------------------------------ PaiNN
# x = phi(s) [N, 3F] = (x_s | x_r | x_m); v [N, 3, F]; filters [E, 3F] =
# (W_s | W_r | W_m); direction [E, 3]; edge e = (receiver[e] <- sender[e]).
# The graph arguments row_ptr, sender_ptr and edge_of are the kernels' CSR
# views of the same edges; the definitions below need only receiver and sender.


def _painn_parts(x, v, filters, direction):
    F = x.shape[1] // 3
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return F, _acc(x), _acc(v), _acc(filters), direction.to(dtype)


def painn_message(x, v, filters, direction, row_ptr, receiver, sender, sender_ptr, edge_of):
    """(ds [N, F], dv [N, 3, F]): ds_i = sum_e W_s x_s[j],
    dv_i = sum_e (W_r x_r[j]) d_e + (W_m x_m[j]) v_j."""
    F, x_, v_, w_, d_ = _painn_parts(x, v, filters, direction)
    N = x.shape[0]
    if F == 0:
        return x.new_zeros(N, 0), v.new_zeros(N, 3, 0)
    message = w_ * x_[sender]
    m_s, m_r, m_m = message.split(F, dim=-1)
    m_v = m_r[:, None, :] * d_[:, :, None] + m_m[:, None, :] * v_[sender]
    ds = m_s.new_zeros(N, F).index_add_(0, receiver, m_s)
    dv = m_v.new_zeros(N, 3, F).index_add_(0, receiver, m_v)
    return ds.to(x.dtype), dv.to(x.dtype)


def painn_message_backward_edge(grad_s, grad_v, x, v, filters, direction, row_ptr, receiver,
                                sender, sender_ptr, edge_of):
    """(dL/dfilters [E, 3F], dL/ddirection [E, 3]) of painn_message."""
    F, x_, v_, w_, d_ = _painn_parts(x, v, filters, direction)
    g_s, g_v = _acc(grad_s)[receiver], _acc(grad_v)[receiver]
    x_s, x_r, x_m = x_[sender].split(F, dim=-1)
    g_dot_d = (g_v * d_[:, :, None]).sum(1)
    g_dot_v = (g_v * v_[sender]).sum(1)
    grad_filters = torch.cat([g_s * x_s, x_r * g_dot_d, x_m * g_dot_v], dim=-1)
    grad_direction = (g_v * (w_[:, F:2 * F] * x_r)[:, None, :]).sum(-1)
    return grad_filters.to(x.dtype), grad_direction.to(d_.dtype)


def painn_message_backward_node(grad_s, grad_v, x, v, filters, direction, row_ptr, receiver,
                                sender, sender_ptr, edge_of):
    """(dL/dx [N, 3F], dL/dv [N, 3, F]) of painn_message."""
    F, x_, v_, w_, d_ = _painn_parts(x, v, filters, direction)
    N = x.shape[0]
    g_s, g_v = _acc(grad_s)[receiver], _acc(grad_v)[receiver]
    w_s, w_r, w_m = w_.split(F, dim=-1)
    per_edge = torch.cat([w_s * g_s, w_r * (g_v * d_[:, :, None]).sum(1)], dim=-1)
    p = per_edge.new_zeros(N, 2 * F).index_add_(0, sender, per_edge)
    q = g_v.new_zeros(N, 3, F).index_add_(0, sender, w_m[:, None, :] * g_v)
    grad_x = torch.cat([p, (v_ * q).sum(1)], dim=-1)
    grad_v_in = x_[:, None, 2 * F:] * q
    return grad_x.to(x.dtype), grad_v_in.to(x.dtype)


def painn_update(s, v, a, mix):
    """(s + a_ss + a_sv <V, W>, v + a_vv W) with a = (a_ss | a_vv | a_sv) [N, 3F] and
    mix = (V | W) [N, 3, 2F]."""
    F = s.shape[1]
    a_ss, a_vv, a_sv = _acc(a).split(F, dim=-1)
    vec_v, vec_w = _acc(mix).split(F, dim=-1)
    s_out = _acc(s) + a_ss + a_sv * (vec_v * vec_w).sum(1)
    v_out = _acc(v) + a_vv[:, None, :] * vec_w
    return s_out.to(s.dtype), v_out.to(s.dtype)

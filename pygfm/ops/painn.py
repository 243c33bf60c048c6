"""Fused PaiNN message and update ops: autograd to any order, fake kernels, front ends.

The message of PaiNN (Schütt, Unke, Gastegger 2021, as schnetpack writes it)
for receiver i over its edges e = (i <- j)::

    ds_i    = sum_e W_s(e) x_s(j)
    dv_i[c] = sum_e W_r(e) x_r(j) d_e[c] + W_m(e) x_m(j) v_j[c]

with x = phi(s) = (x_s | x_r | x_m) [N, 3F], filters W = (W_s | W_r | W_m)
[E, 3F] and unit vectors d [E, 3]. The kernel (``torch.ops.pygfm.painn_message``)
sums each receiver's edges without writing [E, 3F] messages.

Autograd. Let T(g; x, v, W, d) = <g_s, ds> + <g_v, dv>. T is linear in each of
g, x, v, W and d separately (each term is a product of one entry of each), so

* the forward is dT/dg, the backward is dT/d(x, v) (``painn_message_backward_node``,
  by sender) and dT/d(W, d) (``painn_message_backward_edge``, by receiver);
* a backward of a backward, with cotangent h on (say) the W output, is the
  gradient of <h, dT/dW> = T(g; x, v, h, d): the same three ops evaluated with
  one argument replaced by the cotangent. Where an argument enters only some
  terms (d only the radial one, v only the mixing one), the others are switched
  off by zeroing the matching third of x.

So every order of derivative runs on the same fused kernels, and force training
(gradients of forces with respect to weights) never materialises [E, 3F]
messages either. The update op (``painn_update``) is elementwise; its backward
is written in torch ops, which are differentiable to any order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import reference
from ._checks import as_index, check_floating
from .segment import _has_kernel

_ops = torch.ops.pygfm

__all__ = ["MessageGraph", "message_graph", "painn_message", "painn_update"]


class MessageGraph(NamedTuple):
    """Receiver-sorted edges and their sender-side view, as the PaiNN ops consume them.

    ``row_ptr`` [N+1]: receiver i owns edges row_ptr[i]:row_ptr[i+1];
    ``receiver``, ``sender`` [E]; ``sender_ptr`` [N+1] and ``edge_of`` [E]: the
    edges of sender j are ``edge_of[sender_ptr[j]:sender_ptr[j+1]]``.
    """

    row_ptr: torch.Tensor
    receiver: torch.Tensor
    sender: torch.Tensor
    sender_ptr: torch.Tensor
    edge_of: torch.Tensor

    @property
    def num_atoms(self) -> int:
        return self.row_ptr.shape[0] - 1

    @property
    def num_edges(self) -> int:
        return self.sender.shape[0]


def message_graph(edge_index: torch.Tensor, num_atoms: int) -> MessageGraph:
    """Build the :class:`MessageGraph` of ``edge_index`` [2, E] (row 0 receiver i,
    row 1 sender j, sorted by receiver, as ``neighbor_list`` returns it)."""
    op = "message_graph"
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"{op}: edge_index must be a tensor, got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{op}: edge_index must have shape [2, E], got "
                         f"{list(edge_index.shape)}")
    if int(num_atoms) < 0:
        raise ValueError(f"{op}: num_atoms must be >= 0, got {num_atoms}")
    receiver = as_index(op, "edge_index", edge_index[0], edge_index.device).contiguous()
    sender = as_index(op, "edge_index", edge_index[1], edge_index.device).contiguous()
    num_atoms = int(num_atoms)
    if receiver.numel():
        low = int(torch.minimum(receiver.min(), sender.min()))
        high = int(torch.maximum(receiver.max(), sender.max()))
        if low < 0 or high >= num_atoms:
            raise ValueError(
                f"{op}: edge_index holds atom {low if low < 0 else high}, outside "
                f"[0, {num_atoms})")
        if bool((receiver[1:] < receiver[:-1]).any()):
            raise ValueError(f"{op}: edges must be sorted by receiver (edge_index[0])")
    counts = torch.bincount(receiver, minlength=num_atoms)
    row_ptr = torch.zeros(num_atoms + 1, dtype=torch.long, device=receiver.device)
    torch.cumsum(counts, 0, out=row_ptr[1:])
    edge_of = torch.sort(sender, stable=True).indices
    sender_ptr = torch.zeros_like(row_ptr)
    torch.cumsum(torch.bincount(sender, minlength=num_atoms), 0, out=sender_ptr[1:])
    return MessageGraph(row_ptr, receiver, sender, sender_ptr, edge_of)


# ----------------------------------------------------------------- fake kernels
@torch.library.register_fake("pygfm::painn_message")
def _(x, v, filters, direction, *graph):
    return x.new_empty(x.shape[0], x.shape[1] // 3), v.new_empty(v.shape)


@torch.library.register_fake("pygfm::painn_message_backward_edge")
def _(grad_s, grad_v, x, v, filters, direction, *graph):
    return filters.new_empty(filters.shape), direction.new_empty(direction.shape)


@torch.library.register_fake("pygfm::painn_message_backward_node")
def _(grad_s, grad_v, x, v, filters, direction, *graph):
    return x.new_empty(x.shape), v.new_empty(v.shape)


@torch.library.register_fake("pygfm::painn_update")
def _(s, v, a, mix):
    return s.new_empty(s.shape), v.new_empty(v.shape)


# ------------------------------------------------------------------- autograd
def _third(x: torch.Tensor, part: int) -> torch.Tensor:
    """x [N, 3F] with all but its part-th third (0: s, 1: r, 2: m) set to zero."""
    F = x.shape[1] // 3
    keep = torch.zeros_like(x)
    keep[:, part * F:(part + 1) * F] = x[:, part * F:(part + 1) * F]
    return keep


def _mask_third(grad: torch.Tensor | None, part: int) -> torch.Tensor | None:
    return None if grad is None else _third(grad, part)


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _message(x, v, w, d, graph):
    return _ops.painn_message(x, v, w, d, *graph)


def _edge(g_s, g_v, x, v, w, d, graph):
    return _ops.painn_message_backward_edge(g_s, g_v, x, v, w, d, *graph)


def _node(g_s, g_v, x, v, w, d, graph):
    return _ops.painn_message_backward_node(g_s, g_v, x, v, w, d, *graph)


def _setup_message(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _message_backward(ctx, grad_s, grad_v):
    x, v, w, d, *graph = ctx.saved_tensors
    grad_s = torch.zeros(x.shape[0], x.shape[1] // 3, dtype=x.dtype, device=x.device) \
        if grad_s is None else grad_s
    grad_v = torch.zeros_like(v) if grad_v is None else grad_v
    need = ctx.needs_input_grad
    grad_x = grad_v_in = grad_w = grad_d = None
    if need[0] or need[1]:
        grad_x, grad_v_in = _node(grad_s, grad_v, x, v, w, d, graph)
    if need[2] or need[3]:
        grad_w, grad_d = _edge(grad_s, grad_v, x, v, w, d, graph)
    return grad_x, grad_v_in, grad_w, grad_d, None, None, None, None, None


def _setup_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _edge_backward(ctx, h_w, h_d):
    """Gradient of <h_w, dT/dW> + <h_d, dT/dd> = T(g; x, v, h_w, d) + T(g; x_r, v, W, h_d)."""
    g_s, g_v, x, v, w, d, *graph = ctx.saved_tensors
    grads = [None] * 6
    if h_w is not None:
        grads[0:2] = _message(x, v, h_w, d, graph)
        grads[2], grads[3] = _node(g_s, g_v, x, v, h_w, d, graph)
        grads[5] = _edge(g_s, g_v, x, v, h_w, d, graph)[1]
    if h_d is not None:
        x_r = _third(x, 1)
        g_s2, g_v2 = _message(x_r, v, w, h_d, graph)
        grads[0], grads[1] = _add(grads[0], g_s2), _add(grads[1], g_v2)
        grads[2] = _add(grads[2], _mask_third(_node(g_s, g_v, x_r, v, w, h_d, graph)[0], 1))
        grads[4] = _edge(g_s, g_v, x_r, v, w, h_d, graph)[0]
    return (*grads, None, None, None, None, None)


def _node_backward(ctx, h_x, h_v):
    """Gradient of <h_x, dT/dx> + <h_v, dT/dv> = T(g; h_x, v, W, d) + T(g; x_m, h_v, W, d)."""
    g_s, g_v, x, v, w, d, *graph = ctx.saved_tensors
    grads = [None] * 6
    if h_x is not None:
        grads[0:2] = _message(h_x, v, w, d, graph)
        grads[3] = _node(g_s, g_v, h_x, v, w, d, graph)[1]
        grads[4], grads[5] = _edge(g_s, g_v, h_x, v, w, d, graph)
    if h_v is not None:
        x_m = _third(x, 2)
        g_s2, g_v2 = _message(x_m, h_v, w, d, graph)
        grads[0], grads[1] = _add(grads[0], g_s2), _add(grads[1], g_v2)
        grads[2] = _mask_third(_node(g_s, g_v, x_m, h_v, w, d, graph)[0], 2)
        grads[4] = _add(grads[4], _edge(g_s, g_v, x_m, h_v, w, d, graph)[0])
    return (*grads, None, None, None, None, None)


def _setup_update(ctx, inputs, output):
    ctx.save_for_backward(*inputs[2:])


def _update_backward(ctx, h_s, h_v):
    a, mix = ctx.saved_tensors
    F = a.shape[1] // 3
    h_s = torch.zeros_like(a[:, :F]) if h_s is None else h_s
    h_v = torch.zeros_like(mix[..., :F]) if h_v is None else h_v
    a_vv, a_sv = a[:, F:2 * F], a[:, 2 * F:]
    vec_v, vec_w = mix[..., :F], mix[..., F:]
    grad_a = torch.cat([h_s, (h_v * vec_w).sum(1), h_s * (vec_v * vec_w).sum(1)], dim=-1)
    scaled = (h_s * a_sv)[:, None, :]
    grad_mix = torch.cat([scaled * vec_w, scaled * vec_v + a_vv[:, None, :] * h_v], dim=-1)
    return h_s, h_v, grad_a, grad_mix


torch.library.register_autograd("pygfm::painn_message", _message_backward,
                                setup_context=_setup_message)
torch.library.register_autograd("pygfm::painn_message_backward_edge", _edge_backward,
                                setup_context=_setup_backward)
torch.library.register_autograd("pygfm::painn_message_backward_node", _node_backward,
                                setup_context=_setup_backward)
torch.library.register_autograd("pygfm::painn_update", _update_backward,
                                setup_context=_setup_update)


# ----------------------------------------------------------------- front ends
def _check_devices(op: str, reference_name: str, reference: torch.Tensor, named) -> None:
    for name, tensor in named:
        if tensor.device != reference.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but {reference_name} is on "
                             f"{reference.device}")


def _geometry_dtype(features: torch.dtype) -> torch.dtype:
    return torch.float64 if features == torch.float64 else torch.float32


def painn_message(x: torch.Tensor, v: torch.Tensor, filters: torch.Tensor,
                  direction: torch.Tensor, graph: MessageGraph):
    """Summed PaiNN messages of every receiver: ``(ds [N, F], dv [N, 3, F])``.

    ``x`` [N, 3F] = phi(s) split as (x_s | x_r | x_m); ``v`` [N, 3, F];
    ``filters`` [E, 3F] = (W_s | W_r | W_m), cutoff already applied;
    ``direction`` [E, 3] unit vectors r_ij / |r_ij| (float64 with float64
    features, float32 otherwise: it is cast); ``graph`` from :func:`message_graph`.
    Differentiable to any order in x, v, filters and direction.
    """
    op = "painn_message"
    for name, tensor in (("x", x), ("v", v), ("filters", filters), ("direction", direction)):
        check_floating(op, name, tensor)
    if not isinstance(graph, MessageGraph):
        raise TypeError(f"{op}: graph must be a MessageGraph (see message_graph), "
                        f"got {type(graph).__name__}")
    _check_devices(op, "x", x, [("v", v), ("filters", filters), ("direction", direction),
                                *zip(MessageGraph._fields, graph)])
    direction = direction.to(_geometry_dtype(x.dtype))
    if not _has_kernel(x.device):
        return reference.painn_message(x, v, filters, direction, *graph)
    return _ops.painn_message(x, v, filters, direction, *graph)


def painn_update(s: torch.Tensor, v: torch.Tensor, a: torch.Tensor, mix: torch.Tensor):
    """PaiNN's elementwise update: ``(s + a_ss + a_sv <V, W>, v + a_vv W)``.

    ``s`` [N, F]; ``v`` [N, 3, F]; ``a`` [N, 3F] = (a_ss | a_vv | a_sv) from the
    update MLP; ``mix`` [N, 3, 2F] = (V | W), the two channel mixes of v.
    """
    for name, tensor in (("s", s), ("v", v), ("a", a), ("mix", mix)):
        check_floating("painn_update", name, tensor)
    _check_devices("painn_update", "s", s, [("v", v), ("a", a), ("mix", mix)])
    if not _has_kernel(s.device):
        return reference.painn_update(s, v, a, mix)
    return _ops.painn_update(s, v, a, mix)

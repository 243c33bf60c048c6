"""Gradients of the segment/scatter ops and of their backward helper ops.

gradcheck / gradgradcheck in float64 for every public op and for the raw
torch.ops.pygfm.segment_broadcast / arg_scatter / arg_gather, and explicit
gradient values (max/min route the gradient to the arg row only).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from conftest import generator, random_index, random_ptr, random_src, tie_free_src
from pygfm import ops
from pygfm.ops import reference

_ops = torch.ops.pygfm

# Segment layouts: explicit lengths, all with at least one empty segment except "dense".
LAYOUTS = {
    "dense": [2, 3, 1, 4],
    "with_empty": [0, 3, 0, 0, 4, 1, 0],
    "all_empty": [0, 0, 0],
    "no_segments": [],
    "single_long": [0, 11, 0],
}
TRAILING = [(), (3,), (2, 3)]


def first_output(fn):
    """The differentiable output only (max/min also return the integer arg)."""
    def wrapped(*args):
        out = fn(*args)
        return out[0] if isinstance(out, tuple) else out
    return wrapped


def make_case(layout, trailing, seed):
    gen = generator(seed)
    lengths = LAYOUTS[layout]
    ptr = random_ptr(len(lengths), lengths, gen)
    rows = int(ptr[-1])
    src = tie_free_src((rows, *trailing), gen).requires_grad_()
    return src, ptr


SEGMENT_OPS = {
    "segment_sum": ops.segment_sum,
    "segment_mean": ops.segment_mean,
    "segment_max": first_output(ops.segment_max),
    "segment_min": first_output(ops.segment_min),
}
SCATTER_OPS = {
    "scatter_sum": ops.scatter_sum,
    "scatter_mean": ops.scatter_mean,
    "scatter_max": first_output(ops.scatter_max),
    "scatter_min": first_output(ops.scatter_min),
}


# ----------------------------------------------------------------- gradcheck: public ops
@pytest.mark.parametrize("name", SEGMENT_OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("trailing", TRAILING, ids=str)
def test_segment_gradcheck(name, layout, trailing, device):
    src, ptr = make_case(layout, trailing, seed=len(name) * 100 + len(layout))
    src = src.detach().to(device).requires_grad_()
    fn = SEGMENT_OPS[name]
    ptr = ptr.to(device)
    assert gradcheck(lambda x: fn(x, ptr), (src,))
    assert gradgradcheck(lambda x: fn(x, ptr), (src,))


@pytest.mark.parametrize("name", SCATTER_OPS)
@pytest.mark.parametrize("rows,dim_size", [(12, 5), (12, 20), (0, 3), (1, 1)])
@pytest.mark.parametrize("trailing", TRAILING, ids=str)
def test_scatter_gradcheck(name, rows, dim_size, trailing, device):
    gen = generator(rows * 31 + dim_size + len(name))
    index = random_index(rows, dim_size, gen).to(device)
    src = tie_free_src((rows, *trailing), gen, device=device).requires_grad_()
    fn = SCATTER_OPS[name]
    assert gradcheck(lambda x: fn(x, index, dim_size), (src,))
    assert gradgradcheck(lambda x: fn(x, index, dim_size), (src,))


# ----------------------------------------------------------------- gradcheck: helper ops
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("trailing", TRAILING, ids=str)
def test_segment_broadcast_gradcheck(layout, trailing, device):
    lengths = LAYOUTS[layout]
    gen = generator(len(layout) + 7)
    ptr = random_ptr(len(lengths), lengths, gen).to(device)
    rows = int(ptr[-1])
    seg = random_src((len(lengths), *trailing), torch.float64, gen, device).requires_grad_()
    out = _ops.segment_broadcast(seg, ptr, rows)
    assert torch.equal(out.detach().cpu(), reference.segment_broadcast(seg.detach().cpu(),
                                                                       ptr.cpu(), rows))
    assert gradcheck(lambda x: _ops.segment_broadcast(x, ptr, rows), (seg,))
    assert gradgradcheck(lambda x: _ops.segment_broadcast(x, ptr, rows), (seg,))


def _arg_case(layout, trailing, device, largest=True):
    """A valid arg [S, ...] (from segment_max/min: distinct rows per feature, -1 if empty)."""
    src, ptr = make_case(layout, trailing, seed=len(layout) * 3 + len(trailing))
    fn = _ops.segment_max if largest else _ops.segment_min
    _, arg = fn(src.detach(), ptr)
    return src.detach().to(device), arg.to(device)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("trailing", TRAILING, ids=str)
def test_arg_scatter_gradcheck(layout, trailing, device):
    src, arg = _arg_case(layout, trailing, device)
    rows = src.shape[0]
    gen = generator(17)
    grad_out = random_src(arg.shape, torch.float64, gen, device).requires_grad_()
    out = _ops.arg_scatter(grad_out, arg, rows)
    assert torch.equal(out.detach().cpu(),
                       reference.arg_scatter(grad_out.detach().cpu(), arg.cpu(), rows))
    assert gradcheck(lambda g: _ops.arg_scatter(g, arg, rows), (grad_out,))
    assert gradgradcheck(lambda g: _ops.arg_scatter(g, arg, rows), (grad_out,))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("trailing", TRAILING, ids=str)
def test_arg_gather_gradcheck(layout, trailing, device):
    src, arg = _arg_case(layout, trailing, device, largest=False)
    src = src.requires_grad_()
    out = _ops.arg_gather(src, arg)
    assert torch.equal(out.detach().cpu(), reference.arg_gather(src.detach().cpu(), arg.cpu()))
    assert gradcheck(lambda x: _ops.arg_gather(x, arg), (src,))
    assert gradgradcheck(lambda x: _ops.arg_gather(x, arg), (src,))


def test_gradcheck_fails_for_a_wrong_gradient():
    """Sanity: the gradchecks above can fail (a deliberately wrong backward)."""

    class WrongSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, ptr):
            ctx.save_for_backward(ptr)
            ctx.rows = x.shape[0]
            return ops.segment_sum(x, ptr)

        @staticmethod
        def backward(ctx, grad):
            (ptr,) = ctx.saved_tensors
            return 2 * _ops.segment_broadcast(grad, ptr, ctx.rows), None

    src, ptr = make_case("dense", (3,), seed=1)
    assert not gradcheck(lambda x: WrongSum.apply(x, ptr), (src,), raise_exception=False)


# ----------------------------------------------------------------- explicit gradient values
@pytest.mark.parametrize("name", ["segment_max", "segment_min"])
def test_segment_extreme_gradient_goes_to_the_arg_row_only(name, device):
    gen = generator(5 if name == "segment_max" else 6)
    ptr = random_ptr(30, 400, gen).to(device)
    src = tie_free_src((400, 5), gen, device=device).requires_grad_()
    values, arg = getattr(ops, name)(src, ptr)
    grad_out = random_src(values.shape, torch.float64, gen, device)
    (grad,) = torch.autograd.grad(values, src, grad_out)
    expected = torch.zeros_like(src)
    for s, f in torch.nonzero(arg >= 0).tolist():
        expected[arg[s, f], f] = grad_out[s, f]
    assert torch.equal(grad, expected)
    # every non-arg row gets exactly zero; empty segments send their gradient nowhere
    assert int((grad != 0).sum()) == int((arg >= 0).sum())


@pytest.mark.parametrize("name", ["scatter_max", "scatter_min"])
def test_scatter_extreme_gradient_goes_to_the_arg_row_only(name, device):
    gen = generator(7 if name == "scatter_max" else 8)
    index = random_index(300, 40, gen).to(device)
    src = tie_free_src((300, 3), gen, device=device).requires_grad_()
    values, arg = getattr(ops, name)(src, index, 45)
    grad_out = random_src(values.shape, torch.float64, gen, device)
    (grad,) = torch.autograd.grad(values, src, grad_out)
    expected = torch.zeros_like(src)
    for s, f in torch.nonzero(arg >= 0).tolist():
        expected[arg[s, f], f] = grad_out[s, f]
    assert torch.equal(grad, expected)


def test_segment_max_gradient_with_ties_goes_to_one_row(device):
    src = torch.tensor([[2.0], [2.0], [2.0], [1.0]], dtype=torch.float64, device=device,
                       requires_grad=True)
    ptr = torch.tensor([0, 4], device=device)
    values, arg = ops.segment_max(src, ptr)
    values.sum().backward()
    assert arg.item() == 0
    assert src.grad.view(-1).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_segment_sum_and_mean_gradient_values(device):
    ptr = torch.tensor([0, 3, 3, 5], device=device)
    src = torch.zeros(5, 2, dtype=torch.float64, device=device, requires_grad=True)
    grad_out = torch.tensor([[1.0, 2.0], [30.0, 40.0], [5.0, 6.0]], dtype=torch.float64,
                            device=device)
    (grad,) = torch.autograd.grad(ops.segment_sum(src, ptr), src, grad_out)
    assert grad.cpu().tolist() == [[1.0, 2.0]] * 3 + [[5.0, 6.0]] * 2
    (grad,) = torch.autograd.grad(ops.segment_mean(src, ptr), src, grad_out)
    assert torch.allclose(grad.cpu(), torch.tensor([[1 / 3, 2 / 3]] * 3 + [[2.5, 3.0]] * 2,
                                                   dtype=torch.float64), rtol=1e-15, atol=0)


def test_scatter_sum_and_mean_gradient_values(device):
    index = torch.tensor([2, 0, 2, 2], device=device)
    src = torch.zeros(4, 1, dtype=torch.float64, device=device, requires_grad=True)
    grad_out = torch.tensor([[1.0], [10.0], [3.0], [7.0]], dtype=torch.float64, device=device)
    (grad,) = torch.autograd.grad(ops.scatter_sum(src, index, 4), src, grad_out)
    assert grad.view(-1).tolist() == [3.0, 1.0, 3.0, 3.0]
    (grad,) = torch.autograd.grad(ops.scatter_mean(src, index, 4), src, grad_out)
    assert torch.allclose(grad.view(-1).cpu(), torch.tensor([1.0, 1.0, 1.0, 1.0],
                                                            dtype=torch.float64))


@pytest.mark.parametrize("name", ["segment_sum", "segment_mean", "segment_max", "segment_min",
                                  "scatter_sum", "scatter_mean", "scatter_max", "scatter_min"])
def test_gradients_match_reference_autograd(name, device):
    """Backward of each op equals torch autograd through the reference, in bf16 too."""
    gen = generator(len(name) * 13)
    rows = 2000
    ptr = random_ptr(150, rows, gen)
    index = random_index(rows, 150, gen)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        base = tie_free_src((rows, 4), gen).to(dtype)
        src = base.to(device).requires_grad_()
        ref_src = base.clone().requires_grad_()
        if name.startswith("segment"):
            out = getattr(ops, name)(src, ptr.to(device))
            ref = getattr(reference, name)(ref_src, ptr)
        else:
            out = getattr(ops, name)(src, index.to(device), 150)
            ref = getattr(reference, name)(ref_src, index, 150)
        out = out[0] if isinstance(out, tuple) else out
        ref = ref[0] if isinstance(ref, tuple) else ref
        grad_out = random_src(out.shape, dtype, gen)
        (grad,) = torch.autograd.grad(out, src, grad_out.to(device))
        (ref_grad,) = torch.autograd.grad(ref, ref_src, grad_out)
        assert grad.dtype == dtype
        tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
        torch.testing.assert_close(grad.cpu(), ref_grad, rtol=tol, atol=tol)


def test_double_backward_of_segment_max_is_linear_in_the_seed(device):
    """d/d(grad_out) of the backward of segment_max: arg_gather of the second seed."""
    gen = generator(12)
    ptr = torch.tensor([0, 2, 2, 6], device=device)
    src = tie_free_src((6, 2), gen, device=device).requires_grad_()
    values, arg = ops.segment_max(src, ptr)
    grad_out = torch.zeros_like(values, requires_grad=True)
    (grad_src,) = torch.autograd.grad(values, src, grad_out, create_graph=True)
    seed = random_src(src.shape, torch.float64, gen, device)
    (grad_grad,) = torch.autograd.grad(grad_src, grad_out, seed)
    assert torch.equal(grad_grad, reference.arg_gather(seed, arg))
    assert (grad_grad[1] == 0).all()  # the empty segment


@pytest.mark.parametrize("name", ["segment_mean", "scatter_mean"])
@pytest.mark.parametrize("rows", [3, 257, 1001])
def test_bf16_mean_gradient_divides_by_the_exact_count(name, rows, device):
    """d mean / d src = grad / n, rounded to bf16 once (as reference autograd gives).

    Fails where n itself is rounded to bf16 first (257 -> 256, 1001 -> 1000).
    """
    src = torch.zeros(rows, 1, dtype=torch.bfloat16, device=device, requires_grad=True)
    if name == "segment_mean":
        out = ops.segment_mean(src, torch.tensor([0, rows], device=device))
    else:
        out = ops.scatter_mean(src, torch.zeros(rows, dtype=torch.long, device=device), 1)
    (grad,) = torch.autograd.grad(out.sum(), src)
    expected = torch.tensor(1.0 / rows).to(torch.bfloat16)
    assert grad.dtype == torch.bfloat16
    assert (grad.cpu() == expected).all(), f"got {grad[0].item()}, expected {expected.item()}"

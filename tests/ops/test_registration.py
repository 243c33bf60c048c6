"""Registration of the torch.ops.pygfm ops: torch.library.opcheck and torch.compile.

opcheck runs the schema, autograd-registration, fake-tensor and AOT-dispatch
checks for every op; torch.compile (fullgraph) must trace the public front ends
and give the eager results and gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from conftest import generator, random_index, random_ptr, random_src, tie_free_src
from pygfm import ops

_ops = torch.ops.pygfm

ALL_OPS = ["segment_sum", "segment_mean", "segment_max", "segment_min", "segment_broadcast",
           "arg_scatter", "arg_gather", "scatter_sum", "scatter_max", "scatter_min"]


def op_args(name, dtype, requires_grad, layout, device="cpu"):
    """Arguments for torch.ops.pygfm.<name> on a small case."""
    gen = generator(len(name) * 7 + len(layout))
    lengths = {"dense": [3, 1, 4, 2], "with_empty": [0, 4, 0, 3, 0], "empty": []}[layout]
    ptr = random_ptr(len(lengths), lengths, gen).to(device)
    rows, segments = int(ptr[-1]), len(lengths)
    src = tie_free_src((rows, 3), gen, dtype=dtype, device=device)
    if name in ("segment_sum", "segment_mean", "segment_max", "segment_min"):
        return (src.requires_grad_(requires_grad), ptr)
    if name == "segment_broadcast":
        seg = random_src((segments, 3), dtype, gen, device)
        return (seg.requires_grad_(requires_grad), ptr, rows)
    _, arg = _ops.segment_max(src, ptr)
    if name == "arg_scatter":
        seg = random_src((segments, 3), dtype, gen, device)
        return (seg.requires_grad_(requires_grad), arg, rows)
    if name == "arg_gather":
        return (src.requires_grad_(requires_grad), arg)
    dim_size = segments + 2
    index = random_index(rows, dim_size, gen).to(device)
    return (src.requires_grad_(requires_grad), index, dim_size)


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("layout", ["dense", "with_empty", "empty"])
def test_opcheck(name, dtype, requires_grad, layout, device):
    args = op_args(name, dtype, requires_grad, layout, device)
    result = opcheck(getattr(_ops, name).default, args)
    assert set(result.values()) == {"SUCCESS"}, result


def test_opcheck_bf16():
    for name in ALL_OPS:
        result = opcheck(getattr(_ops, name).default,
                         op_args(name, torch.bfloat16, True, "with_empty"))
        assert set(result.values()) == {"SUCCESS"}, (name, result)


# ----------------------------------------------------------------- torch.compile
def model(x, ptr, index, dim_size: int):
    total = ops.segment_sum(x, ptr)
    largest, _ = ops.segment_max(x, ptr)
    spread = ops.scatter_sum(x, index, dim_size)
    smallest, _ = ops.scatter_min(x, index, dim_size)
    loss = (total * largest).sum() + spread.pow(2).sum() + smallest.sum()
    return loss, total, largest, spread


def _compile_case(seed, rows=300, segments=40, features=5, device="cpu"):
    gen = generator(seed)
    ptr = random_ptr(segments, rows, gen).to(device)
    index = random_index(rows, segments, gen).to(device)
    x = tie_free_src((rows, features), gen, device=device)
    return x, ptr, index, segments


def _eager_and_compiled(compiled, x, ptr, index, dim_size):
    results = []
    for fn in (model, compiled):
        leaf = x.clone().requires_grad_()
        outputs = fn(leaf, ptr, index, dim_size)
        (grad,) = torch.autograd.grad(outputs[0], leaf)
        results.append((outputs, grad))
    return results


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_aot_eager_fullgraph_matches_eager(dynamic, device):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for seed, rows in [(1, 300), (2, 517)]:  # a second size: recompiles or reuses a dynamic graph
        x, ptr, index, dim_size = _compile_case(seed, rows=rows, device=device)
        (eager, eager_grad), (got, got_grad) = _eager_and_compiled(compiled, x, ptr, index,
                                                                   dim_size)
        for a, b in zip(eager, got):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_grad, eager_grad, rtol=1e-12, atol=1e-12)
        assert got_grad.abs().sum() > 0


def test_compile_helper_ops_fullgraph(device):
    """The backward helper ops trace too (their fake kernels give the right shapes).

    (Double backward *through* a compiled region is not tested: AOTAutograd's
    compiled backward is not differentiable again, for plain torch ops as well.)
    """
    torch._dynamo.reset()

    def helpers(seg, ptr, rows: int, arg):
        spread = _ops.segment_broadcast(seg, ptr, rows)
        placed = _ops.arg_scatter(seg, arg, rows)
        picked = _ops.arg_gather(spread + placed, arg)
        return spread, placed, picked

    compiled = torch.compile(helpers, backend="aot_eager", fullgraph=True)
    x, ptr, _, segments = _compile_case(3, device=device)
    _, arg = ops.segment_max(x, ptr)
    seg = random_src((segments, x.shape[1]), torch.float64, generator(9), device)
    for a, b in zip(helpers(seg, ptr, x.shape[0], arg), compiled(seg, ptr, x.shape[0], arg)):
        assert a.shape == b.shape
        assert torch.equal(a, b)


@pytest.mark.slow
def test_compile_inductor_fullgraph_matches_eager():
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    x, ptr, index, dim_size = _compile_case(4)
    (eager, eager_grad), (got, got_grad) = _eager_and_compiled(compiled, x, ptr, index, dim_size)
    for a, b in zip(eager, got):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, eager_grad, rtol=1e-12, atol=1e-12)

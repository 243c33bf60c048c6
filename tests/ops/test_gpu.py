"""GPU kernels against the CPU kernels (skipped without a CUDA/ROCm GPU).

The segment ops and the max/min ops are deterministic and do the same
arithmetic in the same order on both devices, so float64 results (and args)
must be the same bits. scatter_sum uses atomics on the GPU: only close.
Tests parametrized over ``device`` in the other files also run on cuda.
"""

from __future__ import annotations

import pytest
import torch

from conftest import (
    HAS_CUDA,
    assert_reduction_close,
    generator,
    random_index,
    random_ptr,
    random_src,
    tie_free_src,
)
from pygfm import _extension, ops
from pygfm.ops import reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA or ROCm GPU"),
]

_ops = torch.ops.pygfm

SEGMENT = ["segment_sum", "segment_mean", "segment_max", "segment_min"]
SCATTER = ["scatter_sum", "scatter_mean", "scatter_max", "scatter_min"]

# (segment lengths or (segments, rows), trailing shape)
LAYOUTS = {
    "empty": ([], (4,)),
    "small": ((20, 100), (3,)),
    "tiny_segments": ("tiny", (7,)),
    "one_huge_segment": ([100_000], (3,)),
    "many_empty_segments": ((20_000, 300), (2,)),
    "wide": ((50, 2_000), (300,)),
    "three_dims": ((40, 1_000), (3, 5)),
    "vector": ((40, 1_000), ()),
}


def layout_case(layout, dtype=torch.float64, seed=0):
    gen = generator(seed + len(layout))
    spec, trailing = LAYOUTS[layout]
    if spec == "tiny":
        spec = torch.randint(0, 4, (5_000,), generator=gen).tolist()
    ptr = random_ptr(*spec, gen) if isinstance(spec, tuple) else random_ptr(len(spec), spec, gen)
    rows = int(ptr[-1])
    src = random_src((rows, *trailing), dtype, gen)
    return src, ptr


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def test_extension_has_gpu_kernels():
    backends = _extension.build_info()["backends"]
    assert {"cuda", "hip"} & set(backends), (
        f"torch sees a GPU but pygfm was built with backends {backends}: the GPU tests "
        "would only exercise the reference fallback"
    )


# ----------------------------------------------------------------- forward: GPU == CPU
@pytest.mark.parametrize("name", SEGMENT)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_segment_forward_same_bits_as_cpu(name, layout):
    src, ptr = layout_case(layout)
    cpu = as_tuple(getattr(ops, name)(src, ptr))
    gpu = as_tuple(getattr(ops, name)(src.cuda(), ptr.cuda()))
    for a, b in zip(cpu, gpu):
        assert b.is_cuda
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("name", ["scatter_max", "scatter_min"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_scatter_extreme_same_bits_as_cpu(name, layout):
    src, ptr = layout_case(layout, seed=1)
    dim_size = max(ptr.numel() - 1, 1)
    index = random_index(src.shape[0], dim_size, generator(2))
    cpu = getattr(ops, name)(src, index, dim_size + 1)
    gpu = getattr(ops, name)(src.cuda(), index.cuda(), dim_size + 1)
    assert torch.equal(cpu[1], gpu[1].cpu())
    assert torch.equal(cpu[0], gpu[0].cpu())


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_extreme_ties_and_nan_same_as_cpu(name, dtype):
    gen = generator(3)
    src = torch.randint(-2, 3, (30_000, 4), generator=gen).to(dtype)
    src[torch.rand(30_000, 4, generator=gen) < 0.001] = float("nan")
    ptr = random_ptr(500, 30_000, gen)
    index = random_index(30_000, 500, gen)
    for fn, second in ((getattr(ops, f"segment_{name}"), (ptr,)),
                       (getattr(ops, f"scatter_{name}"), (index, 500))):
        cpu_values, cpu_arg = fn(src, *second)
        gpu_values, gpu_arg = fn(src.cuda(), *(t.cuda() if torch.is_tensor(t) else t
                                               for t in second))
        assert torch.equal(cpu_arg, gpu_arg.cpu())
        torch.testing.assert_close(gpu_values.cpu(), cpu_values, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", ["scatter_sum", "scatter_mean"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_scatter_sum_close_to_reference(name, layout, dtype):
    src, ptr = layout_case(layout, dtype, seed=4)
    dim_size = max(ptr.numel() - 1, 1)
    index = random_index(src.shape[0], dim_size, generator(5))
    got = getattr(ops, name)(src.cuda(), index.cuda(), dim_size)
    ref = getattr(reference, name)
    exact = ref(src.double(), index, dim_size)
    exact_abs = ref(src.double().abs(), index, dim_size)
    assert_reduction_close(got, exact, exact_abs, dtype)


@pytest.mark.parametrize("name", SEGMENT)
@pytest.mark.parametrize("layout", ["small", "one_huge_segment", "wide", "tiny_segments"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_segment_low_precision_close_to_reference(name, layout, dtype):
    src, ptr = layout_case(layout, dtype, seed=6)
    got = as_tuple(getattr(ops, name)(src.cuda(), ptr.cuda()))
    if name in ("segment_sum", "segment_mean"):
        ref = getattr(reference, name)
        assert_reduction_close(got[0], ref(src.double(), ptr), ref(src.double().abs(), ptr),
                               dtype)
    else:
        values, arg = getattr(reference, name)(src.double(), ptr)
        assert torch.equal(got[1].cpu(), arg)
        assert torch.equal(got[0].cpu().double(), values)


def test_bf16_accumulates_in_float32_on_gpu():
    ones = torch.ones(1000, 3, dtype=torch.bfloat16, device="cuda")
    ptr = torch.tensor([0, 1000], device="cuda")
    assert ops.segment_sum(ones, ptr).float().tolist() == [[1000.0] * 3]
    index = torch.zeros(1000, dtype=torch.long, device="cuda")
    assert ops.scatter_sum(ones, index).float().tolist() == [[1000.0] * 3]


@pytest.mark.parametrize("name", ["segment_broadcast", "arg_scatter", "arg_gather"])
@pytest.mark.parametrize("layout", ["small", "many_empty_segments", "wide", "three_dims"])
def test_helper_ops_same_bits_as_cpu(name, layout):
    src, ptr = layout_case(layout, seed=7)
    _, arg = _ops.segment_max(src, ptr)
    segments = ptr.numel() - 1
    values = random_src((segments, *src.shape[1:]), torch.float64, generator(8))
    if name == "segment_broadcast":
        args = (values, ptr, src.shape[0])
    elif name == "arg_scatter":
        args = (values, arg, src.shape[0])
    else:
        args = (src, arg)
    cpu = getattr(_ops, name)(*args)
    gpu = getattr(_ops, name)(*(a.cuda() if torch.is_tensor(a) else a for a in args))
    assert torch.equal(cpu, gpu.cpu())


# ----------------------------------------------------------------- backward: GPU == CPU
@pytest.mark.parametrize("name", SEGMENT + SCATTER)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_backward_same_as_cpu(name, dtype):
    gen = generator(len(name))
    rows, segments = 5_000, 300
    ptr = random_ptr(segments, rows, gen)
    index = random_index(rows, segments, gen)
    base = tie_free_src((rows, 6), gen).to(dtype)
    grads = []
    for device in ("cpu", "cuda"):
        src = base.to(device).requires_grad_()
        second = (ptr.to(device),) if name in SEGMENT else (index.to(device), segments)
        out = as_tuple(getattr(ops, name)(src, *second))[0]
        grad_out = random_src(out.shape, dtype, generator(9)).to(device)
        (grad,) = torch.autograd.grad(out, src, grad_out)
        grads.append(grad.cpu())
    if dtype == torch.float64 and name != "scatter_mean":
        assert torch.equal(grads[0], grads[1])
    else:
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-2 if dtype != torch.float64
                                   else 1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SEGMENT + SCATTER)
def test_double_backward_on_gpu(name):
    gen = generator(len(name) + 50)
    ptr = torch.tensor([0, 3, 3, 7, 8], device="cuda")
    index = torch.tensor([2, 0, 3, 3, 0, 2, 2, 1], device="cuda")
    src = tie_free_src((8, 3), gen, device="cuda").requires_grad_()
    second = (ptr,) if name in SEGMENT else (index, 5)
    fn = getattr(ops, name)
    assert torch.autograd.gradcheck(lambda x: as_tuple(fn(x, *second))[0], (src,))
    assert torch.autograd.gradgradcheck(lambda x: as_tuple(fn(x, *second))[0], (src,))


# ----------------------------------------------------------------- determinism and streams
@pytest.mark.parametrize("name", SEGMENT + ["scatter_max", "scatter_min"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_gpu_deterministic(name, dtype):
    src, ptr = layout_case("one_huge_segment", dtype, seed=10)
    src = src.cuda()
    if name in SEGMENT:
        second = (ptr.cuda(),)
    else:
        second = (random_index(src.shape[0], 50, generator(11)).cuda(), 50)
    first = [t.clone() for t in as_tuple(getattr(ops, name)(src, *second))]
    for _ in range(3):
        again = as_tuple(getattr(ops, name)(src, *second))
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_ops_run_on_the_current_stream():
    src, ptr = layout_case("wide", seed=12)
    expected = ops.segment_sum(src, ptr)
    src, ptr = src.cuda(), ptr.cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = ops.segment_sum(src, ptr)
        out_max, _ = ops.segment_max(src, ptr)
    stream.synchronize()
    assert torch.equal(out.cpu(), expected)
    assert torch.equal(out_max.cpu(), ops.segment_max(src.cpu(), ptr.cpu())[0])


def test_non_contiguous_on_gpu():
    gen = generator(13)
    src = random_src((9, 4_000), torch.float64, gen).t()
    ptr = random_ptr(70, 4_000, gen)
    for name in SEGMENT:
        cpu = as_tuple(getattr(ops, name)(src, ptr))
        gpu = as_tuple(getattr(ops, name)(src.cuda(), ptr.cuda().int()))
        for a, b in zip(cpu, gpu):
            assert torch.equal(a, b.cpu())


def test_gpu_public_ops_check_values():
    src = torch.randn(5, 2, device="cuda", dtype=torch.float64)
    with pytest.raises(ValueError, match="ptr"):
        ops.segment_sum(src, torch.tensor([0, 3, 2, 5], device="cuda"))
    with pytest.raises(ValueError, match="index"):
        ops.scatter_sum(src, torch.tensor([0, 1, 7, 1, 0], device="cuda"), 4)

"""Forward behaviour of the scattered (unsorted index) reductions.

pygfm.ops.scatter_sum / scatter_mean / scatter_max / scatter_min against the
plain-PyTorch specification in pygfm.ops.reference, evaluated in float64, and
against the segment ops when the index is sorted.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (
    DTYPES,
    assert_reduction_close,
    bf16_half_ulp,
    generator,
    random_index,
    random_ptr,
    random_src,
)
from pygfm import ops
from pygfm.ops import reference

SCATTER = {
    "sum": ops.scatter_sum,
    "mean": ops.scatter_mean,
    "max": ops.scatter_max,
    "min": ops.scatter_min,
}
SEGMENT = {
    "sum": ops.segment_sum,
    "mean": ops.segment_mean,
    "max": ops.segment_max,
    "min": ops.segment_min,
}
REFERENCE = {
    "sum": reference.scatter_sum,
    "mean": reference.scatter_mean,
    "max": reference.scatter_max,
    "min": reference.scatter_min,
}
NAN = float("nan")
INF = float("inf")


def seed_of(*parts) -> int:
    return zlib.crc32("-".join(map(str, parts)).encode())


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def check_scatter_op(name, src, index, dim_size=None):
    """Run the public op and compare it with the float64 reference."""
    out = SCATTER[name](src, index, dim_size) if dim_size is not None else SCATTER[name](src, index)
    expected_rows = dim_size if dim_size is not None else (
        int(index.max()) + 1 if index.numel() else 0)
    index64 = index.to("cpu", torch.long)
    exact_src = src.detach().to("cpu", torch.float64)
    if name in ("sum", "mean"):
        assert out.dtype == src.dtype and out.device == src.device
        assert out.shape == (expected_rows, *src.shape[1:])
        exact = REFERENCE[name](exact_src, index64, expected_rows)
        exact_abs = REFERENCE[name](exact_src.abs(), index64, expected_rows)
        assert_reduction_close(out, exact, exact_abs, src.dtype)
    else:
        values, arg = out
        assert values.dtype == src.dtype and arg.dtype == torch.long
        assert values.shape == arg.shape == (expected_rows, *src.shape[1:])
        ref_values, ref_arg = REFERENCE[name](exact_src, index64, expected_rows)
        assert torch.equal(arg.cpu(), ref_arg)
        torch.testing.assert_close(values.cpu().double(), ref_values, rtol=0, atol=0,
                                   equal_nan=True)
    return out


# ----------------------------------------------------------------- random forward (hypothesis)
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(0, 300),
    dim_size=st.integers(1, 60),
    extra_rows=st.sampled_from([None, 0, 3]),
    trailing=st.sampled_from([(), (1,), (3,), (7,), (2, 3), (64,), (300,)]),
    dtype=st.sampled_from(DTYPES),
    name=st.sampled_from(list(SCATTER)),
)
def test_random_forward_matches_reference(seed, rows, dim_size, extra_rows, trailing, dtype,
                                          name, device):
    gen = generator(seed)
    index = random_index(rows, dim_size, gen).to(device)
    src = random_src((rows, *trailing), dtype, gen, device)
    if extra_rows is None:  # default dim_size: index.max() + 1
        check_scatter_op(name, src, index)
    else:
        check_scatter_op(name, src, index, dim_size + extra_rows)


@pytest.mark.parametrize("name", SCATTER)
@pytest.mark.parametrize("case", ["100k_rows_few_targets", "100k_rows_many_targets",
                                  "one_target", "mostly_empty_targets", "wide_features"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_cases_match_reference(case, name, dtype, device):
    gen = generator(seed_of(case, name, dtype))
    rows, dim_size, features = {
        "100k_rows_few_targets": (100_000, 7, 3),
        "100k_rows_many_targets": (100_000, 30_000, 2),
        "one_target": (50_000, 1, 5),
        "mostly_empty_targets": (500, 40_000, 3),
        "wide_features": (2_000, 50, 300),
    }[case]
    index = random_index(rows, dim_size, gen).to(device)
    src = random_src((rows, features), dtype, gen, device)
    check_scatter_op(name, src, index, dim_size)


def test_explicit_values(device):
    src = torch.tensor([[1.0, -2.0], [3.0, 4.0], [5.0, 0.5], [-1.0, 8.0]],
                       dtype=torch.float64, device=device)
    index = torch.tensor([2, 0, 2, 2], device=device)
    assert torch.equal(ops.scatter_sum(src, index).cpu(),
                       torch.tensor([[3.0, 4.0], [0.0, 0.0], [5.0, 6.5]], dtype=torch.float64))
    assert torch.equal(ops.scatter_mean(src, index, 4).cpu(),
                       torch.tensor([[3.0, 4.0], [0.0, 0.0], [5.0 / 3, 6.5 / 3], [0.0, 0.0]],
                                    dtype=torch.float64))
    values, arg = ops.scatter_max(src, index)
    assert values.cpu().tolist() == [[3.0, 4.0], [0.0, 0.0], [5.0, 8.0]]
    assert arg.cpu().tolist() == [[1, 1], [-1, -1], [2, 3]]
    values, arg = ops.scatter_min(src, index)
    assert values.cpu().tolist() == [[3.0, 4.0], [0.0, 0.0], [-1.0, -2.0]]
    assert arg.cpu().tolist() == [[1, 1], [-1, -1], [3, 0]]


def assert_same(name, a, b):
    """Bitwise equal, except scatter_sum/mean on a GPU: atomics add in any
    order there, so two calls agree only to rounding."""
    if name in ("sum", "mean") and a.device.type != "cpu":
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(a, b)


# ----------------------------------------------------------------- dim_size and empty rows
@pytest.mark.parametrize("name", SCATTER)
def test_default_dim_size_is_index_max_plus_one(name, device):
    gen = generator(seed_of("default", name))
    index = torch.tensor([4, 1, 4, 9, 1, 0], device=device)
    src = random_src((6, 3), torch.float64, gen, device)
    default = as_tuple(SCATTER[name](src, index))
    explicit = as_tuple(SCATTER[name](src, index, 10))
    assert default[0].shape == (10, 3)
    for a, b in zip(default, explicit):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", SCATTER)
def test_larger_dim_size_pads_with_empty_rows(name, device):
    gen = generator(seed_of("larger", name))
    index = random_index(200, 12, gen).to(device)
    src = random_src((200, 3), torch.float64, gen, device)
    tight = as_tuple(SCATTER[name](src, index, 12))
    padded = as_tuple(SCATTER[name](src, index, 20))
    assert padded[0].shape == (20, 3)
    assert_same(name, padded[0][:12], tight[0])
    assert (padded[0][12:] == 0).all()
    if len(padded) == 2:
        assert torch.equal(padded[1][:12], tight[1])
        assert (padded[1][12:] == -1).all()


@pytest.mark.parametrize("name", SCATTER)
def test_rows_receiving_nothing(name, device):
    src = torch.arange(1.0, 13.0, dtype=torch.float64, device=device).view(4, 3)
    index = torch.tensor([3, 1, 3, 1], device=device)  # rows 0 and 2 receive nothing
    out = as_tuple(SCATTER[name](src, index, 5))
    for row in (0, 2, 4):
        assert out[0][row].cpu().tolist() == [0.0, 0.0, 0.0]
        if len(out) == 2:
            assert out[1][row].cpu().tolist() == [-1, -1, -1]
    check_scatter_op(name, src, index, 5)


@pytest.mark.parametrize("name", SCATTER)
@pytest.mark.parametrize("dim_size", [None, 0, 4])
def test_empty_src(name, dim_size, device):
    src = torch.zeros(0, 3, dtype=torch.float32, device=device)
    index = torch.zeros(0, dtype=torch.long, device=device)
    out = as_tuple(SCATTER[name](src, index, dim_size))
    rows = dim_size or 0
    assert out[0].shape == (rows, 3) and (out[0] == 0).all()
    if len(out) == 2:
        assert out[1].shape == (rows, 3) and (out[1] == -1).all()


@pytest.mark.parametrize("name", SCATTER)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int16], ids=str)
def test_small_integer_index_is_accepted(name, index_dtype, device):
    gen = generator(seed_of("int", name, index_dtype))
    index = random_index(150, 9, gen)
    src = random_src((150, 2), torch.float64, gen, device)
    got = as_tuple(SCATTER[name](src, index.to(device=device, dtype=index_dtype), 9))
    want = as_tuple(SCATTER[name](src, index.to(device), 9))
    for a, b in zip(got, want):
        assert_same(name, a, b)


@pytest.mark.parametrize("name", SCATTER)
@pytest.mark.parametrize("layout", ["transposed", "strided", "1d_strided"])
def test_non_contiguous_inputs(name, layout, device):
    gen = generator(seed_of("nc", name, layout))
    rows = 500
    if layout == "transposed":
        src = random_src((6, rows), torch.float64, gen, device).t()
    elif layout == "strided":
        src = random_src((rows, 3, 8), torch.float64, gen, device)[:, ::2, 1:]
    else:
        src = random_src((2 * rows,), torch.float64, gen, device)[::2]
    index = random_index(2 * rows, 40, gen).to(device)[1::2]
    assert not src.is_contiguous() and not index.is_contiguous()
    check_scatter_op(name, src, index, 40)
    for a, b in zip(as_tuple(SCATTER[name](src, index, 40)),
                    as_tuple(SCATTER[name](src.contiguous(), index.contiguous(), 40))):
        assert_same(name, a, b)


# ----------------------------------------------------------------- max / min semantics
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_pick_the_lowest_row(dtype, device):
    src = torch.tensor([[2.0, 1.0], [5.0, 1.0], [5.0, 0.0], [2.0, 0.0], [5.0, 1.0]],
                       dtype=dtype, device=device)
    index = torch.tensor([1, 0, 1, 1, 0], device=device)
    values, arg = ops.scatter_max(src, index)
    assert values.float().cpu().tolist() == [[5.0, 1.0], [5.0, 1.0]]
    assert arg.cpu().tolist() == [[1, 1], [2, 0]]
    values, arg = ops.scatter_min(src, index)
    assert values.float().cpu().tolist() == [[5.0, 1.0], [2.0, 0.0]]
    assert arg.cpu().tolist() == [[1, 1], [0, 2]]


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_many_random_ties_match_reference(name, dtype, device):
    gen = generator(seed_of("ties", name, dtype))
    index = random_index(40_000, 700, gen).to(device)
    src = torch.randint(-3, 4, (40_000, 5), generator=gen).to(device=device, dtype=dtype)
    check_scatter_op(name, src, index, 701)


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_wins_and_first_nan_is_the_arg(name, dtype, device):
    src = torch.tensor([[1.0, 2.0], [NAN, 3.0], [4.0, NAN], [NAN, NAN], [0.0, 9.0]],
                       dtype=dtype, device=device)
    index = torch.tensor([0, 1, 0, 0, 1], device=device)
    values, arg = SCATTER[name](src, index)
    # output row 0 gets rows 0, 2, 3; row 1 gets rows 1, 4
    assert arg.cpu().tolist() == [[3, 2], [1, 4 if name == "max" else 1]]
    values = values.float().cpu()
    assert torch.isnan(values[0]).all() and torch.isnan(values[1, 0])
    assert values[1, 1].item() == (9.0 if name == "max" else 3.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_infinities(dtype, device):
    src = torch.tensor([[-INF, INF], [-INF, INF], [3.0, -INF], [-INF, 2.0]],
                       dtype=dtype, device=device)
    index = torch.tensor([1, 1, 0, 0], device=device)
    values, arg = ops.scatter_max(src, index)
    assert values.float().cpu().tolist() == [[3.0, 2.0], [-INF, INF]]
    assert arg.cpu().tolist() == [[2, 3], [0, 0]]
    values, arg = ops.scatter_min(src, index)
    assert values.float().cpu().tolist() == [[-INF, -INF], [-INF, INF]]
    assert arg.cpu().tolist() == [[3, 2], [0, 0]]


@pytest.mark.parametrize("name", ["max", "min"])
def test_signed_zero_value_is_the_arg_row(name, device):
    gen = generator(seed_of("zeros", name))
    zeros = torch.where(torch.rand(4000, 6, generator=gen) < 0.5, 0.0, -0.0).double()
    index = random_index(4000, 100, gen)
    values, arg = SCATTER[name](zeros.to(device), index.to(device), 100)
    values, arg = values.cpu(), arg.cpu()
    assert torch.equal(torch.signbit(values), torch.signbit(reference.arg_gather(zeros, arg)))
    first = torch.full((100,), 4000).scatter_reduce(0, index, torch.arange(4000), "amin")
    first = torch.where(first == 4000, -1, first)  # a target that received nothing
    assert torch.equal(arg, first.view(-1, 1).expand(100, 6))


# ----------------------------------------------------------------- sorted index == segment ops
@pytest.mark.parametrize("name", SCATTER)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", ["small", "large"])
def test_sorted_index_equals_segment_op(name, dtype, size, device):
    gen = generator(seed_of("sorted", name, dtype, size))
    segments, rows = (30, 200) if size == "small" else (3_000, 60_000)
    ptr = random_ptr(segments, rows, gen)
    index = reference.segment_ids(ptr, rows)
    src = random_src((rows, 4), dtype, gen, device)
    scattered = as_tuple(SCATTER[name](src, index.to(device), segments))
    segmented = as_tuple(SEGMENT[name](src, ptr.to(device)))
    exact_bits = name in ("max", "min") or (name == "sum" and device == "cpu")
    for a, b in zip(scattered, segmented):
        if exact_bits:
            # Same rows, same order, same accumulator: the same bits.
            assert torch.equal(a, b)
        else:
            exact = REFERENCE[name](src.double().cpu(), index, segments)
            exact_abs = REFERENCE[name](src.double().abs().cpu(), index, segments)
            assert_reduction_close(a, exact, exact_abs, dtype)
            assert_reduction_close(b, exact, exact_abs, dtype)


# ----------------------------------------------------------------- bfloat16 accumulates in float32
def test_bf16_scatter_sum_accumulates_in_float32(device):
    values = torch.full((4096,), 2.0**-9, dtype=torch.float64)
    values[0] = 1.0
    src = torch.stack([torch.ones(4096, dtype=torch.float64), values], 1)
    src = src.to(device=device, dtype=torch.bfloat16)
    index = torch.zeros(4096, dtype=torch.long, device=device)
    got = ops.scatter_sum(src[:1000], index[:1000])
    assert got.float().cpu().tolist()[0][0] == 1000.0  # a bf16 running sum stalls at 256
    got = ops.scatter_sum(src, index)
    assert got.float().cpu().tolist() == [[4096.0, 9.0]]  # 8.998 rounded once to bf16
    mean = ops.scatter_mean(src, index, 2)
    assert mean.float().cpu()[0, 0].item() == 1.0 and (mean[1] == 0).all()


MEANS = ["segment_mean", "scatter_mean"]


def _mean(name, src, index, segments):
    if name == "segment_mean":
        ptr = torch.cat([torch.zeros(1, dtype=torch.long),
                         torch.bincount(index.cpu(), minlength=segments).cumsum(0)])
        return ops.segment_mean(src, ptr.to(src.device))
    return ops.scatter_mean(src, index, segments)


@pytest.mark.parametrize("name", MEANS)
@pytest.mark.parametrize("rows", [3, 256, 257, 383, 1000, 1001])
def test_bf16_mean_of_identical_values_is_that_value(name, rows, device):
    """The mean of n copies of 1.5 is 1.5 (exact in bf16), whatever n is.

    Fails where the row count or the sum is rounded to bf16 before dividing
    (257 -> 256 in bf16: 385.5 rounds to 386, 386 / 256 = 1.5078125).
    """
    src = torch.full((rows, 2), 1.5, dtype=torch.bfloat16, device=device)
    index = torch.zeros(rows, dtype=torch.long, device=device)
    got = _mean(name, src, index, 1)
    assert got.float().cpu().tolist() == [[1.5, 1.5]]


@pytest.mark.parametrize("name", MEANS)
def test_bf16_mean_is_rounded_to_bf16_once(name, device):
    """Spec (reference.py): bf16 is reduced in float32 and rounded to bf16 once.

    One rounding keeps the result within half a bf16 ulp of the exact mean.
    Dividing an already-rounded bf16 sum (or by a bf16-rounded count) rounds
    twice and can miss by almost a whole ulp.
    """
    gen = generator(seed_of("bf16-mean", name))
    rows, segments = 200_000, 20_000
    index = random_index(rows, segments, gen).sort().values
    src = random_src((rows, 4), torch.bfloat16, gen)
    got = _mean(name, src.to(device), index.to(device), segments)
    exact = reference.scatter_mean(src.double(), index, segments)
    exact_abs = reference.scatter_mean(src.double().abs(), index, segments)
    error = (got.cpu().double() - exact).abs()
    allowed = bf16_half_ulp(exact) + 1e-6 * exact_abs + 1e-30
    worst = (error / exact.abs().clamp(min=1e-30)).max().item()
    assert (error <= allowed).all(), (
        f"{int((error > allowed).sum())} of {error.numel()} results off by more than one "
        f"bf16 rounding; worst relative error {worst:.4f}"
    )


# ----------------------------------------------------------------- determinism (CPU)
@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _bits(tensor):
    kind = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16}
    return tensor.view(kind[tensor.dtype]).clone() if tensor.dtype in kind else tensor.clone()


@pytest.mark.parametrize("name", SCATTER)
@pytest.mark.parametrize("targets", [3, 5_000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_result_independent_of_thread_count(name, targets, dtype, restore_threads):
    gen = generator(seed_of("threads", name, targets, dtype))
    index = random_index(50_000, targets, gen)
    src = random_src((50_000, 6), dtype, gen)

    def run():
        return [_bits(t) for t in as_tuple(SCATTER[name](src, index, targets))]

    torch.set_num_threads(2)
    first, again = run(), run()
    torch.set_num_threads(1)
    serial = run()
    for a, b, c in zip(first, again, serial):
        assert torch.equal(a, b), "two runs differ"
        assert torch.equal(a, c), "1 and 2 threads differ"

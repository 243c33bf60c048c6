"""Forward behaviour of the CSR (segmented) reductions.

pygfm.ops.segment_sum / segment_mean / segment_max / segment_min against the
plain-PyTorch specification in pygfm.ops.reference, evaluated in float64.
"""

from __future__ import annotations

import math
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
    random_ptr,
    random_src,
)
from pygfm import ops
from pygfm.ops import reference

SUM_LIKE = {"sum": ops.segment_sum, "mean": ops.segment_mean}
EXTREME = {"max": ops.segment_max, "min": ops.segment_min}
REF_EXTREME = {"max": reference.segment_max, "min": reference.segment_min}
ALL_OPS = [*SUM_LIKE, *EXTREME]

NAN = float("nan")
INF = float("inf")


# ----------------------------------------------------------------- checking helpers
def check_segment_op(name: str, src: torch.Tensor, ptr: torch.Tensor) -> None:
    """Run the public op on ``src`` / ``ptr`` and compare with the float64 reference."""
    ptr64 = ptr.to("cpu", torch.long)
    exact_src = src.detach().to("cpu", torch.float64)
    if name in SUM_LIKE:
        got = SUM_LIKE[name](src, ptr)
        assert got.dtype == src.dtype and got.device == src.device
        assert got.shape == (ptr.numel() - 1, *src.shape[1:])
        ref = reference.segment_sum if name == "sum" else reference.segment_mean
        assert_reduction_close(got, ref(exact_src, ptr64), ref(exact_src.abs(), ptr64), src.dtype)
    else:
        values, arg = EXTREME[name](src, ptr)
        assert values.dtype == src.dtype and arg.dtype == torch.long
        assert values.shape == arg.shape == (ptr.numel() - 1, *src.shape[1:])
        ref_values, ref_arg = REF_EXTREME[name](exact_src, ptr64)
        # Max/min involve no arithmetic: values and args match exactly, ties included
        # (the float64 copy of the input orders exactly like the input).
        assert torch.equal(arg.cpu(), ref_arg)
        torch.testing.assert_close(values.cpu().double(), ref_values, rtol=0, atol=0,
                                   equal_nan=True)


def naive_bf16_sum(values: torch.Tensor) -> float:
    """Running sum kept in bfloat16 (what accumulation in the storage type gives)."""
    total = torch.zeros((), dtype=torch.bfloat16)
    for value in values.to(torch.bfloat16):
        total = total + value
    return float(total)


# ----------------------------------------------------------------- random forward (hypothesis)
TRAILING = [(), (1,), (3,), (7,), (2, 3), (3, 5), (64,), (300,)]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_segments=st.integers(0, 40),
    rows=st.integers(0, 200),
    trailing=st.sampled_from(TRAILING),
    dtype=st.sampled_from(DTYPES),
    name=st.sampled_from(ALL_OPS),
    empty_fraction=st.sampled_from([0.0, 0.3, 0.9]),
)
def test_random_forward_matches_reference(seed, num_segments, rows, trailing, dtype, name,
                                          empty_fraction, device):
    if num_segments == 0:
        rows = 0
    gen = generator(seed)
    ptr = random_ptr(num_segments, rows, gen, empty_fraction)
    src = random_src((rows, *trailing), dtype, gen, device)
    check_segment_op(name, src, ptr.to(device))


# ----------------------------------------------------------------- explicit shapes
def _lengths(kind: str, gen: torch.Generator) -> list[int] | tuple[int, int]:
    """Segment layouts: a list of lengths or (num_segments, rows) for random_ptr."""
    if kind == "empty":
        return []
    if kind == "segments_without_rows":
        return [0] * 5
    if kind == "single_row":
        return [1]
    if kind == "tiny_segments":
        return torch.randint(0, 4, (3000,), generator=gen).tolist()
    if kind == "one_huge_segment":
        return [100_000]
    if kind == "huge_between_empties":
        return [0, 0, 100_000 - 7, 0, 7, 0]
    if kind == "many_empty_segments":
        lengths = [0] * 20_000
        for position in torch.randint(0, 20_000, (50,), generator=gen).tolist():
            lengths[position] += 3
        return lengths
    if kind == "random_100k_rows":
        return (500, 100_000)
    raise AssertionError(kind)


LAYOUTS = [
    "empty",
    "segments_without_rows",
    "single_row",
    "tiny_segments",
    "one_huge_segment",
    "huge_between_empties",
    "many_empty_segments",
    "random_100k_rows",
]


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layouts_match_reference(layout, name, dtype, device):
    gen = generator(zlib.crc32(f"{layout}-{name}-{dtype}".encode()))
    spec = _lengths(layout, gen)
    if isinstance(spec, tuple):
        ptr = random_ptr(*spec, gen)
    else:
        ptr = random_ptr(len(spec), spec, gen)
    rows = int(ptr[-1])
    trailing = (3,) if rows > 10_000 else (7,)
    src = random_src((rows, *trailing), dtype, gen, device)
    check_segment_op(name, src, ptr.to(device))


def test_empty_input_gives_empty_output(device):
    src = torch.zeros(0, 4, dtype=torch.float64, device=device)
    ptr = torch.zeros(1, dtype=torch.long, device=device)
    assert ops.segment_sum(src, ptr).shape == (0, 4)
    assert ops.segment_mean(src, ptr).shape == (0, 4)
    values, arg = ops.segment_max(src, ptr)
    assert values.shape == arg.shape == (0, 4)
    values, arg = ops.segment_min(src, ptr)
    assert values.shape == arg.shape == (0, 4)


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("features", [1, 3, 7, 64, 255, 256, 257, 300, 700])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_feature_widths_match_reference(features, name, dtype, device):
    """Narrow and wide rows, across the 256-feature internal block boundary."""
    gen = generator(features * 31 + len(name))
    ptr = random_ptr(40, 400, gen)
    src = random_src((400, features), dtype, gen, device)
    check_segment_op(name, src, ptr.to(device))


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("shape", [(0,), (1,), (6,), (6, 3, 7), (6, 2, 3, 4), (6, 0), (6, 3, 0)])
def test_trailing_shapes_match_reference(shape, name, device):
    gen = generator(sum(shape) * 7 + len(name))
    rows = 97 * shape[0] // 6
    ptr = random_ptr(9, rows, gen) if rows else torch.zeros(1, dtype=torch.long)
    src = random_src((rows, *shape[1:]), torch.float64, gen, device)
    check_segment_op(name, src, ptr.to(device))


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("layout", ["transposed", "strided_rows", "strided_features",
                                    "expanded", "1d_strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_src(layout, name, dtype, device):
    gen = generator(len(layout) * 13 + len(name))
    rows = 300
    if layout == "transposed":
        src = random_src((17, rows), dtype, gen, device).t()
    elif layout == "strided_rows":
        src = random_src((2 * rows, 9), dtype, gen, device)[::2]
    elif layout == "strided_features":
        src = random_src((rows, 3, 10), dtype, gen, device)[:, 1:, ::3]
    elif layout == "expanded":
        src = random_src((rows, 1), dtype, gen, device).expand(rows, 5)
    else:
        src = random_src((3 * rows,), dtype, gen, device)[1::3]
    assert not src.is_contiguous()
    ptr = random_ptr(31, rows, gen)
    check_segment_op(name, src, ptr.to(device))
    # and the same result as for a contiguous copy
    out = (SUM_LIKE | EXTREME)[name]
    got, want = out(src, ptr.to(device)), out(src.contiguous(), ptr.to(device))
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("ptr_dtype", [torch.int32, torch.int16, torch.uint8], ids=str)
def test_small_integer_ptr_is_accepted(ptr_dtype, name, device):
    gen = generator(11)
    ptr = random_ptr(12, 200, gen)
    src = random_src((200, 4), torch.float64, gen, device)
    fn = (SUM_LIKE | EXTREME)[name]
    got = fn(src, ptr.to(device=device, dtype=ptr_dtype))
    want = fn(src, ptr.to(device))
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        assert torch.equal(a, b)
    check_segment_op(name, src, ptr.to(device=device, dtype=ptr_dtype))


def test_non_contiguous_ptr_is_accepted(device):
    gen = generator(5)
    ptr = random_ptr(20, 100, gen)
    strided = torch.stack([ptr, torch.full_like(ptr, -1)], 1).to(device).reshape(-1)[::2]
    assert not strided.is_contiguous() and torch.equal(strided.cpu(), ptr)
    src = random_src((100, 3), torch.float64, gen, device)
    assert torch.equal(ops.segment_sum(src, strided), ops.segment_sum(src, ptr.to(device)))


def test_explicit_values(device):
    src = torch.tensor([[1.0, -2.0], [3.0, 4.0], [5.0, 0.5], [-1.0, 8.0]],
                       dtype=torch.float64, device=device)
    ptr = torch.tensor([0, 2, 2, 4], device=device)
    expected_sum = torch.tensor([[4.0, 2.0], [0.0, 0.0], [4.0, 8.5]], dtype=torch.float64)
    assert torch.equal(ops.segment_sum(src, ptr).cpu(), expected_sum)
    assert torch.equal(ops.segment_mean(src, ptr).cpu(),
                       torch.tensor([[2.0, 1.0], [0.0, 0.0], [2.0, 4.25]], dtype=torch.float64))
    values, arg = ops.segment_max(src, ptr)
    assert torch.equal(values.cpu(), torch.tensor([[3.0, 4.0], [0.0, 0.0], [5.0, 8.0]],
                                                  dtype=torch.float64))
    assert torch.equal(arg.cpu(), torch.tensor([[1, 1], [-1, -1], [2, 3]]))
    values, arg = ops.segment_min(src, ptr)
    assert torch.equal(values.cpu(), torch.tensor([[1.0, -2.0], [0.0, 0.0], [-1.0, 0.5]],
                                                  dtype=torch.float64))
    assert torch.equal(arg.cpu(), torch.tensor([[0, 0], [-1, -1], [3, 2]]))


# ----------------------------------------------------------------- bfloat16 accumulates in float32
def test_bf16_sum_of_ones_is_exact(device):
    ones = torch.ones(1000, 2, dtype=torch.bfloat16, device=device)
    ptr = torch.tensor([0, 1000], device=device)
    # Premise: a running sum kept in bfloat16 stalls at 256 (256 + 1 rounds to 256).
    assert naive_bf16_sum(torch.ones(1000)) == 256.0
    assert ops.segment_sum(ones, ptr).float().tolist() == [[1000.0, 1000.0]]
    assert ops.segment_mean(ones, ptr).float().tolist() == [[1.0, 1.0]]


def test_bf16_small_terms_are_not_lost(device):
    """1 + 4095 * 2**-9: in bfloat16 every small term rounds away; in float32 none does."""
    values = torch.full((4096,), 2.0**-9, dtype=torch.float64)
    values[0] = 1.0
    exact = float(values.sum())  # 8.998046875, exact in float64 and float32
    assert naive_bf16_sum(values[:300]) == 1.0  # premise: bf16 accumulation is stuck at 1
    src = values.to(torch.bfloat16).to(device).unsqueeze(1)
    ptr = torch.tensor([0, 4096], device=device)
    got = ops.segment_sum(src, ptr)
    assert got.dtype == torch.bfloat16
    assert float(got) == float(torch.tensor(exact).to(torch.bfloat16)) == 9.0
    mean = ops.segment_mean(src, ptr)
    assert float(mean) == float(torch.tensor(exact / 4096).to(torch.bfloat16))


def test_bf16_result_is_one_rounding_of_float32_sum(device):
    gen = generator(2024)
    ptr = random_ptr(64, 5000, gen)
    src = random_src((5000, 16), torch.bfloat16, gen, device)
    got = ops.segment_sum(src, ptr.to(device))
    exact = reference.segment_sum(src.double().cpu(), ptr)
    # One rounding of a (nearly exact) float32 sum to bf16: within half a bf16 ulp
    # of the exact sum, plus a tiny float32 accumulation error.
    half_ulp = bf16_half_ulp(exact)
    float32_error = 1e-6 * reference.segment_sum(src.double().abs().cpu(), ptr)
    assert ((got.cpu().double() - exact).abs() <= half_ulp + float32_error + 1e-30).all()


# ----------------------------------------------------------------- max / min semantics
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_pick_the_lowest_row(dtype, device):
    src = torch.tensor(
        [
            [1.0, 5.0, 2.0],  # segment 0: rows 0..4
            [3.0, 5.0, 2.0],
            [3.0, 1.0, 2.0],
            [0.0, 5.0, 1.0],
            [3.0, 1.0, 2.0],
            [7.0, 7.0, 7.0],  # segment 1: rows 5..7, all equal
            [7.0, 7.0, 7.0],
            [7.0, 7.0, 7.0],
        ],
        dtype=dtype,
        device=device,
    )
    ptr = torch.tensor([0, 5, 8], device=device)
    values, arg = ops.segment_max(src, ptr)
    assert values.float().cpu().tolist() == [[3.0, 5.0, 2.0], [7.0, 7.0, 7.0]]
    assert arg.cpu().tolist() == [[1, 0, 0], [5, 5, 5]]
    values, arg = ops.segment_min(src, ptr)
    assert values.float().cpu().tolist() == [[0.0, 1.0, 1.0], [7.0, 7.0, 7.0]]
    assert arg.cpu().tolist() == [[3, 2, 3], [5, 5, 5]]


@pytest.mark.parametrize("name", EXTREME)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_many_random_ties_match_reference(name, dtype, device):
    """Small integers: almost every segment has ties, on the parallel code path too."""
    gen = generator(99 + len(name))
    ptr = random_ptr(300, 40_000, gen)
    src = torch.randint(-3, 4, (40_000, 5), generator=gen).to(device=device, dtype=dtype)
    check_segment_op(name, src, ptr.to(device))


@pytest.mark.parametrize("name", EXTREME)
def test_empty_segments_give_fill_and_minus_one(name, device):
    src = torch.arange(12, dtype=torch.float64, device=device).view(4, 3) - 100.0
    ptr = torch.tensor([0, 0, 4, 4, 4], device=device)
    values, arg = EXTREME[name](src, ptr)
    assert ops.MAX_MIN_EMPTY_FILL == 0.0
    for s in (0, 2, 3):
        assert values[s].cpu().tolist() == [0.0, 0.0, 0.0]
        assert arg[s].cpu().tolist() == [-1, -1, -1]
    assert arg[1].cpu().tolist() == ([3, 3, 3] if name == "max" else [0, 0, 0])


@pytest.mark.parametrize("name", EXTREME)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_wins_and_first_nan_is_the_arg(name, dtype, device):
    src = torch.tensor(
        [
            [1.0, NAN, 0.0],  # segment 0: rows 0..3
            [NAN, 2.0, 5.0],
            [NAN, NAN, -5.0],
            [9.0, -9.0, 1.0],
            [NAN, 1.0, 2.0],  # segment 1: rows 4..5, NaN in the first row
            [3.0, 4.0, NAN],
        ],
        dtype=dtype,
        device=device,
    )
    ptr = torch.tensor([0, 4, 6], device=device)
    values, arg = EXTREME[name](src, ptr)
    values = values.float().cpu()
    assert arg.cpu().tolist() == [[1, 0, 1 if name == "max" else 2], [4, 5 if name == "max" else 4, 5]]
    assert torch.isnan(values[0, :2]).all() and torch.isnan(values[1, [0, 2]]).all()
    assert values[0, 2].item() == (5.0 if name == "max" else -5.0)
    assert values[1, 1].item() == (4.0 if name == "max" else 1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_infinities(dtype, device):
    src = torch.tensor(
        [[-INF, INF], [-INF, INF], [-INF, INF],  # segment 0: all -inf | all +inf
         [-INF, 2.0], [3.0, INF], [-INF, -INF]],  # segment 1: mixed
        dtype=dtype, device=device,
    )
    ptr = torch.tensor([0, 3, 6], device=device)
    values, arg = ops.segment_max(src, ptr)
    assert values.float().cpu().tolist() == [[-INF, INF], [3.0, INF]]
    assert arg.cpu().tolist() == [[0, 0], [4, 4]]
    values, arg = ops.segment_min(src, ptr)
    assert values.float().cpu().tolist() == [[-INF, INF], [-INF, -INF]]
    assert arg.cpu().tolist() == [[0, 0], [3, 5]]
    assert ops.segment_sum(src[:3], ptr[:2]).float().cpu().tolist() == [[-INF, INF]]


IMPLEMENTATIONS = {
    "kernel": EXTREME,
    "reference": REF_EXTREME,
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", EXTREME)
def test_nan_beats_an_earlier_infinity(implementation, name):
    """Documented: "NaN counts as the maximum" (and minimum), even against +-inf.

    The reference ranks NaN as -fill = +-inf, so it ties with an infinity that
    comes first and returns the infinity instead of NaN.
    """
    inf = INF if name == "max" else -INF
    src = torch.tensor([[inf], [NAN], [1.0]], dtype=torch.float64)
    ptr = torch.tensor([0, 3])
    values, arg = IMPLEMENTATIONS[implementation][name](src, ptr)
    assert math.isnan(values.item()), f"{implementation} {name} gave {values.item()}"
    assert arg.item() == 1


@pytest.mark.parametrize("name", EXTREME)
def test_signed_zero_value_is_the_arg_row(name, device):
    """The returned value has the bits of src[arg] (matters for +0.0 / -0.0 ties)."""
    gen = generator(3)
    zeros = torch.where(torch.rand(4000, 6, generator=gen) < 0.5, 0.0, -0.0).double()
    ptr = random_ptr(100, 4000, gen)
    values, arg = EXTREME[name](zeros.to(device), ptr.to(device))
    values, arg = values.cpu(), arg.cpu()
    gathered = reference.arg_gather(zeros, arg)
    assert torch.equal(torch.signbit(values), torch.signbit(gathered))
    first_row = ptr[:-1].view(-1, 1).expand_as(arg)
    nonempty = ptr.diff() > 0
    assert torch.equal(arg[nonempty], first_row[nonempty])  # +0.0 == -0.0: a tie


# ----------------------------------------------------------------- determinism (CPU)
@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype == torch.float64:
        return tensor.view(torch.int64)
    if tensor.dtype == torch.float32:
        return tensor.view(torch.int32)
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16)
    return tensor


def _run(name, src, ptr):
    out = (SUM_LIKE | EXTREME)[name](src, ptr)
    return [_bits(t).clone() for t in (out if isinstance(out, tuple) else (out,))]


# Layouts that reach every CPU partitioning: many segments split by rows,
# a few segments whose features are split, one segment, many empty segments.
THREAD_LAYOUTS = {
    "many_segments": (2000, 60_000, 8),
    "few_segments_feature_split": (3, 30_000, 64),
    "one_segment_wide": (1, 20_000, 300),
    "mostly_empty": (50_000, 8_000, 4),
}


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("layout", THREAD_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_result_independent_of_thread_count(name, layout, dtype, restore_threads):
    segments, rows, features = THREAD_LAYOUTS[layout]
    gen = generator(rows + features)
    ptr = random_ptr(segments, rows, gen, empty_fraction=0.9 if layout == "mostly_empty" else 0.2)
    src = random_src((rows, features), dtype, gen)
    torch.set_num_threads(2)
    first = _run(name, src, ptr)
    again = _run(name, src, ptr)
    torch.set_num_threads(1)
    serial = _run(name, src, ptr)
    for a, b, c in zip(first, again, serial):
        assert torch.equal(a, b), "two runs differ"
        assert torch.equal(a, c), "1 and 2 threads differ"
    if layout == "few_segments_feature_split" and dtype == torch.float64:
        check_segment_op(name, src, ptr)


@pytest.mark.parametrize("dtype,features", [(torch.float32, 64), (torch.bfloat16, 128), (torch.float64, 30)])
def test_large_broadcast_takes_the_streaming_path_and_matches_reference(dtype, features):
    # > 8 MB of output with 16-byte rows: the CPU kernel streams its stores past
    # the cache (F = 30 doubles is 240 bytes a row, also a multiple of 16).
    generator = torch.Generator().manual_seed(11)
    lengths = torch.randint(0, 40, (4000,), generator=generator)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    rows = int(ptr[-1])
    assert rows * features * torch.tensor([], dtype=dtype).element_size() > 8 << 20
    src = torch.randn(4000, features, generator=generator).to(dtype)
    got = torch.ops.pygfm.segment_broadcast(src, ptr, rows)
    expected = reference.segment_broadcast(src, ptr, rows)
    assert torch.equal(got, expected)

"""Bad arguments raise the documented exception, naming the argument.

The public front ends (pygfm.ops.*) raise TypeError for a wrong type or dtype
and ValueError for a wrong shape, value or device. The raw torch.ops.pygfm.*
ops check on the CPU too and raise (ValueError / IndexError / TypeError)
instead of reading or writing out of bounds.
"""

from __future__ import annotations

import pytest
import torch

from conftest import HAS_CUDA
from pygfm import ops

_ops = torch.ops.pygfm

SEGMENT_OPS = [ops.segment_sum, ops.segment_mean, ops.segment_max, ops.segment_min]
SCATTER_OPS = [ops.scatter_sum, ops.scatter_mean, ops.scatter_max, ops.scatter_min]


def ids(fn):
    return fn.__name__


def src_rows(rows=5, features=2, dtype=torch.float64, device="cpu"):
    return torch.randn(rows, features, dtype=dtype, device=device)


GOOD_PTR = torch.tensor([0, 2, 2, 5])
GOOD_INDEX = torch.tensor([0, 3, 1, 1, 0])


# ----------------------------------------------------------------- ptr
BAD_PTRS = {
    "not_monotonic": (torch.tensor([0, 3, 2, 5]), ValueError, r"ptr.*non-decreasing"),
    "first_not_zero": (torch.tensor([1, 2, 5]), ValueError, r"ptr\[0\] must be 0"),
    "negative_first": (torch.tensor([-1, 2, 5]), ValueError, r"ptr\[0\]"),
    "last_too_small": (torch.tensor([0, 2, 4]), ValueError, r"ptr\[-1\] = 4 .*\(5\)"),
    "last_too_large": (torch.tensor([0, 2, 6]), ValueError, r"ptr\[-1\] = 6"),
    "two_dimensional": (torch.tensor([[0, 2, 5]]), ValueError, r"ptr must be 1-D"),
    "zero_dimensional": (torch.tensor(5), ValueError, r"ptr must be 1-D"),
    "no_entries": (torch.zeros(0, dtype=torch.long), ValueError, r"ptr"),
    "float": (torch.tensor([0.0, 2.0, 5.0]), TypeError, r"ptr.*integer.*float32"),
    "bool": (torch.tensor([False, True]), TypeError, r"ptr.*integer.*bool"),
    "list": ([0, 2, 5], TypeError, r"ptr must be a torch.Tensor"),
    "none": (None, TypeError, r"ptr must be a torch.Tensor"),
}


@pytest.mark.parametrize("op", SEGMENT_OPS, ids=ids)
@pytest.mark.parametrize("case", BAD_PTRS)
def test_bad_ptr(op, case):
    ptr, error, message = BAD_PTRS[case]
    with pytest.raises(error, match=message):
        op(src_rows(), ptr)


@pytest.mark.parametrize("op", SEGMENT_OPS, ids=ids)
def test_message_names_op_and_position(op):
    with pytest.raises(ValueError) as info:
        op(src_rows(6), torch.tensor([0, 1, 4, 3, 6]))
    message = str(info.value)
    assert op.__name__ in message
    assert "ptr[3] = 3 < ptr[2] = 4" in message


# ----------------------------------------------------------------- index / dim_size
BAD_INDEXES = {
    "negative": (torch.tensor([0, -1, 1, 1, 0]), None, ValueError, r"index.*negative.*-1"),
    "too_large": (torch.tensor([0, 4, 1, 1, 0]), 4, ValueError, r"index holds 4.*dim_size = 4"),
    "too_large_zero_dim": (torch.tensor([0, 0, 0, 0, 0]), 0, ValueError, r"index"),
    "too_short": (torch.tensor([0, 1, 1, 0]), None, ValueError, r"index has 4 entries.*5 rows"),
    "too_long": (torch.tensor([0, 1, 1, 0, 2, 2]), None, ValueError, r"index has 6 entries"),
    "two_dimensional": (GOOD_INDEX.view(5, 1), None, ValueError, r"index must be 1-D"),
    "float": (GOOD_INDEX.double(), None, TypeError, r"index.*integer.*float64"),
    "bool": (GOOD_INDEX > 0, None, TypeError, r"index.*integer.*bool"),
    "list": ([0, 3, 1, 1, 0], None, TypeError, r"index must be a torch.Tensor"),
}


@pytest.mark.parametrize("op", SCATTER_OPS, ids=ids)
@pytest.mark.parametrize("case", BAD_INDEXES)
def test_bad_index(op, case):
    index, dim_size, error, message = BAD_INDEXES[case]
    with pytest.raises(error, match=message):
        op(src_rows(), index, dim_size)


BAD_DIM_SIZES = {
    "negative": (-1, ValueError, r"dim_size must be >= 0, got -1"),
    "float": (4.0, TypeError, r"dim_size must be an int, got float"),
    "bool": (True, TypeError, r"dim_size must be an int, got bool"),
    "tensor": (torch.tensor(4), TypeError, r"dim_size must be an int"),
}


@pytest.mark.parametrize("op", SCATTER_OPS, ids=ids)
@pytest.mark.parametrize("case", BAD_DIM_SIZES)
def test_bad_dim_size(op, case):
    dim_size, error, message = BAD_DIM_SIZES[case]
    with pytest.raises(error, match=message):
        op(src_rows(), GOOD_INDEX, dim_size)


@pytest.mark.parametrize("op", SCATTER_OPS, ids=ids)
def test_negative_dim_size_with_empty_index(op):
    with pytest.raises(ValueError, match="dim_size"):
        op(src_rows(0), torch.zeros(0, dtype=torch.long), -3)


# ----------------------------------------------------------------- src
BAD_SRCS = {
    "int64": (torch.arange(10).view(5, 2), TypeError, r"src has dtype torch.int64"),
    "int32": (torch.arange(10, dtype=torch.int32).view(5, 2), TypeError, r"src.*torch.int32"),
    "bool": (torch.ones(5, 2, dtype=torch.bool), TypeError, r"src.*torch.bool"),
    "float16": (torch.ones(5, 2, dtype=torch.float16), TypeError, r"src.*torch.float16"),
    "complex": (torch.ones(5, 2, dtype=torch.complex64), TypeError, r"src.*complex64"),
    "scalar_tensor": (torch.tensor(1.0), ValueError, r"src must have at least one dimension"),
    "list": ([[1.0, 2.0]] * 5, TypeError, r"src must be a torch.Tensor, got list"),
    "numpy_like_float": (3.0, TypeError, r"src must be a torch.Tensor, got float"),
}


@pytest.mark.parametrize("op", SEGMENT_OPS, ids=ids)
@pytest.mark.parametrize("case", BAD_SRCS)
def test_bad_src_segment(op, case):
    src, error, message = BAD_SRCS[case]
    with pytest.raises(error, match=message):
        op(src, GOOD_PTR)


@pytest.mark.parametrize("op", SCATTER_OPS, ids=ids)
@pytest.mark.parametrize("case", BAD_SRCS)
def test_bad_src_scatter(op, case):
    src, error, message = BAD_SRCS[case]
    with pytest.raises(error, match=message):
        op(src, GOOD_INDEX, 4)


def test_supported_dtypes_listed_in_message():
    with pytest.raises(TypeError, match="float64, float32 and bfloat16"):
        ops.segment_sum(torch.ones(5, dtype=torch.float16), GOOD_PTR)


# ----------------------------------------------------------------- devices
@pytest.mark.parametrize("op", SEGMENT_OPS, ids=ids)
def test_ptr_on_another_device(op):
    """The meta device stands in for a second device on a CPU-only machine."""
    with pytest.raises(ValueError, match=r"ptr is on meta but src is on cpu"):
        op(src_rows(), GOOD_PTR.to("meta"))


@pytest.mark.parametrize("op", SCATTER_OPS, ids=ids)
def test_index_on_another_device(op):
    with pytest.raises(ValueError, match=r"index is on meta but src is on cpu"):
        op(src_rows(), GOOD_INDEX.to("meta"), 4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA or ROCm GPU")
@pytest.mark.parametrize("op", SEGMENT_OPS + SCATTER_OPS, ids=ids)
def test_mixed_cpu_and_gpu_arguments(op):
    second = GOOD_PTR if op in SEGMENT_OPS else GOOD_INDEX
    with pytest.raises(ValueError, match=r"(ptr|index) is on cpu but src is on cuda"):
        op(src_rows(device="cuda"), second)
    with pytest.raises(ValueError, match=r"(ptr|index) is on cuda:0 but src is on cpu"):
        op(src_rows(), second.cuda())


# ----------------------------------------------------------------- raw ops on the CPU
RAW_SEGMENT = ["segment_sum", "segment_mean", "segment_max", "segment_min"]


@pytest.mark.parametrize("name", RAW_SEGMENT)
@pytest.mark.parametrize("ptr,message", [
    ([0, 3, 2, 5], r"ptr must be non-decreasing"),
    ([1, 2, 5], r"ptr\[0\] must be 0"),
    ([0, 2, 9], r"ptr\[-1\] = 9 must equal"),
    ([0, 2, 3], r"ptr\[-1\] = 3 must equal"),
    ([0, -7, 5], r"non-decreasing"),
], ids=["not_monotonic", "first_not_zero", "past_the_end", "short", "negative"])
def test_raw_segment_op_rejects_bad_ptr(name, ptr, message):
    with pytest.raises(ValueError, match=message):
        getattr(_ops, name)(src_rows(), torch.tensor(ptr))


@pytest.mark.parametrize("name", RAW_SEGMENT)
def test_raw_segment_op_rejects_bad_ptr_type(name):
    with pytest.raises(TypeError, match=r"ptr must be int64"):
        getattr(_ops, name)(src_rows(), GOOD_PTR.int())
    with pytest.raises(ValueError, match=r"ptr must be 1-D"):
        getattr(_ops, name)(src_rows(), GOOD_PTR.view(1, -1))
    with pytest.raises(ValueError, match=r"ptr must have at least one entry"):
        getattr(_ops, name)(src_rows(), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match=r"src has dtype"):
        getattr(_ops, name)(torch.ones(5, 2, dtype=torch.float16), GOOD_PTR)
    with pytest.raises(ValueError, match=r"src must have at least one dimension"):
        getattr(_ops, name)(torch.tensor(1.0), torch.tensor([0]))


RAW_SCATTER = ["scatter_sum", "scatter_max", "scatter_min"]


@pytest.mark.parametrize("name", RAW_SCATTER)
@pytest.mark.parametrize("index,dim_size", [
    ([0, 4, 1, 1, 0], 4),
    ([0, -1, 1, 1, 0], 4),
    ([0, 1, 2, 3, 2**40], 4),
    ([0, 0, 0, 0, 0], 0),
], ids=["too_large", "negative", "huge", "zero_dim_size"])
def test_raw_scatter_op_rejects_out_of_range_index(name, index, dim_size):
    with pytest.raises(IndexError, match=r"index\[\d\] = -?\d+ is outside"):
        getattr(_ops, name)(src_rows(), torch.tensor(index), dim_size)


@pytest.mark.parametrize("name", RAW_SCATTER)
def test_raw_scatter_op_rejects_bad_arguments(name):
    op = getattr(_ops, name)
    with pytest.raises(ValueError, match=r"dim_size must be >= 0"):
        op(src_rows(0), torch.zeros(0, dtype=torch.long), -1)
    with pytest.raises(ValueError, match=r"index has 4 entries but src has 5 rows"):
        op(src_rows(), GOOD_INDEX[:4], 4)
    with pytest.raises(TypeError, match=r"index must be int64"):
        op(src_rows(), GOOD_INDEX.int(), 4)
    with pytest.raises(TypeError, match=r"src has dtype"):
        op(torch.ones(5, 2, dtype=torch.int32), GOOD_INDEX, 4)


def test_raw_segment_broadcast_rejects_bad_arguments():
    seg = src_rows(3)
    with pytest.raises(ValueError, match=r"ptr\[-1\] = 5 must equal .*\(6\)"):
        _ops.segment_broadcast(seg, GOOD_PTR, 6)
    with pytest.raises(ValueError, match=r"src has 2 rows but ptr describes 3 segments"):
        _ops.segment_broadcast(seg[:2], GOOD_PTR, 5)
    with pytest.raises(ValueError, match=r"non-decreasing"):
        _ops.segment_broadcast(seg, torch.tensor([0, 4, 2, 5]), 5)


def test_raw_arg_ops_reject_out_of_range_rows():
    values = src_rows(2)
    arg = torch.tensor([[0, 4], [-1, 2]])
    with pytest.raises(IndexError, match=r"arg holds row 4 but the result has only 4 rows"):
        _ops.arg_scatter(values, arg, 4)
    with pytest.raises(IndexError, match=r"arg holds row 4 but src has only 3 rows"):
        _ops.arg_gather(src_rows(3), arg)
    with pytest.raises(TypeError, match=r"arg must be int64"):
        _ops.arg_gather(src_rows(3), arg.int())
    with pytest.raises(ValueError, match=r"arg has shape"):
        _ops.arg_scatter(values, arg[:, :1], 5)
    with pytest.raises(ValueError, match=r"arg has shape"):
        _ops.arg_gather(src_rows(3, 3), arg)


def test_raw_arg_ops_ignore_minus_one():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    arg = torch.tensor([[2, -1], [-1, 0]])
    placed = _ops.arg_scatter(values, arg, 3)
    assert placed.tolist() == [[0.0, 4.0], [0.0, 0.0], [1.0, 0.0]]
    picked = _ops.arg_gather(placed, arg)
    assert picked.tolist() == [[1.0, 0.0], [0.0, 4.0]]


def test_raw_arg_ops_treat_other_negative_rows_like_the_reference():
    """arg < -1 is not range-checked: like the reference, it reads/writes nothing (no crash)."""
    from pygfm.ops import reference

    arg = torch.tensor([[0, -2], [1, -(2**40)]])
    values = src_rows(2)
    assert torch.equal(_ops.arg_scatter(values, arg, 3), reference.arg_scatter(values, arg, 3))
    table = src_rows(3)
    assert torch.equal(_ops.arg_gather(table, arg), reference.arg_gather(table, arg))

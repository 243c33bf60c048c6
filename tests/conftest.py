"""Shared helpers for the pygfm test suite.

Helpers are plain functions (importable as ``from conftest import ...``) and
are also offered as session-scoped fixtures of the same name, so hypothesis
tests can use them without tripping the function-scoped-fixture health check.

* ``DEVICES`` / the ``device`` parameter: "cpu", plus "cuda" (marked ``gpu``)
  when torch sees a GPU. A test that takes a ``device`` argument is
  parametrized over them by :func:`pytest_generate_tests`.
* :func:`random_ptr`: CSR pointers with (by default) some empty segments.
* :data:`TOLERANCE` and :func:`assert_reduction_close`: how close a kernel's
  float result must be to the float64 reference, per dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
DTYPES = [torch.float64, torch.float32, torch.bfloat16]

def device_params():
    """``pytest.param`` per device; the cuda one carries the ``gpu`` mark."""
    return [
        pytest.param(d, id=d, marks=[pytest.mark.gpu] if d != "cpu" else [])
        for d in DEVICES
    ]


def pytest_configure(config):
    # pyproject.toml registers `gpu`; registering again keeps `--strict-markers`
    # happy when the suite is run with another configuration file.
    config.addinivalue_line("markers", "gpu: needs a CUDA or ROCm GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still run by default)")


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", device_params())


def pytest_collection_modifyitems(config, items):
    # Every gpu-marked test is skipped without a GPU; CPU tests are never skipped here.
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA or ROCm GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------- tolerances
#: Per dtype: ``rtol`` bounds the error relative to the exact (float64) result,
#: ``abs_rtol`` the error relative to the same reduction of ``|src|`` (it covers
#: cancellation, where the result is much smaller than its terms).
#: float64 / float32: a few ulps of accumulation in the dtype itself.
#: bfloat16: accumulation in float32 (error ~1e-7 of the |src| reduction) and one
#: final rounding to bfloat16 (relative error <= 2**-8 ~ 4e-3), hence rtol 1e-2.
TOLERANCE = {
    torch.float64: dict(rtol=1e-12, abs_rtol=1e-12),
    torch.float32: dict(rtol=1e-5, abs_rtol=1e-5),
    torch.bfloat16: dict(rtol=1e-2, abs_rtol=1e-5),
}


def assert_reduction_close(got: torch.Tensor, exact: torch.Tensor, exact_abs: torch.Tensor,
                           dtype: torch.dtype) -> None:
    """``got`` (any dtype) within TOLERANCE[dtype] of ``exact`` (float64).

    ``exact_abs`` is the same reduction applied to ``|src|`` in float64.
    """
    assert got.shape == exact.shape, (got.shape, exact.shape)
    tol = TOLERANCE[dtype]
    got64 = got.detach().to("cpu", torch.float64)
    exact = exact.to("cpu", torch.float64)
    bound = tol["rtol"] * exact.abs() + tol["abs_rtol"] * exact_abs.to("cpu", torch.float64)
    bound = bound + 1e-300  # an exact 0 must come out as 0 (or a denormal)
    error = (got64 - exact).abs()
    bad = ~(error <= bound)
    if bad.any():
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} elements out of tolerance for {dtype}; "
            f"first at {where}: got {got64[where].item()!r}, exact {exact[where].item()!r}, "
            f"allowed error {bound[where].item():.3g}, max error {error.max().item():.3g}"
        )


def bf16_half_ulp(exact: torch.Tensor) -> torch.Tensor:
    """Half a bfloat16 ulp at each (float64) value: the error bound of one rounding."""
    exponent = torch.floor(torch.log2(exact.abs().clamp(min=2.0**-126)))
    return torch.exp2(exponent - 8)  # bfloat16 keeps 8 significant bits


# ----------------------------------------------------------------- random inputs
def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def random_ptr(num_segments: int, rows: int | Sequence[int] | torch.Tensor,
               gen: torch.Generator, empty_fraction: float = 0.25) -> torch.Tensor:
    """CSR pointer [num_segments + 1] int64 (on the CPU) starting at 0.

    ``rows`` is either the total number of rows (split at random among the
    segments, about ``empty_fraction`` of them forced empty and more empty by
    chance) or the explicit list of segment lengths.
    """
    if isinstance(rows, (torch.Tensor, Sequence)):
        lengths = torch.as_tensor(rows, dtype=torch.long)
        assert lengths.shape == (num_segments,), "give one length per segment"
    else:
        rows = int(rows)
        if num_segments == 0:
            assert rows == 0, "zero segments can only hold zero rows"
            return torch.zeros(1, dtype=torch.long)
        empty = torch.rand(num_segments, generator=gen) < empty_fraction
        if rows > 0 and bool(empty.all()):
            empty[int(torch.randint(num_segments, (1,), generator=gen))] = False
        filled = int((~empty).sum())
        lengths = torch.zeros(num_segments, dtype=torch.long)
        if filled:
            cuts = torch.randint(0, rows + 1, (filled - 1,), generator=gen).sort().values
            bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([rows])])
            lengths[~empty] = bounds.diff()
    return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])


def random_index(num_rows: int, dim_size: int, gen: torch.Generator) -> torch.Tensor:
    """Unsorted scatter index [num_rows] in [0, dim_size)."""
    if num_rows == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.randint(0, dim_size, (num_rows,), generator=gen)


def random_src(shape, dtype: torch.dtype, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """Standard-normal values (drawn in float64, then rounded to ``dtype``)."""
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(device=device,
                                                                            dtype=dtype)


def tie_free_src(shape, gen: torch.Generator, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Distinct values everywhere (a random permutation), so max/min have one arg."""
    numel = 1
    for size in shape:
        numel *= size
    values = torch.randperm(numel, generator=gen, dtype=torch.float64) / max(numel, 1) - 0.5
    values = values + 1e-3 * torch.rand(numel, generator=gen, dtype=torch.float64) / max(numel, 1)
    return values.reshape(tuple(shape)).to(device=device, dtype=dtype)


@pytest.fixture(scope="session")
def devices():
    return list(DEVICES)


@pytest.fixture(scope="session", name="random_ptr")
def _random_ptr_fixture():
    return random_ptr


@pytest.fixture(scope="session", name="tolerance")
def _tolerance_fixture():
    return TOLERANCE

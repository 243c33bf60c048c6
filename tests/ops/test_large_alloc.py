"""Large CPU outputs come from reused huge-page blocks (csrc/common/large_alloc.h)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pygfm.ops import reference


def broadcast_inputs():
    generator = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 30, (3000,), generator=generator)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    src = torch.randn(3000, 64, generator=generator)
    return src, ptr, int(ptr[-1])  # ~11 MB of output


def test_a_freed_large_output_is_reused_and_correct():
    src, ptr, rows = broadcast_inputs()
    first = torch.ops.pygfm.segment_broadcast(src, ptr, rows)
    address = first.data_ptr()
    assert address % (2 << 20) == 0  # a 2 MiB-aligned block, eligible for huge pages
    del first
    second = torch.ops.pygfm.segment_broadcast(src * 2, ptr, rows)
    assert second.data_ptr() == address
    assert torch.equal(second, reference.segment_broadcast(src * 2, ptr, rows))


def test_live_outputs_never_share_a_block():
    src, ptr, rows = broadcast_inputs()
    outputs = [torch.ops.pygfm.segment_broadcast(src + k, ptr, rows) for k in range(3)]
    assert len({o.data_ptr() for o in outputs}) == 3
    for k, out in enumerate(outputs):
        assert torch.equal(out, reference.segment_broadcast(src + k, ptr, rows))


def test_huge_pages_can_be_turned_off():
    script = (
        "import torch, pygfm\n"
        "from pygfm.ops import reference\n"
        "src = torch.randn(3000, 64); ptr = torch.arange(0, 60001, 20)\n"
        "out = torch.ops.pygfm.segment_broadcast(src, ptr, 60000)\n"
        "assert torch.equal(out, reference.segment_broadcast(src, ptr, 60000))\n"
        "print(out.data_ptr() % (2 << 20))\n"
    )
    env = dict(os.environ, PYGFM_HUGE_PAGES="0")
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd="/",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) != 0  # plain malloc: not 2 MiB aligned


def test_torch_allocator_switch_serves_large_tensors_from_the_cache():
    import pygfm

    was_on = pygfm.set_cpu_allocator(True)
    try:
        assert pygfm.cpu_allocator_active()
        # 22 MiB once rounded, a size no other test uses: the cache has no other
        # free block of it, so a freed block must come back
        numel = 5_555_555
        first = torch.ones(numel)  # from the block cache: 2 MiB aligned
        address = first.data_ptr()
        assert address % (2 << 20) == 0
        del first
        again = torch.full((numel,), 2.0)
        assert again.data_ptr() == address and bool((again == 2.0).all())
        assert pygfm.set_cpu_allocator(False) is True
        assert not pygfm.cpu_allocator_active()
        plain = torch.ones(numel)
        assert plain.data_ptr() != address  # the cached block is still held by `again`
        del again  # freed through the cache's deleter although the switch is off
        small = torch.ones(10)
        assert float(small.sum()) == 10.0
    finally:
        pygfm.set_cpu_allocator(was_on)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (a crash there fails the test, not pytest)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYGFM_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, cwd="/", timeout=300)


def test_torch_allocator_is_off_after_import():
    out = _run("import pygfm; print(pygfm.cpu_allocator_active())")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("value,active", [("1", True), ("on", True), ("0", False)])
def test_torch_allocator_opt_in_by_environment(value, active):
    out = _run("import pygfm; print(pygfm.cpu_allocator_active())", PYGFM_CPU_ALLOCATOR=value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(active)


# oneDNN's BF16 and AMX matmuls (CPUs with AVX512-BF16 or AMX) allocate scratch with
# raw_allocate/raw_deallocate; with a null raw_deleter that aborted the process.
BF16_MATMULS = """
import torch, pygfm
{setup}
a, b = torch.randn(512, 128), torch.randn(384, 128)
for _ in range(3):
    y = torch.nn.functional.linear(a.bfloat16(), b.bfloat16())
big = torch.nn.functional.linear(torch.randn(2048, 1024).bfloat16(), torch.randn(1536, 1024).bfloat16())
error = (y.float() - a @ b.T).abs().max().item()
assert error < 1.0, error
print("ok", pygfm.cpu_allocator_active(), torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.parametrize("setup", ["", "pygfm.settings.set('cpu_allocator', True)"],
                         ids=["default", "allocator-on"])
@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native-isa", "avx2-isa"])
def test_bf16_matmuls_after_import(setup, isa):
    # ONEDNN_MAX_CPU_ISA=AVX2 takes oneDNN's paths for CPUs without AVX512-BF16/AMX,
    # so both kinds of CPU are covered wherever the tests run
    out = _run(BF16_MATMULS.format(setup=setup), **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {}))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok " + str(bool(setup)))


@pytest.mark.parametrize("bytes_", [0, 64, 1 << 20, 5 << 20, 37 << 20])
def test_raw_allocate_and_deallocate_through_the_allocator(bytes_):
    import pygfm

    with pygfm.settings.override(cpu_allocator=True):
        assert pygfm.cpu_allocator_active()
        for _ in range(3):  # the second and third take cached blocks back
            assert pygfm._C.cpu_allocator_raw_roundtrip(bytes_)
    assert pygfm._C.cpu_allocator_raw_roundtrip(bytes_)  # torch's own allocator again


def test_blocks_outlive_a_change_of_huge_pages():
    import pygfm

    src, ptr, rows = broadcast_inputs()
    with pygfm.settings.override(huge_pages=True):
        cached = torch.ops.pygfm.segment_broadcast(src, ptr, rows)
    expected = reference.segment_broadcast(src, ptr, rows)
    assert cached.data_ptr() % (2 << 20) == 0 and torch.equal(cached, expected)
    with pygfm.settings.override(huge_pages=False):
        plain = torch.ops.pygfm.segment_broadcast(src, ptr, rows)
        assert plain.data_ptr() % (2 << 20) != 0 and torch.equal(plain, expected)  # malloc
        del cached  # a cache block freed while huge pages are off
    del plain  # a malloc block freed while huge pages are on
    again = torch.ops.pygfm.segment_broadcast(src, ptr, rows)
    assert torch.equal(again, expected)


def test_cache_limit_releases_kept_blocks():
    import pygfm

    src, ptr, rows = broadcast_inputs()
    torch.ops.pygfm.segment_broadcast(src, ptr, rows)  # freed at once: kept in the cache
    assert pygfm._C.cpu_cache_bytes() > 0
    with pygfm.settings.override(cpu_cache_mb=0):
        assert pygfm._C.cpu_cache_bytes() == 0
        assert pygfm.settings.get("cpu_cache_mb") == 0
    assert pygfm.settings.get("cpu_cache_mb") == 2048

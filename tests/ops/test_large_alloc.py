"""Large CPU outputs come from reused huge-page blocks (csrc/common/large_alloc.h)."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_torch_allocator_off_by_environment():
    code = "import pygfm; print(pygfm.cpu_allocator_active())"
    env = dict(os.environ, PYGFM_CPU_ALLOCATOR="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd="/")
    assert out.stdout.strip() == "False"

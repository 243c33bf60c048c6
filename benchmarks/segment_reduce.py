"""Segmented sum: pygfm against torch's own options, on message-passing shapes.

Question: how fast is ``pygfm.ops.segment_sum`` (CSR rows -> per-receiver sums)
against what a torch user would otherwise write?

* ``index_add_``      ``zeros(S, F).index_add_(0, receiver, src)``
* ``scatter_reduce``  ``zeros(S, F).scatter_reduce_(0, receiver[:, None].expand_as(src), src, "sum")``
* ``segment_reduce``  ``torch.segment_reduce(src, "sum", offsets=ptr)``

Shapes: E rows (edges) in 1e5..2e6, F in 64..256 features, 10..40 rows per
segment (uniform), FP32 and BF16. "fwd" times the reduction; "fwd+bwd" times
the reduction plus ``torch.autograd.grad`` of it (a full training step's share).
Memory comes from the default allocators, as in a user's process: fresh pages
cost page faults (expensive on VMs), and pygfm puts its large CPU outputs on
transparent huge pages (csrc/common/large_alloc.h) to pay fewer of them.
The codes are alternated within each repetition and the median is reported;
the ratio is the best torch option's median over pygfm's (>1: pygfm faster).

Run on a quiet machine:  python benchmarks/segment_reduce.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import pygfm


def make_inputs(rows: int, features: int, dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 41, (rows // 10 + 1,), generator=generator)
    ends = lengths.cumsum(0)
    lengths = lengths[ends <= rows]
    lengths = torch.cat([lengths, torch.tensor([rows - int(lengths.sum())])])
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    receiver = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    src = torch.randn(rows, features, generator=generator).to(dtype)
    return src, ptr, receiver


def codes(ptr, receiver):
    segments = ptr.numel() - 1
    lengths = ptr.diff()

    def index_add(src):
        return src.new_zeros(segments, src.shape[1]).index_add_(0, receiver, src)

    expanded = {}

    def scatter_reduce(src):
        key = src.shape[1]
        if key not in expanded:
            expanded[key] = receiver[:, None].expand(-1, key)
        return src.new_zeros(segments, key).scatter_reduce_(0, expanded[key], src, "sum")

    def segment_reduce(src):
        return torch.segment_reduce(src, "sum", lengths=lengths)

    def pygfm_segment_sum(src):
        return torch.ops.pygfm.segment_sum(src, ptr)

    return {
        "pygfm": pygfm_segment_sum,
        "index_add_": index_add,
        "scatter_reduce": scatter_reduce,
        "segment_reduce": segment_reduce,
    }


def time_once(fn, src, grad_out, backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        leaf = src.detach().requires_grad_(True)
        out = fn(leaf)
        torch.autograd.grad(out, leaf, grad_out)
    else:
        with torch.no_grad():
            fn(src)
    return time.perf_counter() - start


def measure(rows, features, dtype, backward, repeats):
    src, ptr, receiver = make_inputs(rows, features, dtype)
    candidates = codes(ptr, receiver)
    grad_out = torch.randn(ptr.numel() - 1, features).to(dtype)
    reference = candidates["index_add_"](src.double())
    got = candidates["pygfm"](src).double()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    if not torch.allclose(got, reference, rtol=tolerance, atol=tolerance):
        raise SystemExit(f"pygfm disagrees with index_add_ at E={rows} F={features} {dtype}")
    samples = {name: [] for name in candidates}
    for name, fn in candidates.items():  # warm-up
        time_once(fn, src, grad_out, backward)
    for _ in range(repeats):
        for name, fn in candidates.items():
            samples[name].append(time_once(fn, src, grad_out, backward))
    return {name: statistics.median(values) for name, values in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only (smoke test)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # torch's reductions run with torch's own allocator, as they do without pygfm
    # (import pygfm installs a caching one; pygfm's outputs use their own cache anyway)
    pygfm.set_cpu_allocator(False)

    rows_list = [100_000] if args.quick else [100_000, 500_000, 2_000_000]
    feature_list = [64] if args.quick else [64, 128, 256]
    dtypes = [torch.float32, torch.bfloat16]

    print(f"# segment_sum benchmark  pygfm {pygfm.__version__}  torch {torch.__version__}")
    print(f"# machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {platform.platform()}")
    print("# times are medians in ms; ratio = best torch / pygfm (>1 means pygfm is faster)")
    print("# default allocator: every code pays for the fresh memory it writes (page faults)")
    header = f"{'E':>9} {'F':>4} {'dtype':>8} {'pass':>8} {'pygfm':>9} {'index_add_':>11} " \
             f"{'scatter_red':>11} {'segment_red':>11} {'best torch':>14} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    ratios = []
    for rows in rows_list:
        for features in feature_list:
            for dtype in dtypes:
                for backward in (False, True):
                    repeats = max(3, args.repeats if rows <= 500_000 else args.repeats // 2)
                    medians = measure(rows, features, dtype, backward, repeats)
                    peers = {k: v for k, v in medians.items() if k != "pygfm"}
                    best_name = min(peers, key=peers.get)
                    ratio = peers[best_name] / medians["pygfm"]
                    ratios.append(ratio)
                    print(
                        f"{rows:>9} {features:>4} {str(dtype)[6:]:>8} "
                        f"{'fwd+bwd' if backward else 'fwd':>8} "
                        f"{medians['pygfm'] * 1e3:>9.2f} {medians['index_add_'] * 1e3:>11.2f} "
                        f"{medians['scatter_reduce'] * 1e3:>11.2f} "
                        f"{medians['segment_reduce'] * 1e3:>11.2f} {best_name:>14} {ratio:>6.2f}",
                        flush=True,
                    )
    print(f"# ratio over all rows: min {min(ratios):.2f}, median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()

// pygfm's run-time settings: the one place the C++ side reads them from.
//
// The values are set from Python (pygfm.settings, which also reads the
// documented PYGFM_* environment variables once, at import); nothing in csrc/
// calls getenv. Every setting here changes only how pygfm's own kernels work,
// except the torch CPU allocator, which is off unless the user turns it on
// (csrc/ops/cpu_allocator.cpp). Relaxed atomics: a setting changed while a
// kernel runs takes effect at the next call, which is all a switch needs.
#pragma once

#include <atomic>
#include <cstddef>

namespace pygfm {

struct Settings {
  // Large pygfm outputs and scratch from 2 MiB-aligned, MADV_HUGEPAGE blocks.
  std::atomic<bool> huge_pages{true};
  // Freed large blocks kept for reuse, at most this many bytes in all.
  std::atomic<size_t> cpu_cache_bytes{size_t(2048) << 20};
  // Streaming (cache-bypassing) stores in write-bound CPU kernels.
  std::atomic<bool> cpu_stream{true};
  // Memory a CPU neighbor search may take; 0: what the system reports available.
  std::atomic<size_t> neighbor_memory_bytes{0};
};

inline Settings& settings() {
  static Settings values;  // one instance in the whole extension (inline function)
  return values;
}

}  // namespace pygfm

// CPU launchers for the segmented and scattered reductions.
//
// Work is split into units of (a run of consecutive segments) x (a block of
// features). Runs are balanced by rows + segments, so one long segment or many
// empty ones do not leave a thread idle; when there are fewer runs than
// threads, the feature dimension is split as well. Units run on torch's
// intra-op thread pool (at::parallel_for, OpenMP here), so torch.set_num_threads
// governs them. Every unit reads its rows in order: results do not depend on
// the number of threads.
//
// scatter_* (unsorted index) gives each thread a range of output rows; every
// thread scans the whole index and accumulates the rows that fall in its range,
// in index order. That costs each thread one read of the index (8 bytes a row,
// against 4F or more bytes of features) and needs neither atomics nor a sort.
#include <ATen/Parallel.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/settings.h"
#include "../kernels/launchers.h"
#include "../kernels/segment_reduce.h"
#include "isa.h"

namespace pygfm {
namespace cpu {
namespace {

// Features handled per body call: bounds the accumulator on the stack.
constexpr int64_t kFeatureBlock = 256;
// Below this many elements the whole op runs on the calling thread.
constexpr int64_t kSerialWork = 1 << 15;

// Calls body(s_begin, s_end, f_begin, f_end) on units covering every segment
// and feature, in parallel. With ptr == nullptr every segment weighs the same.
template <typename Body>
void for_each_unit(const int64_t* ptr, int64_t S, int64_t F, const Body& body) {
  if (S == 0 || F == 0) return;
  const int64_t rows = ptr ? ptr[S] - ptr[0] : S;
  const int64_t threads = at::get_num_threads();
  const bool serial = threads == 1 || (rows + S) * F < kSerialWork;
  const int64_t runs = serial ? 1 : std::min<int64_t>(S, 4 * threads);
  int64_t feature_splits = 1;
  if (!serial && runs < 2 * threads) {
    feature_splits = std::min<int64_t>((2 * threads + runs - 1) / runs, (F + 15) / 16);
    feature_splits = std::max<int64_t>(feature_splits, 1);
  }
  // run r covers segments [first[r], first[r+1]) where weight(s) = ptr[s] + s
  // crosses r * total / runs.
  std::vector<int64_t> first(runs + 1);
  const int64_t total = rows + S;
  for (int64_t r = 0; r <= runs; ++r) {
    const int64_t target = total / runs * r + (total % runs) * r / runs;
    int64_t lo = 0, hi = S;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      const int64_t weight = (ptr ? ptr[mid] - ptr[0] : mid) + mid;
      if (weight < target) lo = mid + 1; else hi = mid;
    }
    first[r] = lo;
  }
  first[runs] = S;
  const int64_t units = runs * feature_splits;
  at::parallel_for(0, units, serial ? units + 1 : 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t run = unit / feature_splits, split = unit % feature_splits;
      body(first[run], first[run + 1], F * split / feature_splits,
           F * (split + 1) / feature_splits);
    }
  });
}

// ---- units of work, one set of ISA clones per scalar type (see isa.h) ----

// Wide rows: accumulate a fixed block of kRegisterBlock features over all rows
// of the segment, so the compiler keeps the sums in vector registers instead
// of loading and storing an accumulator array for every row (which ran at
// ~10 GB/s for 512 B-1 KB rows). Measured in isolation with AVX2: 1.3x at
// F = 128 FP32, 1.75x at F = 256 BF16.
constexpr int64_t kRegisterBlock = 128;

template <typename T>
PYGFM_HD void sum_register_block(const T* __restrict__ src, int64_t begin, int64_t end,
                                 int64_t F, int64_t f0, acc_t<T> scale, T* __restrict__ out_row) {
  acc_t<T> acc[kRegisterBlock];
  for (int64_t k = 0; k < kRegisterBlock; ++k) acc[k] = acc_t<T>(0);
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict__ row = src + r * F + f0;
#pragma GCC unroll 128
    for (int64_t k = 0; k < kRegisterBlock; ++k) acc[k] += to_acc(row[k]);
  }
  for (int64_t k = 0; k < kRegisterBlock; ++k) out_row[f0 + k] = from_acc<T>(acc[k] * scale);
}

template <typename T>
PYGFM_HD void sum_unit(const T* src, const int64_t* ptr, int64_t s_begin, int64_t s_end,
                       int64_t F, int64_t f_begin, int64_t f_end, bool mean, T* out) {
  acc_t<T> acc[kFeatureBlock];
  const bool blocked = (f_end - f_begin) % kRegisterBlock == 0;
  for (int64_t s = s_begin; s < s_end; ++s) {
    const int64_t count = ptr[s + 1] - ptr[s];
    const acc_t<T> scale = (mean && count > 0) ? acc_t<T>(1) / acc_t<T>(count) : acc_t<T>(1);
    if (blocked) {
      for (int64_t f0 = f_begin; f0 < f_end; f0 += kRegisterBlock)
        sum_register_block(src, ptr[s], ptr[s + 1], F, f0, scale, out + s * F);
      continue;
    }
    for (int64_t f0 = f_begin; f0 < f_end; f0 += kFeatureBlock)
      kernels::segment_sum_block(src, ptr[s], ptr[s + 1], F, f0,
                                 std::min(kFeatureBlock, f_end - f0), scale, acc, out + s * F);
  }
}

template <typename T>
PYGFM_HD void extreme_unit(const T* src, const int64_t* ptr, int64_t s_begin, int64_t s_end,
                           int64_t F, int64_t f_begin, int64_t f_end, bool is_max, T* out,
                           int64_t* arg) {
  acc_t<T> acc[kFeatureBlock];
  for (int64_t s = s_begin; s < s_end; ++s)
    for (int64_t f0 = f_begin; f0 < f_end; f0 += kFeatureBlock) {
      const int64_t nf = std::min(kFeatureBlock, f_end - f0);
      if (is_max)
        kernels::segment_extreme_block<T, true>(src, ptr[s], ptr[s + 1], F, f0, nf, acc,
                                                out + s * F, arg + s * F);
      else
        kernels::segment_extreme_block<T, false>(src, ptr[s], ptr[s + 1], F, f0, nf, acc,
                                                 out + s * F, arg + s * F);
    }
}

// Rows of 16-byte multiples into a 16-byte aligned output can bypass the cache:
// the broadcast writes E x F values and reads only S x F, so it is bound by
// writes, and a streaming (non-temporal) store skips reading each destination
// line first. Measured here: 19 GB/s streamed against 10.5 GB/s for plain
// stores, on one core. Only for outputs larger than the caches (kStreamBytes),
// which the consumer would read from memory anyway.
constexpr int64_t kStreamBytes = 8 << 20;

template <typename T>
PYGFM_HD void broadcast_unit(const T* src, const int64_t* ptr, int64_t s_begin, int64_t s_end,
                             int64_t F, int64_t f_begin, int64_t f_end, bool stream, T* out) {
#if defined(__SSE2__)
  if (stream) {
    const int64_t chunks = F * static_cast<int64_t>(sizeof(T)) / 16;
    for (int64_t s = s_begin; s < s_end; ++s) {
      const __m128i* from = reinterpret_cast<const __m128i*>(src + s * F);
      for (int64_t r = ptr[s]; r < ptr[s + 1]; ++r) {
        __m128i* to = reinterpret_cast<__m128i*>(out + r * F);
        for (int64_t c = 0; c < chunks; ++c) _mm_stream_si128(to + c, _mm_loadu_si128(from + c));
      }
    }
    _mm_sfence();  // streamed stores are weakly ordered: publish before the join
    return;
  }
#endif
  for (int64_t s = s_begin; s < s_end; ++s)
    kernels::segment_broadcast_block(src + s * F, ptr[s], ptr[s + 1], F, f_begin,
                                     f_end - f_begin, out);
}

template <typename T>
PYGFM_HD void scatter_add_unit(const T* src, const int64_t* index, int64_t E, int64_t F,
                               int64_t lo, int64_t hi, acc_t<T>* acc) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t target = index[e];
    if (target < lo || target >= hi) continue;
    acc_t<T>* __restrict__ acc_row = acc + target * F;
    const T* __restrict__ row = src + e * F;
    for (int64_t k = 0; k < F; ++k) acc_row[k] += to_acc(row[k]);
  }
}

#define PYGFM_CLONED_UNITS(T)                                                                \
  PYGFM_CPU_CLONES void sum_units(const T* src, const int64_t* ptr, int64_t s_begin,       \
                                  int64_t s_end, int64_t F, int64_t f_begin, int64_t f_end,  \
                                  bool mean, T* out) {                                      \
    sum_unit<T>(src, ptr, s_begin, s_end, F, f_begin, f_end, mean, out);                    \
  }                                                                                          \
  PYGFM_CPU_CLONES void extreme_units(const T* src, const int64_t* ptr, int64_t s_begin,   \
                                      int64_t s_end, int64_t F, int64_t f_begin,             \
                                      int64_t f_end, bool is_max, T* out, int64_t* arg) {    \
    extreme_unit<T>(src, ptr, s_begin, s_end, F, f_begin, f_end, is_max, out, arg);         \
  }                                                                                          \
  PYGFM_CPU_CLONES void broadcast_units(const T* src, const int64_t* ptr, int64_t s_begin, \
                                        int64_t s_end, int64_t F, int64_t f_begin,           \
                                        int64_t f_end, bool stream, T* out) {                \
    broadcast_unit<T>(src, ptr, s_begin, s_end, F, f_begin, f_end, stream, out);            \
  }                                                                                          \
  PYGFM_CPU_CLONES void scatter_add_units(const T* src, const int64_t* index, int64_t E,   \
                                          int64_t F, int64_t lo, int64_t hi,                 \
                                          acc_t<T>* acc) {                                   \
    scatter_add_unit<T>(src, index, E, F, lo, hi, acc);                                     \
  }

PYGFM_CLONED_UNITS(double)
PYGFM_CLONED_UNITS(float)
PYGFM_CLONED_UNITS(bf16_t)
#undef PYGFM_CLONED_UNITS

// Calls body(row_begin, row_end) on disjoint ranges of output rows, one a thread.
template <typename Body>
void for_each_output_range(int64_t E, int64_t F, int64_t S, const Body& body) {
  const int64_t threads = at::get_num_threads();
  const int64_t parts = (threads == 1 || (E + S) * F < kSerialWork) ? 1 : std::min(S, threads);
  if (parts <= 1) {
    body(int64_t(0), S);
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) body(S * part / parts, S * (part + 1) / parts);
  });
}

}  // namespace

template <typename T>
void segment_sum(const T* src, const int64_t* ptr, int64_t S, int64_t F, bool mean, T* out) {
  for_each_unit(ptr, S, F, [&](int64_t s_begin, int64_t s_end, int64_t f_begin, int64_t f_end) {
    sum_units(src, ptr, s_begin, s_end, F, f_begin, f_end, mean, out);
  });
}

template <typename T>
void segment_extreme(const T* src, const int64_t* ptr, int64_t S, int64_t F, Extreme which,
                     T* out, int64_t* arg) {
  for_each_unit(ptr, S, F, [&](int64_t s_begin, int64_t s_end, int64_t f_begin, int64_t f_end) {
    extreme_units(src, ptr, s_begin, s_end, F, f_begin, f_end, which == Extreme::Max, out, arg);
  });
}

template <typename T>
void segment_broadcast(const T* src, const int64_t* ptr, int64_t S, int64_t F, T* out) {
  const int64_t row_bytes = F * static_cast<int64_t>(sizeof(T));
  const bool stream = settings().cpu_stream.load(std::memory_order_relaxed) && S > 0 && (ptr[S] - ptr[0]) * row_bytes >= kStreamBytes &&
                      row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  for_each_unit(ptr, S, F, [&](int64_t s_begin, int64_t s_end, int64_t f_begin, int64_t f_end) {
    // a streamed unit writes whole rows: split features only without streaming
    const bool whole_rows = f_begin == 0 && f_end == F;
    broadcast_units(src, ptr, s_begin, s_end, F, f_begin, f_end, stream && whole_rows, out);
  });
}

template <typename T>
void arg_scatter(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out) {
  for_each_unit(nullptr, S, F, [&](int64_t s_begin, int64_t s_end, int64_t f_begin, int64_t f_end) {
    for (int64_t s = s_begin; s < s_end; ++s)
      kernels::arg_scatter_block(src + s * F, arg + s * F, F, f_begin, f_end - f_begin, out);
  });
}

template <typename T>
void arg_gather(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out) {
  for_each_unit(nullptr, S, F, [&](int64_t s_begin, int64_t s_end, int64_t f_begin, int64_t f_end) {
    for (int64_t s = s_begin; s < s_end; ++s)
      kernels::arg_gather_block(src, arg + s * F, F, f_begin, f_end - f_begin, out + s * F);
  });
}

template <typename T>
void scatter_sum(const T* src, const int64_t* index, int64_t E, int64_t F, int64_t S,
                 acc_t<T>* acc, T* out) {
  for_each_output_range(E, F, S, [&](int64_t lo, int64_t hi) {
    std::fill(acc + lo * F, acc + hi * F, acc_t<T>(0));
    scatter_add_units(src, index, E, F, lo, hi, acc);
    if (static_cast<void*>(acc) != static_cast<void*>(out))
      for (int64_t k = lo * F; k < hi * F; ++k) out[k] = from_acc<T>(acc[k]);
  });
}

template <typename T>
void scatter_extreme(const T* src, const int64_t* index, int64_t E, int64_t F, int64_t S,
                     Extreme which, T* out, int64_t* arg) {
  const bool is_max = which == Extreme::Max;
  for_each_output_range(E, F, S, [&](int64_t lo, int64_t hi) {
    std::vector<acc_t<T>> acc((hi - lo) * F);
    std::fill(arg + lo * F, arg + hi * F, int64_t(-1));
    for (int64_t e = 0; e < E; ++e) {
      const int64_t target = index[e];
      if (target < lo || target >= hi) continue;
      acc_t<T>* acc_row = acc.data() + (target - lo) * F;
      int64_t* arg_row = arg + target * F;
      const T* row = src + e * F;
      for (int64_t k = 0; k < F; ++k) {
        const acc_t<T> value = to_acc(row[k]);
        const bool better = is_max ? value > acc_row[k] : value < acc_row[k];
        if (arg_row[k] < 0 || (!is_nan(acc_row[k]) && (better || is_nan(value)))) {
          acc_row[k] = value;
          arg_row[k] = e;
        }
      }
    }
    for (int64_t k = 0; k < (hi - lo) * F; ++k)
      out[lo * F + k] = from_acc<T>(arg[lo * F + k] < 0 ? acc_t<T>(0) : acc[k]);
  });
}

#define PYGFM_INSTANTIATE(T)                                                                 \
  template void segment_sum<T>(const T*, const int64_t*, int64_t, int64_t, bool, T*);        \
  template void segment_extreme<T>(const T*, const int64_t*, int64_t, int64_t, Extreme, T*,  \
                                   int64_t*);                                                \
  template void segment_broadcast<T>(const T*, const int64_t*, int64_t, int64_t, T*);        \
  template void arg_scatter<T>(const T*, const int64_t*, int64_t, int64_t, T*);              \
  template void arg_gather<T>(const T*, const int64_t*, int64_t, int64_t, T*);               \
  template void scatter_sum<T>(const T*, const int64_t*, int64_t, int64_t, int64_t,          \
                               acc_t<T>*, T*);                                               \
  template void scatter_extreme<T>(const T*, const int64_t*, int64_t, int64_t, int64_t,      \
                                   Extreme, T*, int64_t*);

PYGFM_INSTANTIATE(double)
PYGFM_INSTANTIATE(float)
PYGFM_INSTANTIATE(bf16_t)
#undef PYGFM_INSTANTIATE

}  // namespace cpu
}  // namespace pygfm

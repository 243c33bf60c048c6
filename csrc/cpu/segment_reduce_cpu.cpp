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

#include <algorithm>
#include <limits>
#include <vector>

#include "../kernels/launchers.h"
#include "../kernels/segment_reduce.h"

namespace pygfm {
namespace cpu {
namespace {

// Features handled per body call: bounds the accumulator on the stack.
constexpr int64_t kFeatureBlock = 256;
// Below this many elements the whole op runs on the calling thread.
constexpr int64_t kSerialWork = 1 << 15;

// Calls body(segment, f0, nf) for every segment and feature block, in parallel.
// With ptr == nullptr every segment weighs the same.
template <typename Body>
void for_each_segment_block(const int64_t* ptr, int64_t S, int64_t F, const Body& body) {
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
      const int64_t f_begin = F * split / feature_splits;
      const int64_t f_end = F * (split + 1) / feature_splits;
      for (int64_t s = first[run]; s < first[run + 1]; ++s)
        for (int64_t f0 = f_begin; f0 < f_end; f0 += kFeatureBlock)
          body(s, f0, std::min(kFeatureBlock, f_end - f0));
    }
  });
}

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
  for_each_segment_block(ptr, S, F, [&](int64_t s, int64_t f0, int64_t nf) {
    acc_t<T> acc[kFeatureBlock];
    const int64_t count = ptr[s + 1] - ptr[s];
    const acc_t<T> scale = (mean && count > 0) ? acc_t<T>(1) / acc_t<T>(count) : acc_t<T>(1);
    kernels::segment_sum_block(src, ptr[s], ptr[s + 1], F, f0, nf, scale, acc, out + s * F);
  });
}

template <typename T>
void segment_extreme(const T* src, const int64_t* ptr, int64_t S, int64_t F, Extreme which,
                     T* out, int64_t* arg) {
  for_each_segment_block(ptr, S, F, [&](int64_t s, int64_t f0, int64_t nf) {
    acc_t<T> acc[kFeatureBlock];
    if (which == Extreme::Max)
      kernels::segment_extreme_block<T, true>(src, ptr[s], ptr[s + 1], F, f0, nf, acc,
                                              out + s * F, arg + s * F);
    else
      kernels::segment_extreme_block<T, false>(src, ptr[s], ptr[s + 1], F, f0, nf, acc,
                                               out + s * F, arg + s * F);
  });
}

template <typename T>
void segment_broadcast(const T* src, const int64_t* ptr, int64_t S, int64_t F, T* out) {
  for_each_segment_block(ptr, S, F, [&](int64_t s, int64_t f0, int64_t nf) {
    kernels::segment_broadcast_block(src + s * F, ptr[s], ptr[s + 1], F, f0, nf, out);
  });
}

template <typename T>
void arg_scatter(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out) {
  for_each_segment_block(nullptr, S, F, [&](int64_t s, int64_t f0, int64_t nf) {
    kernels::arg_scatter_block(src + s * F, arg + s * F, F, f0, nf, out);
  });
}

template <typename T>
void arg_gather(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out) {
  for_each_segment_block(nullptr, S, F, [&](int64_t s, int64_t f0, int64_t nf) {
    kernels::arg_gather_block(src, arg + s * F, F, f0, nf, out + s * F);
  });
}

template <typename T>
void scatter_sum(const T* src, const int64_t* index, int64_t E, int64_t F, int64_t S,
                 acc_t<T>* acc, T* out) {
  for_each_output_range(E, F, S, [&](int64_t lo, int64_t hi) {
    std::fill(acc + lo * F, acc + hi * F, acc_t<T>(0));
    for (int64_t e = 0; e < E; ++e) {
      const int64_t target = index[e];
      if (target < lo || target >= hi) continue;
      acc_t<T>* __restrict__ acc_row = acc + target * F;
      const T* __restrict__ row = src + e * F;
      for (int64_t k = 0; k < F; ++k) acc_row[k] += to_acc(row[k]);
    }
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

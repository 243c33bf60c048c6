// Backend-free bodies of the segmented reductions.
//
// Layout: every op sees its rows as a dense row-major [rows, F] matrix (the
// binding flattens trailing dimensions into F). A "segment" s owns the rows
// ptr[s] .. ptr[s+1]-1 (CSR). Each body below handles one segment and one
// contiguous block of features [f0, f0 + nf):
//   - the CPU launcher calls it with a whole block of features, so the inner
//     loop runs along a row and vectorizes;
//   - the GPU launcher calls it with nf == 1 from one thread per (segment,
//     feature), so neighbouring threads read neighbouring addresses.
// Rows of a segment are visited in order, so results are the same bits on every
// run and every thread count (no atomics, no reassociation).
//
// Max/min: the first row holding the extreme value wins (lowest row index), a
// NaN wins over any number (as torch.max does) and the first NaN is kept.
// An empty segment writes 0 and arg -1.
#pragma once

#include "../common/scalar.h"

namespace pygfm {
namespace kernels {

template <typename T>
PYGFM_HD void segment_sum_block(const T* __restrict__ src, int64_t begin, int64_t end,
                                int64_t F, int64_t f0, int64_t nf, acc_t<T> scale,
                                acc_t<T>* __restrict__ acc, T* __restrict__ out_row) {
  for (int64_t k = 0; k < nf; ++k) acc[k] = acc_t<T>(0);
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict__ row = src + r * F + f0;
    for (int64_t k = 0; k < nf; ++k) acc[k] += to_acc(row[k]);
  }
  for (int64_t k = 0; k < nf; ++k) out_row[f0 + k] = from_acc<T>(acc[k] * scale);
}

template <typename T, bool IsMax>
PYGFM_HD void segment_extreme_block(const T* __restrict__ src, int64_t begin, int64_t end,
                                    int64_t F, int64_t f0, int64_t nf,
                                    acc_t<T>* __restrict__ acc, T* __restrict__ out_row,
                                    int64_t* __restrict__ arg_row) {
  if (begin >= end) {
    for (int64_t k = 0; k < nf; ++k) {
      out_row[f0 + k] = from_acc<T>(acc_t<T>(0));
      arg_row[f0 + k] = -1;
    }
    return;
  }
  const T* first = src + begin * F + f0;
  for (int64_t k = 0; k < nf; ++k) {
    acc[k] = to_acc(first[k]);
    arg_row[f0 + k] = begin;
  }
  for (int64_t r = begin + 1; r < end; ++r) {
    const T* __restrict__ row = src + r * F + f0;
    for (int64_t k = 0; k < nf; ++k) {
      const acc_t<T> value = to_acc(row[k]);
      const bool better = IsMax ? (value > acc[k]) : (value < acc[k]);
      if (!is_nan(acc[k]) && (better || is_nan(value))) {
        acc[k] = value;
        arg_row[f0 + k] = r;
      }
    }
  }
  for (int64_t k = 0; k < nf; ++k) out_row[f0 + k] = from_acc<T>(acc[k]);
}

// The adjoint of segment_sum: copy segment row s into each of its rows.
template <typename T>
PYGFM_HD void segment_broadcast_block(const T* __restrict__ src_row, int64_t begin,
                                      int64_t end, int64_t F, int64_t f0, int64_t nf,
                                      T* __restrict__ out) {
  for (int64_t r = begin; r < end; ++r) {
    T* __restrict__ row = out + r * F + f0;
    for (int64_t k = 0; k < nf; ++k) row[k] = src_row[f0 + k];
  }
}

// out[arg[s, f], f] = src[s, f] for one output row s (the backward of max/min);
// rows not named by arg are left as they are (the launcher zero-fills them).
// Distinct s never name the same row, so parallel writes do not collide.
template <typename T>
PYGFM_HD void arg_scatter_block(const T* __restrict__ src_row,
                                const int64_t* __restrict__ arg_row, int64_t F, int64_t f0,
                                int64_t nf, T* __restrict__ out) {
  for (int64_t k = 0; k < nf; ++k) {
    const int64_t row = arg_row[f0 + k];
    if (row >= 0) out[row * F + f0 + k] = src_row[f0 + k];
  }
}

// out[s, f] = src[arg[s, f], f], or 0 where arg is -1 (the adjoint of arg_scatter).
template <typename T>
PYGFM_HD void arg_gather_block(const T* __restrict__ src, const int64_t* __restrict__ arg_row,
                               int64_t F, int64_t f0, int64_t nf, T* __restrict__ out_row) {
  for (int64_t k = 0; k < nf; ++k) {
    const int64_t row = arg_row[f0 + k];
    out_row[f0 + k] = row >= 0 ? src[row * F + f0 + k] : from_acc<T>(acc_t<T>(0));
  }
}

}  // namespace kernels
}  // namespace pygfm

// CPU launchers for the fused PaiNN kernels (bodies in kernels/painn.h).
//
// Rows (receivers for the message and the edge half of the backward, senders
// for the node half, atoms for the update) are split into contiguous ranges,
// balanced by edge count, over torch's intra-op pool. Each row is walked in
// feature tiles of kTile: a tile's accumulators (4 or 5 x kTile) stay in vector
// registers while the row's edges stream by, so nothing of size [E, 3F] is
// written by the forward and every row is summed in edge order (results do not
// depend on the thread count).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../kernels/launchers.h"
#include "../kernels/painn.h"
#include "isa.h"

namespace pygfm {
namespace cpu {
namespace {

// 16 features: with AVX2 and FP32 the 4 accumulators of a message tile take 8
// of the 16 ymm registers (64-wide tiles measured 2x slower for the message).
constexpr int64_t kTile = 16;
// The node half walks each sender's edges through a permutation (scattered
// rows): wider tiles re-read them fewer times. Measured (FP32, F = 128, 24k
// edges): 27 ms with 16-wide tiles, 10-13 ms with 64, no gain from 128.
constexpr int64_t kNodeTile = 64;

// Calls body(row_begin, row_end) in parallel over ranges of about equal
// weight, where row r weighs ptr[r+1] - ptr[r] + 1.
template <typename Body>
void for_each_row_range(const int64_t* ptr, int64_t rows, int64_t F, const Body& body) {
  if (rows == 0) return;
  const int64_t threads = at::get_num_threads();
  const int64_t total = ptr[rows] - ptr[0] + rows;
  const int64_t ranges = (threads == 1 || total * F < (1 << 14))
                             ? 1
                             : std::min<int64_t>(rows, 8 * threads);
  std::vector<int64_t> first(ranges + 1, rows);
  first[0] = 0;
  for (int64_t r = 1; r < ranges; ++r) {
    const int64_t target = ptr[0] + total / ranges * r;
    // first row whose weight prefix (ptr[row] + row) reaches target
    int64_t lo = 0, hi = rows;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (ptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    first[r] = std::max(lo, first[r - 1]);
  }
  at::parallel_for(0, ranges, 1, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) body(first[r], std::max(first[r], first[r + 1]));
  });
}

// The *_rows functions are always inlined into the per-ISA clones below (a
// plain template would be compiled once, for baseline SSE2).
template <typename T>
PYGFM_HD void message_rows(const T* x, const T* v, const T* filters, const acc_t<T>* direction,
                  const int64_t* row_ptr, const int64_t* sender, int64_t F, int64_t lo,
                  int64_t hi, T* out_s, T* out_v) {
  acc_t<T> acc[4 * kTile];
  const int64_t full = F - F % kTile;
  for (int64_t i = lo; i < hi; ++i) {
    for (int64_t f0 = 0; f0 < full; f0 += kTile)
      kernels::painn_message_block<kTile>(x, v, filters, direction, sender, row_ptr[i],
                                          row_ptr[i + 1], F, f0, kTile, acc, out_s + i * F,
                                          out_v + i * 3 * F);
    if (full < F)
      kernels::painn_message_block<0>(x, v, filters, direction, sender, row_ptr[i],
                                      row_ptr[i + 1], F, full, F - full, acc, out_s + i * F,
                                      out_v + i * 3 * F);
  }
}

template <typename T>
PYGFM_HD void edge_grad_rows(const T* grad_s, const T* grad_v, const T* x, const T* v, const T* filters,
                    const acc_t<T>* direction, const int64_t* row_ptr, const int64_t* sender,
                    int64_t F, int64_t lo, int64_t hi, T* grad_filters,
                    acc_t<T>* grad_direction) {
  using A = acc_t<T>;
  const int64_t full = F - F % kTile;
  A partial[3 * kTile];
  for (int64_t i = lo; i < hi; ++i) {
    const T* gs = grad_s + i * F;
    const T* gv = grad_v + i * 3 * F;
    for (int64_t e = row_ptr[i]; e < row_ptr[i + 1]; ++e) {
      const int64_t j = sender[e];
      const T* xj = x + j * 3 * F;
      const T* vj = v + j * 3 * F;
      const T* w = filters + e * 3 * F;
      const A* d = direction + 3 * e;
      for (int64_t k = 0; k < 3 * kTile; ++k) partial[k] = A(0);
      for (int64_t f0 = 0; f0 < full; f0 += kTile)
        kernels::painn_edge_grad_block<kTile>(gs, gv, xj, vj, w, d, F, f0, kTile,
                                              grad_filters + e * 3 * F, partial);
      A rest[3 * kTile];
      for (int64_t k = 0; k < 3 * kTile; ++k) rest[k] = A(0);
      if (full < F)
        kernels::painn_edge_grad_block<0>(gs, gv, xj, vj, w, d, F, full, F - full,
                                          grad_filters + e * 3 * F, rest);
      const int64_t n_rest = F - full;
      for (int c = 0; c < 3; ++c) {
        A sum = A(0);
        for (int64_t k = 0; k < kTile; ++k) sum += partial[c * kTile + k];
        for (int64_t k = 0; k < n_rest; ++k) sum += rest[c * n_rest + k];
        grad_direction[3 * e + c] = sum;
      }
    }
  }
}

template <typename T>
PYGFM_HD void node_grad_rows(const T* grad_s, const T* grad_v, const T* x, const T* v, const T* filters,
                    const acc_t<T>* direction, const int64_t* receiver,
                    const int64_t* sender_ptr, const int64_t* edge_of, int64_t F, int64_t lo,
                    int64_t hi, T* grad_x, T* grad_v_in) {
  acc_t<T> acc[5 * kNodeTile];
  const int64_t full = F - F % kNodeTile;
  for (int64_t j = lo; j < hi; ++j) {
    const T* xj = x + j * 3 * F;
    const T* vj = v + j * 3 * F;
    for (int64_t f0 = 0; f0 < full; f0 += kNodeTile)
      kernels::painn_node_grad_block<kNodeTile>(grad_s, grad_v, xj, vj, filters, direction,
                                            receiver, edge_of, sender_ptr[j],
                                            sender_ptr[j + 1], F, f0, kNodeTile, acc,
                                            grad_x + j * 3 * F, grad_v_in + j * 3 * F);
    if (full < F)
      kernels::painn_node_grad_block<0>(grad_s, grad_v, xj, vj, filters, direction, receiver,
                                        edge_of, sender_ptr[j], sender_ptr[j + 1], F, full,
                                        F - full, acc, grad_x + j * 3 * F,
                                        grad_v_in + j * 3 * F);
  }
}

template <typename T>
PYGFM_HD void update_rows(const T* s, const T* v, const T* a, const T* mix, int64_t F, int64_t lo,
                 int64_t hi, T* s_out, T* v_out) {
  for (int64_t n = lo; n < hi; ++n)
    kernels::painn_update_block(s + n * F, v + n * 3 * F, a + n * 3 * F, mix + n * 6 * F, F, 0,
                                F, s_out + n * F, v_out + n * 3 * F);
}

#define PYGFM_CLONED_PAINN(T)                                                                 \
  PYGFM_CPU_CLONES void message_range(const T* x, const T* v, const T* filters,              \
                                      const acc_t<T>* direction, const int64_t* row_ptr,      \
                                      const int64_t* sender, int64_t F, int64_t lo,           \
                                      int64_t hi, T* out_s, T* out_v) {                       \
    message_rows<T>(x, v, filters, direction, row_ptr, sender, F, lo, hi, out_s, out_v);    \
  }                                                                                           \
  PYGFM_CPU_CLONES void edge_grad_range(const T* grad_s, const T* grad_v, const T* x,        \
                                        const T* v, const T* filters,                        \
                                        const acc_t<T>* direction, const int64_t* row_ptr,   \
                                        const int64_t* sender, int64_t F, int64_t lo,        \
                                        int64_t hi, T* grad_filters,                          \
                                        acc_t<T>* grad_direction) {                           \
    edge_grad_rows<T>(grad_s, grad_v, x, v, filters, direction, row_ptr, sender, F, lo, hi,  \
                      grad_filters, grad_direction);                                          \
  }                                                                                           \
  PYGFM_CPU_CLONES void node_grad_range(                                                      \
      const T* grad_s, const T* grad_v, const T* x, const T* v, const T* filters,            \
      const acc_t<T>* direction, const int64_t* receiver, const int64_t* sender_ptr,         \
      const int64_t* edge_of, int64_t F, int64_t lo, int64_t hi, T* grad_x, T* grad_v_in) {  \
    node_grad_rows<T>(grad_s, grad_v, x, v, filters, direction, receiver, sender_ptr,        \
                      edge_of, F, lo, hi, grad_x, grad_v_in);                                 \
  }                                                                                           \
  PYGFM_CPU_CLONES void update_range(const T* s, const T* v, const T* a, const T* mix,       \
                                     int64_t F, int64_t lo, int64_t hi, T* s_out,            \
                                     T* v_out) {                                              \
    update_rows<T>(s, v, a, mix, F, lo, hi, s_out, v_out);                                    \
  }

PYGFM_CLONED_PAINN(double)
PYGFM_CLONED_PAINN(float)
PYGFM_CLONED_PAINN(bf16_t)
#undef PYGFM_CLONED_PAINN

}  // namespace

template <typename T>
void painn_message(const T* x, const T* v, const T* filters, const acc_t<T>* direction,
                   const int64_t* row_ptr, const int64_t* sender, int64_t N, int64_t F,
                   T* out_s, T* out_v) {
  for_each_row_range(row_ptr, N, F, [&](int64_t lo, int64_t hi) {
    message_range(x, v, filters, direction, row_ptr, sender, F, lo, hi, out_s, out_v);
  });
}

template <typename T>
void painn_message_edge_grad(const T* grad_s, const T* grad_v, const T* x, const T* v,
                             const T* filters, const acc_t<T>* direction,
                             const int64_t* row_ptr, const int64_t* sender, int64_t N,
                             int64_t F, T* grad_filters, acc_t<T>* grad_direction) {
  for_each_row_range(row_ptr, N, F, [&](int64_t lo, int64_t hi) {
    edge_grad_range(grad_s, grad_v, x, v, filters, direction, row_ptr, sender, F, lo, hi,
                    grad_filters, grad_direction);
  });
}

template <typename T>
void painn_message_node_grad(const T* grad_s, const T* grad_v, const T* x, const T* v,
                             const T* filters, const acc_t<T>* direction,
                             const int64_t* receiver, const int64_t* sender_ptr,
                             const int64_t* edge_of, int64_t N, int64_t F, T* grad_x,
                             T* grad_v_in) {
  for_each_row_range(sender_ptr, N, F, [&](int64_t lo, int64_t hi) {
    node_grad_range(grad_s, grad_v, x, v, filters, direction, receiver, sender_ptr, edge_of,
                    F, lo, hi, grad_x, grad_v_in);
  });
}

template <typename T>
void painn_update(const T* s, const T* v, const T* a, const T* mix, int64_t N, int64_t F,
                  T* s_out, T* v_out) {
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(F, 1));
  at::parallel_for(0, N, grain, [&](int64_t lo, int64_t hi) {
    update_range(s, v, a, mix, F, lo, hi, s_out, v_out);
  });
}

#define PYGFM_INSTANTIATE(T)                                                                  \
  template void painn_message<T>(const T*, const T*, const T*, const acc_t<T>*,              \
                                 const int64_t*, const int64_t*, int64_t, int64_t, T*, T*);  \
  template void painn_message_edge_grad<T>(const T*, const T*, const T*, const T*, const T*, \
                                           const acc_t<T>*, const int64_t*, const int64_t*,  \
                                           int64_t, int64_t, T*, acc_t<T>*);                  \
  template void painn_message_node_grad<T>(const T*, const T*, const T*, const T*, const T*, \
                                           const acc_t<T>*, const int64_t*, const int64_t*,  \
                                           const int64_t*, int64_t, int64_t, T*, T*);         \
  template void painn_update<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, T*, \
                                T*);
PYGFM_INSTANTIATE(double)
PYGFM_INSTANTIATE(float)
PYGFM_INSTANTIATE(bf16_t)
#undef PYGFM_INSTANTIATE

}  // namespace cpu
}  // namespace pygfm

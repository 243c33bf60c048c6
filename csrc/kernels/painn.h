// Backend-free bodies of the fused PaiNN kernels (message, its two backward
// halves, and the elementwise update), shared by the CPU and GPU launchers.
//
// Notation (schnetpack's PaiNN, Schütt et al. 2021). Edges e = (i <- j) are
// sorted by receiver i; row_ptr gives each receiver's edges. Per atom,
// x = phi(s) is [3F] = (x_s | x_r | x_m) and v is [3, F]; per edge the filter
// W(r_ij) is [3F] = (W_s | W_r | W_m) and d = r_ij / |r_ij| is [3]:
//
//   ds_i      = sum_e W_s x_s[j]
//   dv_i[c]   = sum_e (W_r x_r[j]) d[c] + (W_m x_m[j]) v_j[c]
//
// The message never exists as an [E, 3F] tensor: each receiver accumulates
// its edges in registers / a small stack block. The backward is split in two
// so that neither half needs atomics:
//   edge half (by receiver): dL/dW [E, 3F] and dL/dd [E, 3], which only read
//     the receiver's incoming gradient;
//   node half (by sender, through a permutation that lists each sender's
//     edges): dL/dx [N, 3F] and dL/dv [N, 3, F].
//
// Every body handles one row and a block of n features starting at f0 (the
// CPU passes whole tiles, a GPU thread one feature). Accumulation is in
// acc_t<T>; directions are stored as acc_t<T> (geometry stays >= FP32).
#pragma once

#include <cstdint>

#include "../common/scalar.h"

namespace pygfm {
namespace kernels {

// Row pointers inside a body never alias: saying so lets GCC vectorize the
// feature loops without run-time overlap checks.
#define PYGFM_RESTRICT __restrict__
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && !defined(__HIPCC__)
#define PYGFM_IVDEP _Pragma("GCC ivdep")
#else
#define PYGFM_IVDEP
#endif

// Tile > 0 fixes the feature count at compile time (the CPU's register tiles);
// Tile == 0 takes it from n.
template <int Tile>
PYGFM_HD int64_t tile_width(int64_t n) {
  return Tile > 0 ? Tile : n;
}

// acc: 4 * n scratch. out_s: the receiver's [F] row; out_v: its [3, F] block.
template <int Tile, typename T>
PYGFM_HD void painn_message_block(const T* x, const T* v, const T* filters,
                                  const acc_t<T>* direction, const int64_t* sender,
                                  int64_t begin, int64_t end, int64_t F, int64_t f0,
                                  int64_t n_in, acc_t<T>* acc, T* out_s, T* out_v) {
  using A = acc_t<T>;
  const int64_t n = tile_width<Tile>(n_in);
  A* sum_s = acc;
  A* sum_v0 = acc + n;
  A* sum_v1 = acc + 2 * n;
  A* sum_v2 = acc + 3 * n;
  for (int64_t k = 0; k < n; ++k) sum_s[k] = sum_v0[k] = sum_v1[k] = sum_v2[k] = A(0);
  for (int64_t e = begin; e < end; ++e) {
    const int64_t j = sender[e];
    const T* PYGFM_RESTRICT w = filters + e * 3 * F + f0;
    const T* PYGFM_RESTRICT xj = x + j * 3 * F + f0;
    const T* PYGFM_RESTRICT vj = v + j * 3 * F + f0;
    const A d0 = direction[3 * e], d1 = direction[3 * e + 1], d2 = direction[3 * e + 2];
    for (int64_t k = 0; k < n; ++k) {
      sum_s[k] += to_acc(w[k]) * to_acc(xj[k]);
      const A radial = to_acc(w[F + k]) * to_acc(xj[F + k]);
      const A mixing = to_acc(w[2 * F + k]) * to_acc(xj[2 * F + k]);
      sum_v0[k] += radial * d0 + mixing * to_acc(vj[k]);
      sum_v1[k] += radial * d1 + mixing * to_acc(vj[F + k]);
      sum_v2[k] += radial * d2 + mixing * to_acc(vj[2 * F + k]);
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    out_s[f0 + k] = from_acc<T>(sum_s[k]);
    out_v[f0 + k] = from_acc<T>(sum_v0[k]);
    out_v[F + f0 + k] = from_acc<T>(sum_v1[k]);
    out_v[2 * F + f0 + k] = from_acc<T>(sum_v2[k]);
  }
}

// Edge half of the backward for edge e = (i <- j), features [f0, f0 + n):
// writes dL/dW into grad_w (the edge's [3F] row) and adds this block's terms of
// dL/dd[c] into partial[c * n + k] (per-lane sums, so the loop vectorizes; the
// caller zeroes them per edge and adds the lanes up in a fixed order).
template <int Tile, typename T>
PYGFM_HD void painn_edge_grad_block(const T* grad_s_i, const T* grad_v_i, const T* x_j,
                                    const T* v_j, const T* w, const acc_t<T>* d, int64_t F,
                                    int64_t f0, int64_t n_in, T* grad_w, acc_t<T>* partial) {
  using A = acc_t<T>;
  const int64_t n = tile_width<Tile>(n_in);
  const A d0 = d[0], d1 = d[1], d2 = d[2];
  // offset once, index by k: GCC vectorizes [k], [F + k], not [f0 + k + F]
  const T* PYGFM_RESTRICT gs = grad_s_i + f0;
  const T* PYGFM_RESTRICT gv = grad_v_i + f0;
  const T* PYGFM_RESTRICT xj = x_j + f0;
  const T* PYGFM_RESTRICT vj = v_j + f0;
  const T* PYGFM_RESTRICT wr = w + F + f0;
  T* PYGFM_RESTRICT out = grad_w + f0;
  A* PYGFM_RESTRICT lanes = partial;
  PYGFM_IVDEP
  for (int64_t k = 0; k < n; ++k) {
    const A g0 = to_acc(gv[k]), g1 = to_acc(gv[F + k]), g2 = to_acc(gv[2 * F + k]);
    const A xr = to_acc(xj[F + k]);
    const A g_dot_d = g0 * d0 + g1 * d1 + g2 * d2;
    const A g_dot_v = g0 * to_acc(vj[k]) + g1 * to_acc(vj[F + k]) + g2 * to_acc(vj[2 * F + k]);
    out[k] = from_acc<T>(to_acc(gs[k]) * to_acc(xj[k]));
    out[F + k] = from_acc<T>(xr * g_dot_d);
    out[2 * F + k] = from_acc<T>(to_acc(xj[2 * F + k]) * g_dot_v);
    const A radial = to_acc(wr[k]) * xr;
    lanes[k] += g0 * radial;
    lanes[n + k] += g1 * radial;
    lanes[2 * n + k] += g2 * radial;
  }
}

// dL/dd[c] of edge e summed over features [f0, f0 + n) (the GPU's second pass
// of the edge half; the CPU gets it from painn_edge_grad_block).
template <typename T>
PYGFM_HD acc_t<T> painn_direction_grad(const T* grad_v_i, const T* x_j, const T* w, int64_t F,
                                       int c, int64_t f0, int64_t n) {
  acc_t<T> sum = acc_t<T>(0);
  for (int64_t f = f0; f < f0 + n; ++f)
    sum += to_acc(grad_v_i[c * F + f]) * to_acc(w[F + f]) * to_acc(x_j[F + f]);
  return sum;
}

// Node half of the backward for sender j: its edges are edge_of[begin:end)
// (a permutation of the receiver-sorted edges), receiver[e] their receivers.
// acc: 5 * n scratch. Writes the j rows of grad_x [3F] and grad_v [3, F].
template <int Tile, typename T>
PYGFM_HD void painn_node_grad_block(const T* grad_s, const T* grad_v, const T* x_j,
                                    const T* v_j, const T* filters,
                                    const acc_t<T>* direction, const int64_t* receiver,
                                    const int64_t* edge_of, int64_t begin, int64_t end,
                                    int64_t F, int64_t f0, int64_t n_in, acc_t<T>* acc,
                                    T* grad_x_j, T* grad_v_j) {
  using A = acc_t<T>;
  const int64_t n = tile_width<Tile>(n_in);
  A* p_s = acc;
  A* p_r = acc + n;
  A* q0 = acc + 2 * n;
  A* q1 = acc + 3 * n;
  A* q2 = acc + 4 * n;
  for (int64_t k = 0; k < n; ++k) p_s[k] = p_r[k] = q0[k] = q1[k] = q2[k] = A(0);
  for (int64_t p = begin; p < end; ++p) {
    const int64_t e = edge_of[p];
    const int64_t i = receiver[e];
    const T* PYGFM_RESTRICT w = filters + e * 3 * F + f0;
    const T* PYGFM_RESTRICT gs = grad_s + i * F + f0;
    const T* PYGFM_RESTRICT gv = grad_v + i * 3 * F + f0;
    const A d0 = direction[3 * e], d1 = direction[3 * e + 1], d2 = direction[3 * e + 2];
    for (int64_t k = 0; k < n; ++k) {
      const A g0 = to_acc(gv[k]), g1 = to_acc(gv[F + k]), g2 = to_acc(gv[2 * F + k]);
      p_s[k] += to_acc(w[k]) * to_acc(gs[k]);
      p_r[k] += to_acc(w[F + k]) * (g0 * d0 + g1 * d1 + g2 * d2);
      const A wm = to_acc(w[2 * F + k]);
      q0[k] += wm * g0;
      q1[k] += wm * g1;
      q2[k] += wm * g2;
    }
  }
  const T* PYGFM_RESTRICT xm_j = x_j + 2 * F + f0;
  const T* PYGFM_RESTRICT vj = v_j + f0;
  T* PYGFM_RESTRICT gx = grad_x_j + f0;
  T* PYGFM_RESTRICT gvj = grad_v_j + f0;
  PYGFM_IVDEP
  for (int64_t k = 0; k < n; ++k) {
    const A xm = to_acc(xm_j[k]);
    gx[k] = from_acc<T>(p_s[k]);
    gx[F + k] = from_acc<T>(p_r[k]);
    gx[2 * F + k] = from_acc<T>(to_acc(vj[k]) * q0[k] + to_acc(vj[F + k]) * q1[k] +
                                to_acc(vj[2 * F + k]) * q2[k]);
    gvj[k] = from_acc<T>(xm * q0[k]);
    gvj[F + k] = from_acc<T>(xm * q1[k]);
    gvj[2 * F + k] = from_acc<T>(xm * q2[k]);
  }
}

// Elementwise PaiNN update of one atom, features [f0, f0 + n):
//   s' = s + a_ss + a_sv <V, W>,   v'[c] = v[c] + a_vv W[c]
// a is [3F] = (a_ss | a_vv | a_sv) and mix is [3, 2F] = (V | W) per component.
template <typename T>
PYGFM_HD void painn_update_block(const T* s, const T* v, const T* a, const T* mix, int64_t F,
                                 int64_t f0, int64_t n, T* s_out, T* v_out) {
  using A = acc_t<T>;
  PYGFM_IVDEP
  for (int64_t k = 0; k < n; ++k) {
    const int64_t f = f0 + k;
    A inner = A(0);
    const A a_vv = to_acc(a[F + f]);
    for (int c = 0; c < 3; ++c) {
      const A vec_v = to_acc(mix[c * 2 * F + f]), vec_w = to_acc(mix[c * 2 * F + F + f]);
      inner += vec_v * vec_w;
      v_out[c * F + f] = from_acc<T>(to_acc(v[c * F + f]) + a_vv * vec_w);
    }
    s_out[f] = from_acc<T>(to_acc(s[f]) + to_acc(a[f]) + to_acc(a[2 * F + f]) * inner);
  }
}

}  // namespace kernels
}  // namespace pygfm

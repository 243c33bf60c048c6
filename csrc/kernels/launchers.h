// Launchers: one per op and backend, over raw pointers and sizes.
//
// They know nothing of torch, so the GPU ones compile with plain nvcc or hipcc
// (fast, and checkable in CI without a CUDA or ROCm build of torch). The torch
// bindings in csrc/ops/ check arguments, allocate outputs and call these.
// Matrices are row-major [rows, F]; ptr has S + 1 entries; index and arg are
// int64. A future SYCL backend adds a namespace here and a folder csrc/sycl/.
#pragma once

#include <cstdint>

#include <functional>

#include "../common/scalar.h"
#include "neighbor_list.h"

namespace pygfm {

enum class Extreme { Max, Min };

namespace cpu {

template <typename T>
void segment_sum(const T* src, const int64_t* ptr, int64_t S, int64_t F, bool mean, T* out);
template <typename T>
void segment_extreme(const T* src, const int64_t* ptr, int64_t S, int64_t F, Extreme which,
                     T* out, int64_t* arg);
template <typename T>
void segment_broadcast(const T* src, const int64_t* ptr, int64_t S, int64_t F, T* out);
// out must be zero-filled by the caller.
template <typename T>
void arg_scatter(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out);
template <typename T>
void arg_gather(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out);
// acc is an [S, F] scratch of acc_t<T> (it may alias out when T is acc_t<T>).
template <typename T>
void scatter_sum(const T* src, const int64_t* index, int64_t E, int64_t F, int64_t S,
                 acc_t<T>* acc, T* out);
template <typename T>
void scatter_extreme(const T* src, const int64_t* index, int64_t E, int64_t F, int64_t S,
                     Extreme which, T* out, int64_t* arg);

// Neighbor lists (see kernels/neighbor_list.h for the grid). place_atoms fills
// g.image, g.wrapped, g.atom_bin (cast away from const) and global_bin.
void place_atoms(const kernels::NeighborGrid& g, const double* inv_cell, int64_t N,
                 int64_t* image, double* wrapped, int64_t* atom_bin, int64_t* global_bin);
// The neighbors of every atom, receiver by receiver, each receiver's sorted by
// (j, S); at most max_neighbors (the nearest) per receiver when it is >= 0.
// Once the number of pairs E is known, allocate(E) must return where to write
// them; counts ([N], given) receives the pairs per receiver.
struct PairBuffers {
  int64_t* receiver;  // [E]
  int64_t* sender;    // [E]
  int64_t* shift;     // [E, 3]
};
void find_neighbors(const kernels::NeighborGrid& g, int64_t N, double cutoff,
                    bool self_interaction, int64_t max_neighbors, int64_t* counts,
                    const std::function<PairBuffers(int64_t)>& allocate);
// Sum over atoms of kernels::candidate_count (capped at max_neighbors when >= 0):
// a bound on the pairs from the bins' occupancy, without distances.
int64_t candidate_pairs(const kernels::NeighborGrid& g, int64_t N, int64_t max_neighbors);
// counts[i] = the pairs find_neighbors would give receiver i, without storing them.
void count_pairs(const kernels::NeighborGrid& g, int64_t N, double cutoff, bool self_interaction,
                 int64_t max_neighbors, int64_t* counts);

// Fused PaiNN kernels (see kernels/painn.h). x, grad_x: [N, 3F]; v, grad_v,
// out_v: [N, 3, F]; filters, grad_filters: [E, 3F]; direction: [E, 3] in
// acc_t<T>; edges sorted by receiver (row_ptr [N+1], sender [E]); the node
// half also gets receiver [E] and each sender's edges edge_of[sender_ptr[j]:
// sender_ptr[j+1]]. mix is [N, 3, 2F], a is [N, 3F].
template <typename T>
void painn_message(const T* x, const T* v, const T* filters, const acc_t<T>* direction,
                   const int64_t* row_ptr, const int64_t* sender, int64_t N, int64_t F,
                   T* out_s, T* out_v);
template <typename T>
void painn_message_edge_grad(const T* grad_s, const T* grad_v, const T* x, const T* v,
                             const T* filters, const acc_t<T>* direction,
                             const int64_t* row_ptr, const int64_t* sender, int64_t N,
                             int64_t F, T* grad_filters, acc_t<T>* grad_direction);
template <typename T>
void painn_message_node_grad(const T* grad_s, const T* grad_v, const T* x, const T* v,
                             const T* filters, const acc_t<T>* direction,
                             const int64_t* receiver, const int64_t* sender_ptr,
                             const int64_t* edge_of, int64_t N, int64_t F, T* grad_x,
                             T* grad_v_in);
template <typename T>
void painn_update(const T* s, const T* v, const T* a, const T* mix, int64_t N, int64_t F,
                  T* s_out, T* v_out);

}  // namespace cpu

namespace gpu {

// Every GPU launcher enqueues on `stream` (a cudaStream_t / hipStream_t) and
// returns 0 or the runtime's error code; error_string turns that into text.
const char* error_string(int code);

template <typename T>
int segment_sum(const T* src, const int64_t* ptr, int64_t S, int64_t F, bool mean, T* out,
                void* stream);
template <typename T>
int segment_extreme(const T* src, const int64_t* ptr, int64_t S, int64_t F, Extreme which,
                    T* out, int64_t* arg, void* stream);
template <typename T>
int segment_broadcast(const T* src, const int64_t* ptr, int64_t S, int64_t F, T* out,
                      void* stream);
template <typename T>
int arg_scatter(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out, void* stream);
template <typename T>
int arg_gather(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out, void* stream);
// Atomic accumulation into acc ([S, F] of acc_t<T>, may alias out), then
// conversion to T. Summation order, and so the last bits, may vary run to run.
template <typename T>
int scatter_sum(const T* src, const int64_t* index, int64_t E, int64_t F, int64_t S,
                acc_t<T>* acc, T* out, void* stream);
// Deterministic: the lowest row holding the extreme wins, as on the CPU.
// acc is an [S, F] scratch of acc_t<T> (may alias out).
template <typename T>
int scatter_extreme(const T* src, const int64_t* index, int64_t E, int64_t F, int64_t S,
                    Extreme which, acc_t<T>* acc, T* out, int64_t* arg, void* stream);

int place_atoms(const kernels::NeighborGrid& g, const double* inv_cell, int64_t N,
                int64_t* image, double* wrapped, int64_t* atom_bin, int64_t* global_bin,
                void* stream);
// Pass 1: counts[i] = number of neighbors of atom i (before max_neighbors).
int count_neighbors(const kernels::NeighborGrid& g, int64_t N, double cutoff,
                    bool self_interaction, int64_t* counts, void* stream);
// Pass 2: fills the CSR rows given by offsets (exclusive prefix sum of counts)
// with senders, shifts and squared distances, each row sorted by (j, S).
int fill_neighbors(const kernels::NeighborGrid& g, int64_t N, double cutoff,
                   bool self_interaction, const int64_t* offsets, int64_t* sender,
                   int64_t* shift, double* distance2, void* stream);
// Keeps the max_neighbors nearest of each row (ties by (j, S)), in (j, S) order:
// rows of `offsets` in, rows of `kept_offsets` out.
int select_nearest(int64_t N, int64_t max_neighbors, const int64_t* offsets,
                   const int64_t* sender, const int64_t* shift, double* distance2,
                   const int64_t* kept_offsets, int64_t* kept_sender, int64_t* kept_shift,
                   void* stream);

// Fused PaiNN kernels: the same arguments as the CPU ones, plus the stream; the
// edge half takes each edge's receiver instead of row_ptr.
template <typename T>
int painn_message(const T* x, const T* v, const T* filters, const acc_t<T>* direction,
                  const int64_t* row_ptr, const int64_t* sender, int64_t N, int64_t F,
                  T* out_s, T* out_v, void* stream);
template <typename T>
int painn_message_edge_grad(const T* grad_s, const T* grad_v, const T* x, const T* v,
                            const T* filters, const acc_t<T>* direction,
                            const int64_t* receiver, const int64_t* sender, int64_t E,
                            int64_t F, T* grad_filters, acc_t<T>* grad_direction,
                            void* stream);
template <typename T>
int painn_message_node_grad(const T* grad_s, const T* grad_v, const T* x, const T* v,
                            const T* filters, const acc_t<T>* direction,
                            const int64_t* receiver, const int64_t* sender_ptr,
                            const int64_t* edge_of, int64_t N, int64_t F, T* grad_x,
                            T* grad_v_in, void* stream);
template <typename T>
int painn_update(const T* s, const T* v, const T* a, const T* mix, int64_t N, int64_t F,
                 T* s_out, T* v_out, void* stream);

}  // namespace gpu
}  // namespace pygfm

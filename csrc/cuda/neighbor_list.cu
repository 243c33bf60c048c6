// CUDA / HIP neighbor search over the cell grid of kernels/neighbor_list.h.
//
// One thread per receiver atom, three passes with exact sizes in between (the
// binding allocates from the counts, so nothing is ever truncated or retried):
//   1. count_neighbors: how many pairs each receiver has;
//   2. fill_neighbors: write them into the receiver's CSR row, then sort the row
//      by (j, S) in place (insertion sort: rows are tens of pairs long);
//   3. select_nearest (only with max_neighbors): keep the nearest of each row.
// Unverified on hardware until a GPU run records it in benchmarks/RESULTS.md.
#include "../common/gpu.h"
#include "../kernels/launchers.h"
#include "../kernels/neighbor_list.h"

namespace pygfm {
namespace gpu {
namespace {

using kernels::NeighborGrid;

struct Counter {
  int64_t count = 0;
  __device__ void operator()(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             double) {
    ++count;
  }
};

struct Writer {
  int64_t* sender;
  int64_t* shift;
  double* distance2;
  int64_t n = 0;
  __device__ void operator()(int64_t j, int64_t s0, int64_t s1, int64_t s2, int64_t, int64_t,
                             int64_t, double r2) {
    sender[n] = j;
    shift[3 * n] = s0;
    shift[3 * n + 1] = s1;
    shift[3 * n + 2] = s2;
    distance2[n] = r2;
    ++n;
  }
};

__device__ __forceinline__ bool before(const int64_t* sender, const int64_t* shift, int64_t a,
                                       int64_t b) {
  if (sender[a] != sender[b]) return sender[a] < sender[b];
  for (int c = 0; c < 3; ++c)
    if (shift[3 * a + c] != shift[3 * b + c]) return shift[3 * a + c] < shift[3 * b + c];
  return false;
}

__device__ void swap_pairs(int64_t* sender, int64_t* shift, double* distance2, int64_t a,
                           int64_t b) {
  int64_t t = sender[a];
  sender[a] = sender[b];
  sender[b] = t;
  for (int c = 0; c < 3; ++c) {
    t = shift[3 * a + c];
    shift[3 * a + c] = shift[3 * b + c];
    shift[3 * b + c] = t;
  }
  const double d = distance2[a];
  distance2[a] = distance2[b];
  distance2[b] = d;
}

__global__ void place_kernel(NeighborGrid g, const double* inv_cell, int64_t N, int64_t* image,
                             double* wrapped, int64_t* atom_bin, int64_t* global_bin) {
  PYGFM_GRID_STRIDE(i, N) {
    kernels::place_atom(g, inv_cell, i, image, wrapped, atom_bin, global_bin);
  }
}

__global__ void count_kernel(NeighborGrid g, int64_t N, double cutoff, bool self_interaction,
                             int64_t* counts) {
  PYGFM_GRID_STRIDE(i, N) {
    Counter counter;
    kernels::visit_neighbors(g, i, cutoff, self_interaction, counter);
    counts[i] = counter.count;
  }
}

__global__ void fill_kernel(NeighborGrid g, int64_t N, double cutoff, bool self_interaction,
                            const int64_t* offsets, int64_t* sender, int64_t* shift,
                            double* distance2) {
  PYGFM_GRID_STRIDE(i, N) {
    const int64_t row = offsets[i];
    Writer writer{sender + row, shift + 3 * row, distance2 + row};
    kernels::visit_neighbors(g, i, cutoff, self_interaction, writer);
    int64_t* s = sender + row;
    int64_t* sh = shift + 3 * row;
    double* d = distance2 + row;
    for (int64_t a = 1; a < writer.n; ++a)
      for (int64_t b = a; b > 0 && before(s, sh, b, b - 1); --b) swap_pairs(s, sh, d, b, b - 1);
  }
}

__global__ void select_kernel(int64_t N, int64_t keep, const int64_t* offsets,
                              const int64_t* sender, const int64_t* shift,
                              const double* distance2, const int64_t* kept_offsets,
                              int64_t* kept_sender, int64_t* kept_shift) {
  PYGFM_GRID_STRIDE(i, N) {
    const int64_t begin = offsets[i], end = offsets[i + 1];
    int64_t out = kept_offsets[i];
    const int64_t quota = kept_offsets[i + 1] - out;
    // Row is in (j, S) order; keep pair p iff fewer than `quota` pairs are nearer
    // (by distance, then by position in the row). Quadratic, but rows are short
    // and it keeps the (j, S) order without scratch memory.
    for (int64_t p = begin; p < end; ++p) {
      int64_t nearer = 0;
      for (int64_t q = begin; q < end && nearer < quota; ++q)
        if (distance2[q] < distance2[p] || (distance2[q] == distance2[p] && q < p)) ++nearer;
      if (nearer < quota) {
        kept_sender[out] = sender[p];
        for (int c = 0; c < 3; ++c) kept_shift[3 * out + c] = shift[3 * p + c];
        ++out;
      }
    }
  }
}

inline gpuStream_t as_stream(void* stream) { return static_cast<gpuStream_t>(stream); }

}  // namespace

int place_atoms(const NeighborGrid& g, const double* inv_cell, int64_t N, int64_t* image,
                double* wrapped, int64_t* atom_bin, int64_t* global_bin, void* stream) {
  if (N == 0) return 0;
  place_kernel<<<blocks_for(N), kBlock, 0, as_stream(stream)>>>(g, inv_cell, N, image, wrapped,
                                                                atom_bin, global_bin);
  return static_cast<int>(gpuGetLastError());
}

int count_neighbors(const NeighborGrid& g, int64_t N, double cutoff, bool self_interaction,
                    int64_t* counts, void* stream) {
  if (N == 0) return 0;
  count_kernel<<<blocks_for(N), kBlock, 0, as_stream(stream)>>>(g, N, cutoff, self_interaction,
                                                                counts);
  return static_cast<int>(gpuGetLastError());
}

int fill_neighbors(const NeighborGrid& g, int64_t N, double cutoff, bool self_interaction,
                   const int64_t* offsets, int64_t* sender, int64_t* shift, double* distance2,
                   void* stream) {
  if (N == 0) return 0;
  fill_kernel<<<blocks_for(N), kBlock, 0, as_stream(stream)>>>(g, N, cutoff, self_interaction,
                                                               offsets, sender, shift, distance2);
  return static_cast<int>(gpuGetLastError());
}

int select_nearest(int64_t N, int64_t max_neighbors, const int64_t* offsets,
                   const int64_t* sender, const int64_t* shift, double* distance2,
                   const int64_t* kept_offsets, int64_t* kept_sender, int64_t* kept_shift,
                   void* stream) {
  if (N == 0) return 0;
  select_kernel<<<blocks_for(N), kBlock, 0, as_stream(stream)>>>(
      N, max_neighbors, offsets, sender, shift, distance2, kept_offsets, kept_sender, kept_shift);
  return static_cast<int>(gpuGetLastError());
}

}  // namespace gpu
}  // namespace pygfm

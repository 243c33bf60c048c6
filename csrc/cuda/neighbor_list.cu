// CUDA / HIP neighbor search over the cell grid of kernels/neighbor_list.h.
//
// Passes with exact sizes in between (the binding allocates from the counts, so
// nothing is ever truncated or retried):
//   1. count_neighbors (count_kernel, one thread per receiver): how many pairs
//      each receiver has;
//   2. fill_neighbors: fill_kernel (one thread per receiver) writes each
//      receiver's pairs into its CSR row in the order the grid visits them, then
//      sort_rows_kernel sorts every row by (j, S) in place. One block of kBlock
//      threads takes kSortRows consecutive rows at a time: it copies their pairs
//      (a contiguous range of the CSR arrays) into shared memory, waits at a
//      barrier, and writes each pair to its row's start + its rank, the number of
//      pairs of its row with a smaller (j, S) key ((j, S) is unique within a row;
//      equal keys would rank by position, so the ranks are always a permutation).
//      All of a range's reads happen before the barrier and all its writes after,
//      so the in-place permutation has no race. If the rows together exceed
//      kSortTile pairs the block sorts them one at a time the same way; a single
//      row longer than kSortTile is sorted in global memory by odd-even
//      transposition (a barrier per phase: correct, slow, and only reached when
//      one atom has more than kSortTile neighbors). distance2 moves with its pair.
//      Only block-wide barriers are used, no warp intrinsics, so the code is the
//      same for 32-lane warps and 64-lane wavefronts.
//   3. select_nearest (only with max_neighbors): keep the nearest of each row.
// The row sort is unverified on hardware until a GPU run records it in
// benchmarks/RESULTS.md (the earlier passes were verified there).
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
  }
}

// ---- row sort (pass 2b)

constexpr int kSortRows = 8;     // consecutive rows a block takes at a time
constexpr int kSortTile = 1024;  // pairs a block stages in shared memory (40 KiB)

struct SortTile {
  int64_t sender[kSortTile];
  int64_t shift[3 * kSortTile];
  double distance2[kSortTile];
  int64_t bounds[kSortRows + 1];  // offsets[r0 .. r0 + rows]
};

// Does staged pair a come before staged pair b? (j, S) order; equal keys (not
// in a valid row) by position, which makes the rank sort stable.
__device__ __forceinline__ bool tile_before(const SortTile& t, int a, int b) {
  if (t.sender[a] != t.sender[b]) return t.sender[a] < t.sender[b];
  for (int c = 0; c < 3; ++c)
    if (t.shift[3 * a + c] != t.shift[3 * b + c]) return t.shift[3 * a + c] < t.shift[3 * b + c];
  return a < b;
}

// Sorts rows bounds[0..rows] (absolute offsets, rows >= 1, with
// bounds[rows] - bounds[0] <= kSortTile) through shared memory, with the whole
// block. Every thread of the block must call it (it holds barriers).
__device__ void sort_rows_in_tile(SortTile& t, const int64_t* bounds, int rows, int64_t* sender,
                                  int64_t* shift, double* distance2) {
  const int64_t begin = bounds[0];
  const int n = static_cast<int>(bounds[rows] - begin);
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    t.sender[k] = sender[begin + k];
    t.distance2[k] = distance2[begin + k];
  }
  for (int k = threadIdx.x; k < 3 * n; k += blockDim.x) t.shift[k] = shift[3 * begin + k];
  __syncthreads();  // every read of the range is done before any write to it
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    int r = 0;  // the row holding staged pair e (rows may be empty)
    while (bounds[r + 1] - begin <= e) ++r;
    const int row_begin = static_cast<int>(bounds[r] - begin);
    const int row_end = static_cast<int>(bounds[r + 1] - begin);
    int rank = 0;
    for (int q = row_begin; q < row_end; ++q) rank += tile_before(t, q, e) ? 1 : 0;
    const int64_t to = begin + row_begin + rank;
    sender[to] = t.sender[e];
    for (int c = 0; c < 3; ++c) shift[3 * to + c] = t.shift[3 * e + c];
    distance2[to] = t.distance2[e];
  }
  __syncthreads();  // the tile is free again
}

// Sorts one row of any length in global memory by odd-even transposition: n
// phases of disjoint neighbor compare-exchanges, a barrier after each (the
// barrier also makes the block's global writes visible to the block).
__device__ void sort_row_in_global(int64_t begin, int64_t n, int64_t* sender, int64_t* shift,
                                   double* distance2) {
  int64_t* s = sender + begin;
  int64_t* sh = shift + 3 * begin;
  double* d = distance2 + begin;
  for (int64_t phase = 0; phase < n; ++phase) {
    for (int64_t a = 2 * static_cast<int64_t>(threadIdx.x) + (phase & 1); a + 1 < n;
         a += 2 * static_cast<int64_t>(blockDim.x))
      if (before(s, sh, a + 1, a)) swap_pairs(s, sh, d, a, a + 1);
    __syncthreads();
  }
}

__global__ void sort_rows_kernel(int64_t N, const int64_t* offsets, int64_t* sender,
                                 int64_t* shift, double* distance2) {
  __shared__ SortTile t;
  const int64_t groups = (N + kSortRows - 1) / kSortRows;
  for (int64_t group = blockIdx.x; group < groups; group += gridDim.x) {
    const int64_t r0 = group * kSortRows;
    const int rows = static_cast<int>(N - r0 < kSortRows ? N - r0 : kSortRows);
    if (static_cast<int>(threadIdx.x) <= rows) t.bounds[threadIdx.x] = offsets[r0 + threadIdx.x];
    __syncthreads();
    // block-uniform from here on (read from shared memory after the barrier),
    // so every thread reaches the same barriers
    if (t.bounds[rows] - t.bounds[0] <= kSortTile) {
      sort_rows_in_tile(t, t.bounds, rows, sender, shift, distance2);
    } else {
      for (int r = 0; r < rows; ++r) {
        const int64_t length = t.bounds[r + 1] - t.bounds[r];
        if (length <= kSortTile)
          sort_rows_in_tile(t, t.bounds + r, 1, sender, shift, distance2);
        else
          sort_row_in_global(t.bounds[r], length, sender, shift, distance2);
      }
    }
    __syncthreads();  // bounds are read by every thread before the next group overwrites them
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
  const int status = static_cast<int>(gpuGetLastError());
  if (status != 0) return status;
  // one block per kSortRows rows (blocks_for counts kBlock-sized chunks, and caps the grid)
  const int64_t groups = (N + kSortRows - 1) / kSortRows;
  sort_rows_kernel<<<blocks_for(groups * kBlock), kBlock, 0, as_stream(stream)>>>(
      N, offsets, sender, shift, distance2);
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

// CUDA / HIP launchers for the segmented and scattered reductions.
//
// Segmented ops (CSR ptr): one thread per (segment, feature) walks the rows of
// its segment in order, so adjacent threads read adjacent features of a row
// (coalesced) and the result is deterministic. This suits message-passing
// shapes (segments of tens of rows, F >= 32); a single segment of millions of
// rows runs on only F threads (correct, slow).
//
// scatter_sum (unsorted index): atomicAdd into an accumulation buffer (FP32 for
// BF16), then conversion. scatter_max/min: atomic compare-and-swap extreme,
// then an atomicMin over the rows that hold it, which picks the lowest row as
// the CPU does, and the value is read from that row, so values and argmax agree
// bit for bit across devices (signed zeros included).
//
// Same source for nvcc and hipcc: see common/gpu.h.
#include "../common/gpu.h"
#include "../kernels/launchers.h"
#include "../kernels/segment_reduce.h"

namespace pygfm {
namespace gpu {
namespace {

template <typename T>
__global__ void segment_sum_kernel(const T* src, const int64_t* ptr, int64_t S, int64_t F,
                                   bool mean, T* out) {
  PYGFM_GRID_STRIDE(i, S * F) {
    const int64_t s = i / F, f = i % F;
    const int64_t begin = ptr[s], end = ptr[s + 1];
    const acc_t<T> scale =
        (mean && end > begin) ? acc_t<T>(1) / acc_t<T>(end - begin) : acc_t<T>(1);
    acc_t<T> acc;
    kernels::segment_sum_block(src, begin, end, F, f, 1, scale, &acc, out + s * F);
  }
}

template <typename T, bool IsMax>
__global__ void segment_extreme_kernel(const T* src, const int64_t* ptr, int64_t S, int64_t F,
                                       T* out, int64_t* arg) {
  PYGFM_GRID_STRIDE(i, S * F) {
    const int64_t s = i / F, f = i % F;
    acc_t<T> acc;
    kernels::segment_extreme_block<T, IsMax>(src, ptr[s], ptr[s + 1], F, f, 1, &acc,
                                             out + s * F, arg + s * F);
  }
}

template <typename T>
__global__ void segment_broadcast_kernel(const T* src, const int64_t* ptr, int64_t S,
                                         int64_t F, T* out) {
  PYGFM_GRID_STRIDE(i, S * F) {
    const int64_t s = i / F, f = i % F;
    kernels::segment_broadcast_block(src + s * F, ptr[s], ptr[s + 1], F, f, 1, out);
  }
}

template <typename T>
__global__ void arg_scatter_kernel(const T* src, const int64_t* arg, int64_t S, int64_t F,
                                   T* out) {
  PYGFM_GRID_STRIDE(i, S * F) {
    const int64_t s = i / F, f = i % F;
    kernels::arg_scatter_block(src + s * F, arg + s * F, F, f, 1, out);
  }
}

template <typename T>
__global__ void arg_gather_kernel(const T* src, const int64_t* arg, int64_t S, int64_t F,
                                  T* out) {
  PYGFM_GRID_STRIDE(i, S * F) {
    const int64_t s = i / F, f = i % F;
    kernels::arg_gather_block(src, arg + s * F, F, f, 1, out + s * F);
  }
}

template <typename T>
__global__ void scatter_add_kernel(const T* src, const int64_t* index, int64_t E, int64_t F,
                                   int64_t S, acc_t<T>* acc) {
  PYGFM_GRID_STRIDE(i, E * F) {
    const int64_t target = index[i / F];
    if (target < 0 || target >= S) continue;  // rejected before launch; never write outside
    atomicAdd(acc + target * F + i % F, to_acc(src[i]));
  }
}

template <typename T>
__global__ void convert_kernel(const acc_t<T>* acc, int64_t n, T* out) {
  PYGFM_GRID_STRIDE(i, n) { out[i] = from_acc<T>(acc[i]); }
}

__device__ __forceinline__ bool replaces(float value, float current, bool is_max) {
  if (is_nan(current)) return false;
  return is_nan(value) || (is_max ? value > current : value < current);
}
__device__ __forceinline__ bool replaces(double value, double current, bool is_max) {
  if (is_nan(current)) return false;
  return is_nan(value) || (is_max ? value > current : value < current);
}

__device__ __forceinline__ void atomic_extreme(float* address, float value, bool is_max) {
  unsigned int* word = reinterpret_cast<unsigned int*>(address);
  unsigned int old = *word, assumed;
  do {
    assumed = old;
    if (!replaces(value, __uint_as_float(assumed), is_max)) return;
    old = atomicCAS(word, assumed, __float_as_uint(value));
  } while (assumed != old);
}

__device__ __forceinline__ void atomic_extreme(double* address, double value, bool is_max) {
  unsigned long long* word = reinterpret_cast<unsigned long long*>(address);
  unsigned long long old = *word, assumed;
  do {
    assumed = old;
    if (!replaces(value, __longlong_as_double(static_cast<long long>(assumed)), is_max)) return;
    old = atomicCAS(word, assumed, static_cast<unsigned long long>(__double_as_longlong(value)));
  } while (assumed != old);
}

template <typename A>
__global__ void extreme_init_kernel(A* acc, int64_t* arg, int64_t n, int64_t sentinel,
                                    bool is_max) {
  const A start = is_max ? -positive_infinity<A>() : positive_infinity<A>();
  PYGFM_GRID_STRIDE(i, n) {
    acc[i] = start;
    arg[i] = sentinel;
  }
}

template <typename T>
__global__ void scatter_extreme_kernel(const T* src, const int64_t* index, int64_t E, int64_t F,
                                       int64_t S, bool is_max, acc_t<T>* acc) {
  PYGFM_GRID_STRIDE(i, E * F) {
    const int64_t target = index[i / F];
    if (target < 0 || target >= S) continue;
    atomic_extreme(acc + target * F + i % F, to_acc(src[i]), is_max);
  }
}

template <typename T>
__global__ void scatter_arg_kernel(const T* src, const int64_t* index, int64_t E, int64_t F,
                                   int64_t S, const acc_t<T>* acc, int64_t* arg) {
  PYGFM_GRID_STRIDE(i, E * F) {
    const int64_t e = i / F;
    const int64_t target = index[e];
    if (target < 0 || target >= S) continue;
    const int64_t slot = target * F + i % F;
    const acc_t<T> value = to_acc(src[i]);
    const acc_t<T> extreme = acc[slot];
    if (value == extreme || (is_nan(value) && is_nan(extreme)))
      atomicMin(reinterpret_cast<unsigned long long*>(arg + slot),
                static_cast<unsigned long long>(e));
  }
}

// The value is read back from the arg row, not from the accumulator: +0 and -0
// compare equal, so the accumulator may hold the sign of another row than the
// (lowest) arg row; the CPU returns src[arg] exactly, and so does this.
template <typename T>
__global__ void scatter_extreme_finish_kernel(const T* src, int64_t F, int64_t n,
                                              int64_t sentinel, T* out, int64_t* arg) {
  PYGFM_GRID_STRIDE(i, n) {
    const bool empty = arg[i] == sentinel;
    out[i] = empty ? from_acc<T>(acc_t<T>(0)) : src[arg[i] * F + i % F];
    if (empty) arg[i] = -1;
  }
}

inline gpuStream_t as_stream(void* stream) { return static_cast<gpuStream_t>(stream); }

inline int status() { return static_cast<int>(gpuGetLastError()); }

}  // namespace

const char* error_string(int code) { return gpuGetErrorString(static_cast<gpuError_t>(code)); }

template <typename T>
int segment_sum(const T* src, const int64_t* ptr, int64_t S, int64_t F, bool mean, T* out,
                void* stream) {
  if (S * F == 0) return 0;
  segment_sum_kernel<T><<<blocks_for(S * F), kBlock, 0, as_stream(stream)>>>(src, ptr, S, F,
                                                                             mean, out);
  return status();
}

template <typename T>
int segment_extreme(const T* src, const int64_t* ptr, int64_t S, int64_t F, Extreme which,
                    T* out, int64_t* arg, void* stream) {
  if (S * F == 0) return 0;
  if (which == Extreme::Max)
    segment_extreme_kernel<T, true>
        <<<blocks_for(S * F), kBlock, 0, as_stream(stream)>>>(src, ptr, S, F, out, arg);
  else
    segment_extreme_kernel<T, false>
        <<<blocks_for(S * F), kBlock, 0, as_stream(stream)>>>(src, ptr, S, F, out, arg);
  return status();
}

template <typename T>
int segment_broadcast(const T* src, const int64_t* ptr, int64_t S, int64_t F, T* out,
                      void* stream) {
  if (S * F == 0) return 0;
  segment_broadcast_kernel<T><<<blocks_for(S * F), kBlock, 0, as_stream(stream)>>>(src, ptr, S,
                                                                                   F, out);
  return status();
}

template <typename T>
int arg_scatter(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out, void* stream) {
  if (S * F == 0) return 0;
  arg_scatter_kernel<T><<<blocks_for(S * F), kBlock, 0, as_stream(stream)>>>(src, arg, S, F,
                                                                             out);
  return status();
}

template <typename T>
int arg_gather(const T* src, const int64_t* arg, int64_t S, int64_t F, T* out, void* stream) {
  if (S * F == 0) return 0;
  arg_gather_kernel<T><<<blocks_for(S * F), kBlock, 0, as_stream(stream)>>>(src, arg, S, F,
                                                                            out);
  return status();
}

template <typename T>
int scatter_sum(const T* src, const int64_t* index, int64_t E, int64_t F, int64_t S,
                acc_t<T>* acc, T* out, void* stream) {
  if (S * F == 0) return 0;
  const gpuError_t cleared = gpuMemsetAsync(acc, 0, sizeof(acc_t<T>) * S * F, as_stream(stream));
  if (cleared != gpuSuccess) return static_cast<int>(cleared);
  if (E > 0)
    scatter_add_kernel<T><<<blocks_for(E * F), kBlock, 0, as_stream(stream)>>>(src, index, E, F,
                                                                               S, acc);
  if (static_cast<void*>(acc) != static_cast<void*>(out))
    convert_kernel<T><<<blocks_for(S * F), kBlock, 0, as_stream(stream)>>>(acc, S * F, out);
  return status();
}

template <typename T>
int scatter_extreme(const T* src, const int64_t* index, int64_t E, int64_t F, int64_t S,
                    Extreme which, acc_t<T>* acc, T* out, int64_t* arg, void* stream) {
  if (S * F == 0) return 0;
  const bool is_max = which == Extreme::Max;
  extreme_init_kernel<acc_t<T>>
      <<<blocks_for(S * F), kBlock, 0, as_stream(stream)>>>(acc, arg, S * F, E, is_max);
  if (E > 0) {
    scatter_extreme_kernel<T>
        <<<blocks_for(E * F), kBlock, 0, as_stream(stream)>>>(src, index, E, F, S, is_max, acc);
    scatter_arg_kernel<T>
        <<<blocks_for(E * F), kBlock, 0, as_stream(stream)>>>(src, index, E, F, S, acc, arg);
  }
  scatter_extreme_finish_kernel<T>
      <<<blocks_for(S * F), kBlock, 0, as_stream(stream)>>>(src, F, S * F, E, out, arg);
  return status();
}

#define PYGFM_INSTANTIATE(T)                                                                  \
  template int segment_sum<T>(const T*, const int64_t*, int64_t, int64_t, bool, T*, void*);   \
  template int segment_extreme<T>(const T*, const int64_t*, int64_t, int64_t, Extreme, T*,    \
                                  int64_t*, void*);                                           \
  template int segment_broadcast<T>(const T*, const int64_t*, int64_t, int64_t, T*, void*);   \
  template int arg_scatter<T>(const T*, const int64_t*, int64_t, int64_t, T*, void*);         \
  template int arg_gather<T>(const T*, const int64_t*, int64_t, int64_t, T*, void*);          \
  template int scatter_sum<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, acc_t<T>*, \
                              T*, void*);                                                     \
  template int scatter_extreme<T>(const T*, const int64_t*, int64_t, int64_t, int64_t,        \
                                  Extreme, acc_t<T>*, T*, int64_t*, void*);

PYGFM_INSTANTIATE(double)
PYGFM_INSTANTIATE(float)
PYGFM_INSTANTIATE(bf16_t)
#undef PYGFM_INSTANTIATE

}  // namespace gpu
}  // namespace pygfm

// Launchers: one per op and backend, over raw pointers and sizes.
//
// They know nothing of torch, so the GPU ones compile with plain nvcc or hipcc
// (fast, and checkable in CI without a CUDA or ROCm build of torch). The torch
// bindings in csrc/ops/ check arguments, allocate outputs and call these.
// Matrices are row-major [rows, F]; ptr has S + 1 entries; index and arg are
// int64. A future SYCL backend adds a namespace here and a folder csrc/sycl/.
#pragma once

#include <cstdint>

#include "../common/scalar.h"

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

}  // namespace gpu
}  // namespace pygfm

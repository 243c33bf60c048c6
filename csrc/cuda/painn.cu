// CUDA / HIP launchers for the fused PaiNN kernels (bodies in kernels/painn.h).
//
// One thread per (row, feature): adjacent threads read adjacent features of
// the same edge or atom row (coalesced), and each thread walks its row's edges
// in order, so results are deterministic and need no atomics. The edge half
// of the backward runs two grids: dL/dW per (edge, feature), then dL/dd per
// (edge, component) as a loop over features.
//
// NOT YET RUN ON GPU HARDWARE: compiled and linked in CI only (see
// scripts/check_gpu_compile.sh); the GPU tests in tests/ are ready for it.
#include "../common/gpu.h"
#include "../kernels/launchers.h"
#include "../kernels/painn.h"

namespace pygfm {
namespace gpu {
namespace {

template <typename T>
__global__ void message_kernel(const T* x, const T* v, const T* filters,
                               const acc_t<T>* direction, const int64_t* row_ptr,
                               const int64_t* sender, int64_t N, int64_t F, T* out_s,
                               T* out_v) {
  PYGFM_GRID_STRIDE(t, N * F) {
    const int64_t i = t / F, f = t % F;
    acc_t<T> acc[4];
    kernels::painn_message_block<1>(x, v, filters, direction, sender, row_ptr[i],
                                    row_ptr[i + 1], F, f, 1, acc, out_s + i * F,
                                    out_v + i * 3 * F);
  }
}

template <typename T>
__global__ void filter_grad_kernel(const T* grad_s, const T* grad_v, const T* x, const T* v,
                                   const T* filters, const acc_t<T>* direction,
                                   const int64_t* receiver, const int64_t* sender, int64_t E,
                                   int64_t F, T* grad_filters) {
  PYGFM_GRID_STRIDE(t, E * F) {
    const int64_t e = t / F, f = t % F;
    const int64_t i = receiver[e], j = sender[e];
    acc_t<T> unused[3] = {0, 0, 0};  // dL/dd comes from direction_grad_kernel
    kernels::painn_edge_grad_block<1>(grad_s + i * F, grad_v + i * 3 * F, x + j * 3 * F,
                                      v + j * 3 * F, filters + e * 3 * F, direction + 3 * e,
                                      F, f, 1, grad_filters + e * 3 * F, unused);
  }
}

template <typename T>
__global__ void direction_grad_kernel(const T* grad_v, const T* x, const T* filters,
                                      const int64_t* receiver, const int64_t* sender,
                                      int64_t E, int64_t F, acc_t<T>* grad_direction) {
  PYGFM_GRID_STRIDE(t, E * 3) {
    const int64_t e = t / 3;
    const int c = static_cast<int>(t % 3);
    grad_direction[t] = kernels::painn_direction_grad(
        grad_v + receiver[e] * 3 * F, x + sender[e] * 3 * F, filters + e * 3 * F, F, c, 0, F);
  }
}

template <typename T>
__global__ void node_grad_kernel(const T* grad_s, const T* grad_v, const T* x, const T* v,
                                 const T* filters, const acc_t<T>* direction,
                                 const int64_t* receiver, const int64_t* sender_ptr,
                                 const int64_t* edge_of, int64_t N, int64_t F, T* grad_x,
                                 T* grad_v_in) {
  PYGFM_GRID_STRIDE(t, N * F) {
    const int64_t j = t / F, f = t % F;
    acc_t<T> acc[5];
    kernels::painn_node_grad_block<1>(grad_s, grad_v, x + j * 3 * F, v + j * 3 * F, filters,
                                      direction, receiver, edge_of, sender_ptr[j],
                                      sender_ptr[j + 1], F, f, 1, acc, grad_x + j * 3 * F,
                                      grad_v_in + j * 3 * F);
  }
}

template <typename T>
__global__ void update_kernel(const T* s, const T* v, const T* a, const T* mix, int64_t N,
                              int64_t F, T* s_out, T* v_out) {
  PYGFM_GRID_STRIDE(t, N * F) {
    const int64_t n = t / F, f = t % F;
    kernels::painn_update_block(s + n * F, v + n * 3 * F, a + n * 3 * F, mix + n * 6 * F, F, f,
                                1, s_out + n * F, v_out + n * 3 * F);
  }
}

inline gpuStream_t as_stream(void* stream) { return static_cast<gpuStream_t>(stream); }
inline int status() { return static_cast<int>(gpuGetLastError()); }

}  // namespace

template <typename T>
int painn_message(const T* x, const T* v, const T* filters, const acc_t<T>* direction,
                  const int64_t* row_ptr, const int64_t* sender, int64_t N, int64_t F,
                  T* out_s, T* out_v, void* stream) {
  if (N * F == 0) return 0;
  message_kernel<T><<<blocks_for(N * F), kBlock, 0, as_stream(stream)>>>(
      x, v, filters, direction, row_ptr, sender, N, F, out_s, out_v);
  return status();
}

template <typename T>
int painn_message_edge_grad(const T* grad_s, const T* grad_v, const T* x, const T* v,
                            const T* filters, const acc_t<T>* direction,
                            const int64_t* receiver, const int64_t* sender, int64_t E,
                            int64_t F, T* grad_filters, acc_t<T>* grad_direction,
                            void* stream) {
  if (E == 0) return 0;
  if (F > 0)
    filter_grad_kernel<T><<<blocks_for(E * F), kBlock, 0, as_stream(stream)>>>(
        grad_s, grad_v, x, v, filters, direction, receiver, sender, E, F, grad_filters);
  direction_grad_kernel<T><<<blocks_for(E * 3), kBlock, 0, as_stream(stream)>>>(
      grad_v, x, filters, receiver, sender, E, F, grad_direction);
  return status();
}

template <typename T>
int painn_message_node_grad(const T* grad_s, const T* grad_v, const T* x, const T* v,
                            const T* filters, const acc_t<T>* direction,
                            const int64_t* receiver, const int64_t* sender_ptr,
                            const int64_t* edge_of, int64_t N, int64_t F, T* grad_x,
                            T* grad_v_in, void* stream) {
  if (N * F == 0) return 0;
  node_grad_kernel<T><<<blocks_for(N * F), kBlock, 0, as_stream(stream)>>>(
      grad_s, grad_v, x, v, filters, direction, receiver, sender_ptr, edge_of, N, F, grad_x,
      grad_v_in);
  return status();
}

template <typename T>
int painn_update(const T* s, const T* v, const T* a, const T* mix, int64_t N, int64_t F,
                 T* s_out, T* v_out, void* stream) {
  if (N * F == 0) return 0;
  update_kernel<T><<<blocks_for(N * F), kBlock, 0, as_stream(stream)>>>(s, v, a, mix, N, F,
                                                                        s_out, v_out);
  return status();
}

#define PYGFM_INSTANTIATE(T)                                                                  \
  template int painn_message<T>(const T*, const T*, const T*, const acc_t<T>*, const int64_t*, \
                                const int64_t*, int64_t, int64_t, T*, T*, void*);             \
  template int painn_message_edge_grad<T>(const T*, const T*, const T*, const T*, const T*,   \
                                          const acc_t<T>*, const int64_t*, const int64_t*,    \
                                          int64_t, int64_t, T*, acc_t<T>*, void*);            \
  template int painn_message_node_grad<T>(const T*, const T*, const T*, const T*, const T*,   \
                                          const acc_t<T>*, const int64_t*, const int64_t*,    \
                                          const int64_t*, int64_t, int64_t, T*, T*, void*);   \
  template int painn_update<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, T*,  \
                               T*, void*);
PYGFM_INSTANTIATE(double)
PYGFM_INSTANTIATE(float)
PYGFM_INSTANTIATE(bf16_t)
#undef PYGFM_INSTANTIATE

}  // namespace gpu
}  // namespace pygfm

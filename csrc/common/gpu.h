// One spelling of the GPU runtime for CUDA and HIP.
//
// The .cu files under csrc/cuda/ compile with nvcc for NVIDIA and with hipcc
// for AMD. They use the gpu* names below, never cuda*/hip* directly, and never
// assume a warp of 32 lanes (AMD's wavefront is 64): kernels are written with
// grid-stride loops over independent elements and need no warp primitives.
#pragma once

#include <cstdint>

#if defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__)
#include <hip/hip_runtime.h>
using gpuStream_t = hipStream_t;
using gpuError_t = hipError_t;
#define gpuSuccess hipSuccess
#define gpuGetLastError hipGetLastError
#define gpuGetErrorString hipGetErrorString
#define gpuMemsetAsync hipMemsetAsync
#else
#include <cuda_runtime.h>
using gpuStream_t = cudaStream_t;
using gpuError_t = cudaError_t;
#define gpuSuccess cudaSuccess
#define gpuGetLastError cudaGetLastError
#define gpuGetErrorString cudaGetErrorString
#define gpuMemsetAsync cudaMemsetAsync
#endif

namespace pygfm {
namespace gpu {

constexpr int kBlock = 256;

// Blocks for a grid-stride loop over n elements (capped: the loop does the rest).
inline unsigned int blocks_for(int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

#define PYGFM_GRID_STRIDE(i, n)                                                        \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

}  // namespace gpu
}  // namespace pygfm

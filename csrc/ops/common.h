// Helpers shared by the torch bindings: dtype dispatch, argument checks, streams.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "../common/large_alloc.h"
#include "../common/scalar.h"
#include "../kernels/launchers.h"

namespace pygfm {
namespace ops {

// Calls fn(T{}) with T the kernel storage type of `dtype`: double, float or bf16_t.
template <typename Fn>
void dispatch_floating(at::ScalarType dtype, const char* op, const Fn& fn) {
  switch (dtype) {
    case at::kDouble: fn(double{}); break;
    case at::kFloat: fn(float{}); break;
    case at::kBFloat16: fn(bf16_t{}); break;
    default:
      TORCH_CHECK_TYPE(false, "pygfm.", op, ": src has dtype ", dtype,
                       "; supported are float64, float32 and bfloat16");
  }
}

template <typename T>
const T* data_of(const at::Tensor& tensor) {
  return reinterpret_cast<const T*>(tensor.const_data_ptr());
}
template <typename T>
T* mutable_data_of(at::Tensor& tensor) {
  return reinterpret_cast<T*>(tensor.mutable_data_ptr());
}

// Number of features per row: the product of all dimensions after the first.
inline int64_t row_width(const at::Tensor& tensor) {
  int64_t width = 1;
  for (int64_t d = 1; d < tensor.dim(); ++d) width *= tensor.size(d);
  return width;
}

// Shape of a result with `rows` rows and the trailing dimensions of `like`.
inline std::vector<int64_t> with_rows(const at::Tensor& like, int64_t rows) {
  std::vector<int64_t> shape(like.sizes().begin(), like.sizes().end());
  shape[0] = rows;
  return shape;
}

inline void check_matrix(const at::Tensor& src, const char* op) {
  TORCH_CHECK_VALUE(src.dim() >= 1, "pygfm.", op, ": src must have at least one dimension");
}

inline void check_index_tensor(const at::Tensor& index, const at::Tensor& src, const char* op,
                               const char* name) {
  TORCH_CHECK_VALUE(index.dim() == 1, "pygfm.", op, ": ", name, " must be 1-D, got shape ",
                    index.sizes());
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, "pygfm.", op, ": ", name,
                   " must be int64, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.device() == src.device(), "pygfm.", op, ": ", name, " is on ",
                    index.device(), " but src is on ", src.device());
}

// CSR row pointer: 1-D int64 on src's device; on the CPU also its values
// (ptr[0] == 0, non-decreasing, ptr[-1] == rows). GPU callers get the value
// checks from the Python layer (they would cost a device synchronization).
inline void check_ptr(const at::Tensor& ptr, const at::Tensor& src, int64_t rows,
                      const char* op, const char* name = "ptr",
                      const char* rows_of = "rows of src") {
  check_index_tensor(ptr, src, op, name);
  TORCH_CHECK_VALUE(ptr.size(0) >= 1, "pygfm.", op, ": ", name,
                    " must have at least one entry");
  if (!ptr.is_cpu()) return;
  const at::Tensor contiguous = ptr.contiguous();
  const int64_t* p = contiguous.const_data_ptr<int64_t>();
  const int64_t S = ptr.size(0) - 1;
  TORCH_CHECK_VALUE(p[0] == 0, "pygfm.", op, ": ", name, "[0] must be 0, got ", p[0]);
  for (int64_t s = 0; s < S; ++s)
    TORCH_CHECK_VALUE(p[s + 1] >= p[s], "pygfm.", op, ": ", name,
                      " must be non-decreasing, but ", name, "[", s + 1, "] = ", p[s + 1],
                      " < ", name, "[", s, "] = ", p[s]);
  TORCH_CHECK_VALUE(p[S] == rows, "pygfm.", op, ": ", name, "[-1] = ", p[S],
                    " must equal the number of ", rows_of, " (", rows, ")");
}

// Values of a scatter index must lie in [0, dim_size); checked on the CPU.
inline void check_index_values(const at::Tensor& index, int64_t dim_size, const char* op,
                               const char* name = "index", const char* bound = "dim_size") {
  TORCH_CHECK_VALUE(dim_size >= 0, "pygfm.", op, ": ", bound, " must be >= 0, got ", dim_size);
  if (!index.is_cpu()) return;
  const at::Tensor contiguous = index.contiguous();
  const int64_t* values = contiguous.const_data_ptr<int64_t>();
  for (int64_t e = 0; e < index.size(0); ++e)
    TORCH_CHECK_INDEX(values[e] >= 0 && values[e] < dim_size, "pygfm.", op, ": ", name, "[", e,
                      "] = ", values[e], " is outside [0, ", bound, " = ", dim_size, ")");
}

// The current CUDA/HIP stream of `device`, as an opaque handle for the launchers.
inline void* current_stream(const at::Device& device) {
  return c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle();
}

// A CPU tensor for a large result, on reused huge-page blocks (see
// common/large_alloc.h: fresh 4 KiB pages cost more than our kernels).
inline at::Tensor empty_large(at::IntArrayRef shape, at::ScalarType dtype) {
  int64_t numel = 1;
  for (const int64_t size : shape) numel *= size;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (bytes < 2 * kHugePage) return at::empty(shape, at::TensorOptions().dtype(dtype));
  void* memory = allocate_large(bytes);
  TORCH_CHECK(memory != nullptr, "pygfm: out of memory allocating ", bytes, " bytes");
  return at::from_blob(memory, shape, [bytes](void* data) { release_large(data, bytes); },
                       at::TensorOptions().dtype(dtype));
}

inline void check_launch(int status, const char* op) {
  TORCH_CHECK(status == 0, "pygfm.", op, ": GPU kernel launch failed: ",
              gpu::error_string(status));
}

}  // namespace ops
}  // namespace pygfm

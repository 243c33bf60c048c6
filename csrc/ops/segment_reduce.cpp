// torch bindings of the segmented (CSR) and scattered reductions.
//
// Schemas are declared here; CPU kernels always, CUDA/HIP kernels when the
// extension is built with a GPU backend (PYGFM_WITH_GPU). Autograd, fake
// tensors and the Python-facing checks live in pygfm/ops/segment.py.
//
// Op             | computes                                         | backward uses
// segment_sum    | out[s] = sum of src[ptr[s]:ptr[s+1]]             | segment_broadcast
// segment_mean   | the same divided by the row count (0 if empty)   | segment_broadcast
// segment_max/min| (extreme, arg row) per segment and feature      | arg_scatter
// segment_broadcast | out[r] = src[s] for every row r of segment s  | segment_sum
// arg_scatter    | out[arg[s,f], f] = src[s, f], zeros elsewhere    | arg_gather
// arg_gather     | out[s, f] = src[arg[s,f], f] (0 where arg = -1)  | arg_scatter
// scatter_sum    | out[index[e]] += src[e]                          | index_select
// scatter_max/min| (extreme, arg row) per output row and feature    | arg_scatter
#include <torch/library.h>

#include "common.h"

namespace pygfm {
namespace ops {
namespace {

at::Tensor segment_sum_or_mean(const at::Tensor& src_in, const at::Tensor& ptr_in, bool mean) {
  const char* op = mean ? "segment_mean" : "segment_sum";
  check_matrix(src_in, op);
  check_ptr(ptr_in, src_in, src_in.size(0), op);
  const at::Tensor src = src_in.contiguous(), ptr = ptr_in.contiguous();
  const int64_t S = ptr.size(0) - 1, F = row_width(src);
  at::Tensor out = at::empty(with_rows(src, S), src.options());
  dispatch_floating(src.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (src.is_cpu()) {
      cpu::segment_sum<T>(data_of<T>(src), data_of<int64_t>(ptr), S, F, mean,
                          mutable_data_of<T>(out));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(src.device());
    check_launch(gpu::segment_sum<T>(data_of<T>(src), data_of<int64_t>(ptr), S, F, mean,
                                     mutable_data_of<T>(out), current_stream(src.device())),
                 op);
#endif
  });
  return out;
}

at::Tensor segment_sum(const at::Tensor& src, const at::Tensor& ptr) {
  return segment_sum_or_mean(src, ptr, false);
}

at::Tensor segment_mean(const at::Tensor& src, const at::Tensor& ptr) {
  return segment_sum_or_mean(src, ptr, true);
}

std::tuple<at::Tensor, at::Tensor> segment_extreme(const at::Tensor& src_in,
                                                   const at::Tensor& ptr_in, Extreme which) {
  const char* op = which == Extreme::Max ? "segment_max" : "segment_min";
  check_matrix(src_in, op);
  check_ptr(ptr_in, src_in, src_in.size(0), op);
  const at::Tensor src = src_in.contiguous(), ptr = ptr_in.contiguous();
  const int64_t S = ptr.size(0) - 1, F = row_width(src);
  at::Tensor out = at::empty(with_rows(src, S), src.options());
  at::Tensor arg = at::empty(with_rows(src, S), src.options().dtype(at::kLong));
  dispatch_floating(src.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (src.is_cpu()) {
      cpu::segment_extreme<T>(data_of<T>(src), data_of<int64_t>(ptr), S, F, which,
                              mutable_data_of<T>(out), mutable_data_of<int64_t>(arg));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(src.device());
    check_launch(gpu::segment_extreme<T>(data_of<T>(src), data_of<int64_t>(ptr), S, F, which,
                                         mutable_data_of<T>(out), mutable_data_of<int64_t>(arg),
                                         current_stream(src.device())),
                 op);
#endif
  });
  return {out, arg};
}

std::tuple<at::Tensor, at::Tensor> segment_max(const at::Tensor& src, const at::Tensor& ptr) {
  return segment_extreme(src, ptr, Extreme::Max);
}

std::tuple<at::Tensor, at::Tensor> segment_min(const at::Tensor& src, const at::Tensor& ptr) {
  return segment_extreme(src, ptr, Extreme::Min);
}

at::Tensor segment_broadcast(const at::Tensor& src_in, const at::Tensor& ptr_in,
                             int64_t num_rows) {
  const char* op = "segment_broadcast";
  check_matrix(src_in, op);
  check_ptr(ptr_in, src_in, num_rows, op);
  TORCH_CHECK_VALUE(src_in.size(0) == ptr_in.size(0) - 1, "pygfm.", op, ": src has ",
                    src_in.size(0), " rows but ptr describes ", ptr_in.size(0) - 1,
                    " segments");
  const at::Tensor src = src_in.contiguous(), ptr = ptr_in.contiguous();
  const int64_t S = src.size(0), F = row_width(src);
  // E x F, the largest output here: huge pages on the CPU (see empty_large)
  at::Tensor out = src.is_cpu() ? empty_large(with_rows(src, num_rows), src.scalar_type())
                                : at::empty(with_rows(src, num_rows), src.options());
  dispatch_floating(src.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (src.is_cpu()) {
      cpu::segment_broadcast<T>(data_of<T>(src), data_of<int64_t>(ptr), S, F,
                                mutable_data_of<T>(out));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(src.device());
    check_launch(gpu::segment_broadcast<T>(data_of<T>(src), data_of<int64_t>(ptr), S, F,
                                           mutable_data_of<T>(out),
                                           current_stream(src.device())),
                 op);
#endif
  });
  return out;
}

void check_arg(const at::Tensor& arg, const at::Tensor& like, const char* op) {
  TORCH_CHECK_TYPE(arg.scalar_type() == at::kLong, "pygfm.", op, ": arg must be int64, got ",
                   arg.scalar_type());
  TORCH_CHECK_VALUE(arg.device() == like.device(), "pygfm.", op, ": arg is on ", arg.device(),
                    " but src is on ", like.device());
}

at::Tensor arg_scatter(const at::Tensor& src_in, const at::Tensor& arg_in, int64_t num_rows) {
  const char* op = "arg_scatter";
  check_matrix(src_in, op);
  check_arg(arg_in, src_in, op);
  TORCH_CHECK_VALUE(arg_in.sizes() == src_in.sizes(), "pygfm.", op, ": arg has shape ",
                    arg_in.sizes(), " but src has shape ", src_in.sizes());
  const at::Tensor src = src_in.contiguous(), arg = arg_in.contiguous();
  const int64_t S = src.size(0), F = row_width(src);
  if (arg.is_cpu() && arg.numel() > 0) {
    const int64_t largest = arg.max().item<int64_t>();
    TORCH_CHECK_INDEX(largest < num_rows, "pygfm.", op, ": arg holds row ", largest,
                      " but the result has only ", num_rows, " rows");
  }
  at::Tensor out = at::zeros(with_rows(src, num_rows), src.options());
  dispatch_floating(src.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (src.is_cpu()) {
      cpu::arg_scatter<T>(data_of<T>(src), data_of<int64_t>(arg), S, F, mutable_data_of<T>(out));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(src.device());
    check_launch(gpu::arg_scatter<T>(data_of<T>(src), data_of<int64_t>(arg), S, F,
                                     mutable_data_of<T>(out), current_stream(src.device())),
                 op);
#endif
  });
  return out;
}

at::Tensor arg_gather(const at::Tensor& src_in, const at::Tensor& arg_in) {
  const char* op = "arg_gather";
  check_matrix(src_in, op);
  check_arg(arg_in, src_in, op);
  TORCH_CHECK_VALUE(arg_in.dim() == src_in.dim() && arg_in.dim() >= 1 &&
                        arg_in.sizes().slice(1) == src_in.sizes().slice(1),
                    "pygfm.", op, ": arg has shape ", arg_in.sizes(),
                    " but must be [S] + the trailing shape of src ", src_in.sizes());
  const at::Tensor src = src_in.contiguous(), arg = arg_in.contiguous();
  const int64_t S = arg.size(0), F = row_width(src);
  if (arg.is_cpu() && arg.numel() > 0) {
    const int64_t largest = arg.max().item<int64_t>();
    TORCH_CHECK_INDEX(largest < src.size(0), "pygfm.", op, ": arg holds row ", largest,
                      " but src has only ", src.size(0), " rows");
  }
  at::Tensor out = at::empty(with_rows(src, S), src.options());
  dispatch_floating(src.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (src.is_cpu()) {
      cpu::arg_gather<T>(data_of<T>(src), data_of<int64_t>(arg), S, F, mutable_data_of<T>(out));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(src.device());
    check_launch(gpu::arg_gather<T>(data_of<T>(src), data_of<int64_t>(arg), S, F,
                                    mutable_data_of<T>(out), current_stream(src.device())),
                 op);
#endif
  });
  return out;
}

// An [S, F] accumulation buffer in acc_t<T>: `out` itself unless T is bf16.
template <typename T>
at::Tensor accumulation_buffer(const at::Tensor& out) {
  if (std::is_same<T, bf16_t>::value) return at::empty(out.sizes(), out.options().dtype(at::kFloat));
  return out;
}

at::Tensor scatter_sum(const at::Tensor& src_in, const at::Tensor& index_in, int64_t dim_size) {
  const char* op = "scatter_sum";
  check_matrix(src_in, op);
  check_index_tensor(index_in, src_in, op, "index");
  TORCH_CHECK_VALUE(index_in.size(0) == src_in.size(0), "pygfm.", op, ": index has ",
                    index_in.size(0), " entries but src has ", src_in.size(0), " rows");
  check_index_values(index_in, dim_size, op);
  const at::Tensor src = src_in.contiguous(), index = index_in.contiguous();
  const int64_t E = src.size(0), F = row_width(src);
  at::Tensor out = at::empty(with_rows(src, dim_size), src.options());
  dispatch_floating(src.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    at::Tensor acc = accumulation_buffer<T>(out);
    auto* acc_data = reinterpret_cast<acc_t<T>*>(acc.mutable_data_ptr());
    if (src.is_cpu()) {
      cpu::scatter_sum<T>(data_of<T>(src), data_of<int64_t>(index), E, F, dim_size, acc_data,
                          mutable_data_of<T>(out));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(src.device());
    check_launch(gpu::scatter_sum<T>(data_of<T>(src), data_of<int64_t>(index), E, F, dim_size,
                                     acc_data, mutable_data_of<T>(out),
                                     current_stream(src.device())),
                 op);
#endif
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> scatter_extreme(const at::Tensor& src_in,
                                                   const at::Tensor& index_in, int64_t dim_size,
                                                   Extreme which) {
  const char* op = which == Extreme::Max ? "scatter_max" : "scatter_min";
  check_matrix(src_in, op);
  check_index_tensor(index_in, src_in, op, "index");
  TORCH_CHECK_VALUE(index_in.size(0) == src_in.size(0), "pygfm.", op, ": index has ",
                    index_in.size(0), " entries but src has ", src_in.size(0), " rows");
  check_index_values(index_in, dim_size, op);
  const at::Tensor src = src_in.contiguous(), index = index_in.contiguous();
  const int64_t E = src.size(0), F = row_width(src);
  at::Tensor out = at::empty(with_rows(src, dim_size), src.options());
  at::Tensor arg = at::empty(with_rows(src, dim_size), src.options().dtype(at::kLong));
  dispatch_floating(src.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (src.is_cpu()) {
      cpu::scatter_extreme<T>(data_of<T>(src), data_of<int64_t>(index), E, F, dim_size, which,
                              mutable_data_of<T>(out), mutable_data_of<int64_t>(arg));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(src.device());
    at::Tensor acc = accumulation_buffer<T>(out);
    check_launch(gpu::scatter_extreme<T>(data_of<T>(src), data_of<int64_t>(index), E, F,
                                         dim_size, which,
                                         reinterpret_cast<acc_t<T>*>(acc.mutable_data_ptr()),
                                         mutable_data_of<T>(out), mutable_data_of<int64_t>(arg),
                                         current_stream(src.device())),
                 op);
#endif
  });
  return {out, arg};
}

std::tuple<at::Tensor, at::Tensor> scatter_max(const at::Tensor& src, const at::Tensor& index,
                                               int64_t dim_size) {
  return scatter_extreme(src, index, dim_size, Extreme::Max);
}

std::tuple<at::Tensor, at::Tensor> scatter_min(const at::Tensor& src, const at::Tensor& index,
                                               int64_t dim_size) {
  return scatter_extreme(src, index, dim_size, Extreme::Min);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pygfm, m) {
  m.def("segment_sum(Tensor src, Tensor ptr) -> Tensor");
  m.def("segment_mean(Tensor src, Tensor ptr) -> Tensor");
  m.def("segment_max(Tensor src, Tensor ptr) -> (Tensor, Tensor)");
  m.def("segment_min(Tensor src, Tensor ptr) -> (Tensor, Tensor)");
  m.def("segment_broadcast(Tensor src, Tensor ptr, SymInt num_rows) -> Tensor");
  m.def("arg_scatter(Tensor src, Tensor arg, SymInt num_rows) -> Tensor");
  m.def("arg_gather(Tensor src, Tensor arg) -> Tensor");
  m.def("scatter_sum(Tensor src, Tensor index, SymInt dim_size) -> Tensor");
  m.def("scatter_max(Tensor src, Tensor index, SymInt dim_size) -> (Tensor, Tensor)");
  m.def("scatter_min(Tensor src, Tensor index, SymInt dim_size) -> (Tensor, Tensor)");
}

#define PYGFM_REGISTER_SEGMENT_OPS(m)             \
  m.impl("segment_sum", &segment_sum);             \
  m.impl("segment_mean", &segment_mean);           \
  m.impl("segment_max", &segment_max);             \
  m.impl("segment_min", &segment_min);             \
  m.impl("segment_broadcast", &segment_broadcast); \
  m.impl("arg_scatter", &arg_scatter);             \
  m.impl("arg_gather", &arg_gather);               \
  m.impl("scatter_sum", &scatter_sum);             \
  m.impl("scatter_max", &scatter_max);             \
  m.impl("scatter_min", &scatter_min);

TORCH_LIBRARY_IMPL(pygfm, CPU, m) { PYGFM_REGISTER_SEGMENT_OPS(m) }

#ifdef PYGFM_WITH_GPU
TORCH_LIBRARY_IMPL(pygfm, CUDA, m) { PYGFM_REGISTER_SEGMENT_OPS(m) }
#endif

}  // namespace ops
}  // namespace pygfm

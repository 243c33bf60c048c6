// torch bindings of the fused PaiNN kernels (bodies: kernels/painn.h).
//
// Op                          | computes
// painn_message               | (ds [N,F], dv [N,3,F]): the summed messages of each receiver
// painn_message_backward_edge | (dL/dfilters [E,3F], dL/ddirection [E,3]), by receiver
// painn_message_backward_node | (dL/dx [N,3F], dL/dv [N,3,F]), by sender
// painn_update                | (s + a_ss + a_sv <V,W>, v + a_vv W), elementwise
//
// x = phi(s) [N, 3F]; v [N, 3, F]; filters [E, 3F]; direction [E, 3] unit
// vectors in float64 for float64 features and float32 otherwise. The graph:
// row_ptr [N+1] over receiver-sorted edges, receiver/sender [E], and each
// sender's edges edge_of[sender_ptr[j]:sender_ptr[j+1]] (used by the node half).
// Autograd (each backward differentiable again, built from these same ops)
// lives in pygfm/ops/painn.py.
#include <torch/library.h>

#include "common.h"

namespace pygfm {
namespace ops {
namespace {

// Sizes of the feature tensors, after the shape and dtype checks.
struct Dims {
  int64_t N, F, E;
};

void check_like(const at::Tensor& t, const at::Tensor& like, std::vector<int64_t> shape,
                const char* name, const char* op, const char* like_name = "x") {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), "pygfm.", op, ": ", name,
                   " has dtype ", t.scalar_type(), " but ", like_name, " has ",
                   like.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), "pygfm.", op, ": ", name, " is on ", t.device(),
                    " but ", like_name, " is on ", like.device());
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), "pygfm.", op, ": ", name,
                    " must have shape ", at::IntArrayRef(shape), ", got ", t.sizes());
}

void check_floating_features(const at::Tensor& t, const char* name, const char* op) {
  const at::ScalarType dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kDouble || dtype == at::kFloat || dtype == at::kBFloat16,
                   "pygfm.", op, ": ", name, " has dtype ", dtype,
                   "; supported are float64, float32 and bfloat16");
}

at::ScalarType geometry_dtype(at::ScalarType features) {
  return features == at::kDouble ? at::kDouble : at::kFloat;
}

Dims check_features(const at::Tensor& x, const at::Tensor& v, const at::Tensor& filters,
                    const at::Tensor& direction, const char* op) {
  check_floating_features(x, "x", op);
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) % 3 == 0, "pygfm.", op,
                    ": x must have shape [N, 3F], got ", x.sizes());
  const int64_t N = x.size(0), F = x.size(1) / 3;
  TORCH_CHECK_VALUE(filters.dim() == 2, "pygfm.", op, ": filters must have shape [E, 3F], got ",
                    filters.sizes());
  const int64_t E = filters.size(0);
  check_like(v, x, {N, 3, F}, "v", op);
  check_like(filters, x, {E, 3 * F}, "filters", op);
  const at::ScalarType geometry = geometry_dtype(x.scalar_type());
  TORCH_CHECK_TYPE(direction.scalar_type() == geometry, "pygfm.", op, ": direction must be ",
                   geometry, " for ", x.scalar_type(), " features, got ",
                   direction.scalar_type());
  TORCH_CHECK_VALUE(direction.device() == x.device(), "pygfm.", op, ": direction is on ",
                    direction.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(direction.sizes() == at::IntArrayRef({E, 3}), "pygfm.", op,
                    ": direction must have shape [E, 3] = [", E, ", 3], got ", direction.sizes());
  return {N, F, E};
}

void check_edge_index(const at::Tensor& index, const at::Tensor& x, int64_t E, int64_t N,
                      const char* op, const char* name, const char* bound) {
  check_index_tensor(index, x, op, name);
  TORCH_CHECK_VALUE(index.size(0) == E, "pygfm.", op, ": ", name, " has ", index.size(0),
                    " entries but there are ", E, " edges");
  check_index_values(index, N, op, name, bound);
}

void check_row_pointer(const at::Tensor& ptr, const at::Tensor& x, const Dims& d,
                       const char* op, const char* name) {
  check_ptr(ptr, x, d.E, op, name, "edges");
  TORCH_CHECK_VALUE(ptr.size(0) == d.N + 1, "pygfm.", op, ": ", name, " must have N + 1 = ",
                    d.N + 1, " entries, got ", ptr.size(0));
}

// The message graph, contiguous and checked (values on the CPU: O(E) against
// the O(E F) of every kernel here).
struct Graph {
  at::Tensor row_ptr, receiver, sender, sender_ptr, edge_of;
};

// The kernels read row_ptr (forward, edge half) or receiver and edge_of (node
// half): they must describe the same edges, or forward and backward disagree.
void check_consistency(const Graph& g, const Dims& d, const char* op) {
  const int64_t* row_ptr = g.row_ptr.const_data_ptr<int64_t>();
  const int64_t* receiver = g.receiver.const_data_ptr<int64_t>();
  const int64_t* sender = g.sender.const_data_ptr<int64_t>();
  const int64_t* sender_ptr = g.sender_ptr.const_data_ptr<int64_t>();
  const int64_t* edge_of = g.edge_of.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < d.N; ++i)
    for (int64_t e = row_ptr[i]; e < row_ptr[i + 1]; ++e)
      TORCH_CHECK_VALUE(receiver[e] == i, "pygfm.", op, ": receiver[", e, "] = ", receiver[e],
                        " but row_ptr puts edge ", e, " in row ", i,
                        " (build the graph with pygfm.ops.message_graph)");
  std::vector<bool> seen(d.E, false);
  for (int64_t j = 0; j < d.N; ++j)
    for (int64_t p = sender_ptr[j]; p < sender_ptr[j + 1]; ++p) {
      const int64_t e = edge_of[p];
      TORCH_CHECK_VALUE(sender[e] == j && !seen[e], "pygfm.", op, ": edge_of[", p, "] = ", e,
                        " is not a new edge of sender ", j,
                        " (build the graph with pygfm.ops.message_graph)");
      seen[e] = true;
    }
}

Graph check_graph(const at::Tensor& row_ptr, const at::Tensor& receiver,
                  const at::Tensor& sender, const at::Tensor& sender_ptr,
                  const at::Tensor& edge_of, const at::Tensor& x, const Dims& d,
                  const char* op) {
  check_row_pointer(row_ptr, x, d, op, "row_ptr");
  check_edge_index(receiver, x, d.E, d.N, op, "receiver", "atoms");
  check_edge_index(sender, x, d.E, d.N, op, "sender", "atoms");
  check_row_pointer(sender_ptr, x, d, op, "sender_ptr");
  check_edge_index(edge_of, x, d.E, d.E, op, "edge_of", "edges");
  Graph g{row_ptr.contiguous(), receiver.contiguous(), sender.contiguous(),
          sender_ptr.contiguous(), edge_of.contiguous()};
  if (x.is_cpu()) check_consistency(g, d, op);
  return g;
}

at::Tensor geometry_empty(const at::Tensor& like, std::vector<int64_t> shape) {
  return at::empty(shape, like.options().dtype(geometry_dtype(like.scalar_type())));
}

// Large [E, 3F] results go to reused huge-page blocks on the CPU.
at::Tensor empty_edges(const at::Tensor& like, std::vector<int64_t> shape) {
  return like.is_cpu() ? empty_large(shape, like.scalar_type())
                       : at::empty(shape, like.options());
}

std::tuple<at::Tensor, at::Tensor> painn_message(const at::Tensor& x_in, const at::Tensor& v_in,
                                                 const at::Tensor& filters_in,
                                                 const at::Tensor& direction_in,
                                                 const at::Tensor& row_ptr_in,
                                                 const at::Tensor& receiver_in,
                                                 const at::Tensor& sender_in,
                                                 const at::Tensor& sender_ptr_in,
                                                 const at::Tensor& edge_of_in) {
  const char* op = "painn_message";
  const Dims d = check_features(x_in, v_in, filters_in, direction_in, op);
  const Graph g =
      check_graph(row_ptr_in, receiver_in, sender_in, sender_ptr_in, edge_of_in, x_in, d, op);
  const at::Tensor x = x_in.contiguous(), v = v_in.contiguous(),
                   filters = filters_in.contiguous(), direction = direction_in.contiguous(),
                   &row_ptr = g.row_ptr, &sender = g.sender;
  at::Tensor out_s = at::empty({d.N, d.F}, x.options());
  at::Tensor out_v = at::empty({d.N, 3, d.F}, x.options());
  dispatch_floating(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const auto* dir = data_of<acc_t<T>>(direction);
    if (x.is_cpu()) {
      cpu::painn_message<T>(data_of<T>(x), data_of<T>(v), data_of<T>(filters), dir,
                            data_of<int64_t>(row_ptr), data_of<int64_t>(sender), d.N, d.F,
                            mutable_data_of<T>(out_s), mutable_data_of<T>(out_v));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(x.device());
    check_launch(gpu::painn_message<T>(data_of<T>(x), data_of<T>(v), data_of<T>(filters), dir,
                                       data_of<int64_t>(row_ptr), data_of<int64_t>(sender), d.N,
                                       d.F, mutable_data_of<T>(out_s),
                                       mutable_data_of<T>(out_v), current_stream(x.device())),
                 op);
#endif
  });
  return {out_s, out_v};
}

void check_grads(const at::Tensor& grad_s, const at::Tensor& grad_v, const at::Tensor& x,
                 const Dims& d, const char* op) {
  check_like(grad_s, x, {d.N, d.F}, "grad_s", op);
  check_like(grad_v, x, {d.N, 3, d.F}, "grad_v", op);
}

// The checked, contiguous arguments of both backward halves.
struct BackwardArgs {
  Dims d;
  Graph g;
  at::Tensor grad_s, grad_v, x, v, filters, direction;
};

BackwardArgs backward_args(const at::Tensor& grad_s, const at::Tensor& grad_v,
                           const at::Tensor& x, const at::Tensor& v, const at::Tensor& filters,
                           const at::Tensor& direction, const at::Tensor& row_ptr,
                           const at::Tensor& receiver, const at::Tensor& sender,
                           const at::Tensor& sender_ptr, const at::Tensor& edge_of,
                           const char* op) {
  const Dims d = check_features(x, v, filters, direction, op);
  check_grads(grad_s, grad_v, x, d, op);
  Graph g = check_graph(row_ptr, receiver, sender, sender_ptr, edge_of, x, d, op);
  return {d,
          std::move(g),
          grad_s.contiguous(),
          grad_v.contiguous(),
          x.contiguous(),
          v.contiguous(),
          filters.contiguous(),
          direction.contiguous()};
}

std::tuple<at::Tensor, at::Tensor> painn_message_backward_edge(
    const at::Tensor& grad_s_in, const at::Tensor& grad_v_in, const at::Tensor& x_in,
    const at::Tensor& v_in, const at::Tensor& filters_in, const at::Tensor& direction_in,
    const at::Tensor& row_ptr_in, const at::Tensor& receiver_in, const at::Tensor& sender_in,
    const at::Tensor& sender_ptr_in, const at::Tensor& edge_of_in) {
  const char* op = "painn_message_backward_edge";
  const BackwardArgs args =
      backward_args(grad_s_in, grad_v_in, x_in, v_in, filters_in, direction_in, row_ptr_in,
                    receiver_in, sender_in, sender_ptr_in, edge_of_in, op);
  const Dims& d = args.d;
  const at::Tensor &grad_s = args.grad_s, &grad_v = args.grad_v, &x = args.x, &v = args.v,
                   &filters = args.filters, &direction = args.direction,
                   &row_ptr = args.g.row_ptr, &receiver = args.g.receiver,
                   &sender = args.g.sender;
  at::Tensor grad_filters = empty_edges(filters, {d.E, 3 * d.F});
  at::Tensor grad_direction = geometry_empty(x, {d.E, 3});
  dispatch_floating(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const auto* dir = data_of<acc_t<T>>(direction);
    auto* grad_dir = mutable_data_of<acc_t<T>>(grad_direction);
    if (x.is_cpu()) {
      cpu::painn_message_edge_grad<T>(
          data_of<T>(grad_s), data_of<T>(grad_v), data_of<T>(x), data_of<T>(v),
          data_of<T>(filters), dir, data_of<int64_t>(row_ptr), data_of<int64_t>(sender), d.N,
          d.F, mutable_data_of<T>(grad_filters), grad_dir);
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(x.device());
    check_launch(gpu::painn_message_edge_grad<T>(
                     data_of<T>(grad_s), data_of<T>(grad_v), data_of<T>(x), data_of<T>(v),
                     data_of<T>(filters), dir, data_of<int64_t>(receiver),
                     data_of<int64_t>(sender), d.E, d.F, mutable_data_of<T>(grad_filters),
                     grad_dir, current_stream(x.device())),
                 op);
#endif
  });
  return {grad_filters, grad_direction};
}

std::tuple<at::Tensor, at::Tensor> painn_message_backward_node(
    const at::Tensor& grad_s_in, const at::Tensor& grad_v_in, const at::Tensor& x_in,
    const at::Tensor& v_in, const at::Tensor& filters_in, const at::Tensor& direction_in,
    const at::Tensor& row_ptr_in, const at::Tensor& receiver_in, const at::Tensor& sender_in,
    const at::Tensor& sender_ptr_in, const at::Tensor& edge_of_in) {
  const char* op = "painn_message_backward_node";
  const BackwardArgs args =
      backward_args(grad_s_in, grad_v_in, x_in, v_in, filters_in, direction_in, row_ptr_in,
                    receiver_in, sender_in, sender_ptr_in, edge_of_in, op);
  const Dims& d = args.d;
  const at::Tensor &grad_s = args.grad_s, &grad_v = args.grad_v, &x = args.x, &v = args.v,
                   &filters = args.filters, &direction = args.direction,
                   &receiver = args.g.receiver, &sender_ptr = args.g.sender_ptr,
                   &edge_of = args.g.edge_of;
  at::Tensor grad_x = at::empty({d.N, 3 * d.F}, x.options());
  at::Tensor grad_v_out = at::empty({d.N, 3, d.F}, x.options());
  dispatch_floating(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const auto* dir = data_of<acc_t<T>>(direction);
    if (x.is_cpu()) {
      cpu::painn_message_node_grad<T>(
          data_of<T>(grad_s), data_of<T>(grad_v), data_of<T>(x), data_of<T>(v),
          data_of<T>(filters), dir, data_of<int64_t>(receiver), data_of<int64_t>(sender_ptr),
          data_of<int64_t>(edge_of), d.N, d.F, mutable_data_of<T>(grad_x),
          mutable_data_of<T>(grad_v_out));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(x.device());
    check_launch(gpu::painn_message_node_grad<T>(
                     data_of<T>(grad_s), data_of<T>(grad_v), data_of<T>(x), data_of<T>(v),
                     data_of<T>(filters), dir, data_of<int64_t>(receiver),
                     data_of<int64_t>(sender_ptr), data_of<int64_t>(edge_of), d.N, d.F,
                     mutable_data_of<T>(grad_x), mutable_data_of<T>(grad_v_out),
                     current_stream(x.device())),
                 op);
#endif
  });
  return {grad_x, grad_v_out};
}

std::tuple<at::Tensor, at::Tensor> painn_update(const at::Tensor& s_in, const at::Tensor& v_in,
                                                const at::Tensor& a_in,
                                                const at::Tensor& mix_in) {
  const char* op = "painn_update";
  TORCH_CHECK_VALUE(s_in.dim() == 2, "pygfm.", op, ": s must have shape [N, F], got ",
                    s_in.sizes());
  const int64_t N = s_in.size(0), F = s_in.size(1);
  check_floating_features(s_in, "s", op);
  check_like(v_in, s_in, {N, 3, F}, "v", op, "s");
  check_like(a_in, s_in, {N, 3 * F}, "a", op, "s");
  check_like(mix_in, s_in, {N, 3, 2 * F}, "mix", op, "s");
  const at::Tensor s = s_in.contiguous(), v = v_in.contiguous(), a = a_in.contiguous(),
                   mix = mix_in.contiguous();
  at::Tensor s_out = at::empty({N, F}, s.options());
  at::Tensor v_out = at::empty({N, 3, F}, s.options());
  dispatch_floating(s.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (s.is_cpu()) {
      cpu::painn_update<T>(data_of<T>(s), data_of<T>(v), data_of<T>(a), data_of<T>(mix), N, F,
                           mutable_data_of<T>(s_out), mutable_data_of<T>(v_out));
      return;
    }
#ifdef PYGFM_WITH_GPU
    c10::OptionalDeviceGuard guard(s.device());
    check_launch(gpu::painn_update<T>(data_of<T>(s), data_of<T>(v), data_of<T>(a),
                                      data_of<T>(mix), N, F, mutable_data_of<T>(s_out),
                                      mutable_data_of<T>(v_out), current_stream(s.device())),
                 op);
#endif
  });
  return {s_out, v_out};
}

}  // namespace

// Every message op takes the whole graph, so autograd can hand it on.
#define GRAPH "Tensor row_ptr, Tensor receiver, Tensor sender, Tensor sender_ptr, Tensor edge_of"

TORCH_LIBRARY_FRAGMENT(pygfm, m) {
  m.def(
      "painn_message(Tensor x, Tensor v, Tensor filters, Tensor direction, " GRAPH
      ") -> (Tensor, Tensor)");
  m.def(
      "painn_message_backward_edge(Tensor grad_s, Tensor grad_v, Tensor x, Tensor v, "
      "Tensor filters, Tensor direction, " GRAPH ") -> (Tensor, Tensor)");
  m.def(
      "painn_message_backward_node(Tensor grad_s, Tensor grad_v, Tensor x, Tensor v, "
      "Tensor filters, Tensor direction, " GRAPH ") -> (Tensor, Tensor)");
  m.def("painn_update(Tensor s, Tensor v, Tensor a, Tensor mix) -> (Tensor, Tensor)");
}
#undef GRAPH

#define PYGFM_REGISTER_PAINN_OPS(m)                                        \
  m.impl("painn_message", &painn_message);                                 \
  m.impl("painn_message_backward_edge", &painn_message_backward_edge);     \
  m.impl("painn_message_backward_node", &painn_message_backward_node);     \
  m.impl("painn_update", &painn_update);

TORCH_LIBRARY_IMPL(pygfm, CPU, m) { PYGFM_REGISTER_PAINN_OPS(m) }

#ifdef PYGFM_WITH_GPU
TORCH_LIBRARY_IMPL(pygfm, CUDA, m) { PYGFM_REGISTER_PAINN_OPS(m) }
#endif

}  // namespace ops
}  // namespace pygfm

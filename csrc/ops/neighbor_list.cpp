// torch binding of the cell-list neighbor search.
//
// The Python front end (pygfm/ops/neighbors.py) validates the input and builds
// the per-structure grid in float64; this op places atoms on the grid, sorts
// them by bin (a stable sort, so each bin lists its atoms in index order) and
// runs the search on the CPU or the GPU. Returns (edge_index [2, E],
// shifts [E, 3], row_ptr [N + 1]), all int64, receivers ascending and each
// receiver's pairs ordered by (sender, shift).
#include <torch/library.h>

#include <sstream>

#include "../common/memory.h"
#include "common.h"

namespace pygfm {
namespace ops {
namespace {

// Bytes a pair costs the CPU search at its peak: its sorted 8-byte key, then
// edge_index (16) and shifts (24) while the keys are decoded.
constexpr double kCpuBytesPerPair = 48.0;

// The Python front end's estimate assumes uniform density; atoms crowded into a
// few bins (a cluster in a huge cell) have far more pairs. Bound the pairs from
// the bins' occupancy (cheap: no distances); only when that bound exceeds the
// budget, count the pairs exactly, and refuse before allocating if they do not
// fit, naming the structure with the most.
void check_cpu_pair_memory(const kernels::NeighborGrid& g, int64_t N, const at::Tensor& ptr,
                           double cutoff, bool self_interaction, int64_t max_neighbors) {
  const double budget = static_cast<double>(neighbor_memory_budget());
  const int64_t bound = cpu::candidate_pairs(g, N, max_neighbors);
  if (bound * kCpuBytesPerPair <= budget) return;
  at::Tensor counts = at::empty({N}, ptr.options());
  cpu::count_pairs(g, N, cutoff, self_interaction, max_neighbors,
                   mutable_data_of<int64_t>(counts));
  const int64_t pairs = N > 0 ? counts.sum().item<int64_t>() : 0;
  if (pairs * kCpuBytesPerPair <= budget) return;
  const at::Tensor cumulative = at::cat({at::zeros({1}, ptr.options()), counts.cumsum(0)});
  const at::Tensor per_structure = cumulative.index_select(0, ptr.slice(0, 1)) -
                                   cumulative.index_select(0, ptr.slice(0, 0, -1));
  const int64_t worst = per_structure.argmax().item<int64_t>();
  std::ostringstream message;
  message.precision(3);
  message << "pygfm.neighbor_list: " << pairs << " pairs within " << cutoff << " Å ("
          << pairs * kCpuBytesPerPair / double(1 << 30) << " GiB to build) do not fit in the "
          << budget / double(1 << 30)
          << " GiB the search may use (pygfm.settings neighbor_memory_mb, else the memory "
             "available); structure " << worst
          << " alone has " << per_structure[worst].item<int64_t>()
          << " (atoms crowded together: check its geometry, lower the cutoff, set "
             "max_neighbors or split the batch)";
  TORCH_CHECK_VALUE(false, message.str());
}

struct Grid {
  kernels::NeighborGrid view;
  // owners of what view points to
  at::Tensor cell, origin, width, bins, search, pbc, bin_offset, positions, structure, image,
      atom_bin, wrapped, sorted_atom, sorted_wrapped, bin_start;
};

void check_grid_tensor(const at::Tensor& t, const at::Tensor& positions, at::ScalarType dtype,
                       std::vector<int64_t> shape, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "pygfm.neighbor_list: ", name, " must be ", dtype,
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), "pygfm.neighbor_list: ", name,
                    " must have shape ", at::IntArrayRef(shape), ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == positions.device(), "pygfm.neighbor_list: ", name, " is on ",
                    t.device(), " but positions are on ", positions.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> neighbor_list(
    const at::Tensor& positions_in, const at::Tensor& ptr_in, const at::Tensor& cell_in,
    const at::Tensor& inv_cell_in, const at::Tensor& pbc_in, const at::Tensor& origin_in,
    const at::Tensor& width_in, const at::Tensor& bins_in, const at::Tensor& search_in,
    double cutoff, bool self_interaction, int64_t max_neighbors) {
  const char* op = "neighbor_list";
  TORCH_CHECK_TYPE(positions_in.scalar_type() == at::kDouble,
                   "pygfm.neighbor_list: positions must be float64 here (the Python front end "
                   "converts), got ", positions_in.scalar_type());
  TORCH_CHECK_VALUE(positions_in.dim() == 2 && positions_in.size(1) == 3,
                    "pygfm.neighbor_list: positions must have shape [N, 3], got ",
                    positions_in.sizes());
  const int64_t N = positions_in.size(0);
  check_ptr(ptr_in, positions_in, N, op);
  const int64_t B = ptr_in.size(0) - 1;
  check_grid_tensor(cell_in, positions_in, at::kDouble, {B, 3, 3}, "cell");
  check_grid_tensor(inv_cell_in, positions_in, at::kDouble, {B, 3, 3}, "inv_cell");
  check_grid_tensor(pbc_in, positions_in, at::kBool, {B, 3}, "pbc");
  check_grid_tensor(origin_in, positions_in, at::kDouble, {B, 3}, "origin");
  check_grid_tensor(width_in, positions_in, at::kDouble, {B, 3}, "width");
  check_grid_tensor(bins_in, positions_in, at::kLong, {B, 3}, "bins");
  check_grid_tensor(search_in, positions_in, at::kLong, {B, 3}, "search");
  TORCH_CHECK_VALUE(cutoff > 0 && std::isfinite(cutoff),
                    "pygfm.neighbor_list: cutoff must be a positive finite number, got ", cutoff);

  c10::OptionalDeviceGuard guard(positions_in.device());
  const bool on_cpu = positions_in.is_cpu();
#ifndef PYGFM_WITH_GPU
  TORCH_CHECK(on_cpu, "pygfm.neighbor_list: this build has no GPU kernels (see pygfm.build_info())");
#endif
  Grid grid;
  grid.positions = positions_in.contiguous();
  grid.cell = cell_in.contiguous();
  grid.origin = origin_in.contiguous();
  grid.width = width_in.contiguous();
  grid.bins = bins_in.contiguous();
  grid.search = search_in.contiguous();
  grid.pbc = pbc_in.contiguous();
  const at::Tensor inv_cell = inv_cell_in.contiguous();
  const at::Tensor ptr = ptr_in.contiguous();
  const at::Tensor bins_per_structure = grid.bins.prod(1);
  grid.bin_offset = bins_per_structure.cumsum(0) - bins_per_structure;
  const int64_t total_bins = B > 0 ? bins_per_structure.sum().item<int64_t>() : 0;
  // (the optional<> picks the repeats-only overload, not (self, int repeats))
  grid.structure = at::repeat_interleave(ptr.diff(), std::optional<int64_t>(N));

  const auto long_options = ptr.options();
  grid.image = at::empty({N, 3}, long_options);
  grid.atom_bin = at::empty({N, 3}, long_options);
  grid.wrapped = at::empty({N, 3}, grid.positions.options());
  at::Tensor global_bin = at::empty({N}, long_options);

  kernels::NeighborGrid& g = grid.view;
  g.cell = data_of<double>(grid.cell);
  g.origin = data_of<double>(grid.origin);
  g.width = data_of<double>(grid.width);
  g.bins = data_of<int64_t>(grid.bins);
  g.search = data_of<int64_t>(grid.search);
  g.pbc = data_of<bool>(grid.pbc);
  g.bin_offset = data_of<int64_t>(grid.bin_offset);
  g.positions = data_of<double>(grid.positions);
  g.structure = data_of<int64_t>(grid.structure);
  g.image = data_of<int64_t>(grid.image);
  g.atom_bin = data_of<int64_t>(grid.atom_bin);
  g.wrapped = data_of<double>(grid.wrapped);

  if (on_cpu) {
    cpu::place_atoms(g, data_of<double>(inv_cell), N, mutable_data_of<int64_t>(grid.image),
                     mutable_data_of<double>(grid.wrapped), mutable_data_of<int64_t>(grid.atom_bin),
                     mutable_data_of<int64_t>(global_bin));
  } else {
#ifdef PYGFM_WITH_GPU
    check_launch(gpu::place_atoms(g, data_of<double>(inv_cell), N,
                                  mutable_data_of<int64_t>(grid.image),
                                  mutable_data_of<double>(grid.wrapped),
                                  mutable_data_of<int64_t>(grid.atom_bin),
                                  mutable_data_of<int64_t>(global_bin),
                                  current_stream(positions_in.device())),
                 op);
#endif
  }

  // Stable sort by bin: each bin's atoms stay in index order. bin_start[b] is
  // the first sorted position whose bin is >= b.
  auto [sorted_bin, order] = global_bin.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  grid.sorted_atom = order;
  grid.sorted_wrapped = grid.wrapped.index_select(0, grid.sorted_atom);
  grid.bin_start = at::searchsorted(sorted_bin, at::arange(total_bins + 1, long_options));
  g.sorted_atom = data_of<int64_t>(grid.sorted_atom);
  g.sorted_wrapped = data_of<double>(grid.sorted_wrapped);
  g.bin_start = data_of<int64_t>(grid.bin_start);

  at::Tensor row_ptr = at::zeros({N + 1}, long_options);
  at::Tensor edge_index, shifts;
  if (on_cpu) {
    check_cpu_pair_memory(g, N, ptr, cutoff, self_interaction, max_neighbors);
    at::Tensor counts = at::empty({N}, long_options);
    cpu::find_neighbors(g, N, cutoff, self_interaction, max_neighbors,
                        mutable_data_of<int64_t>(counts), [&](int64_t E) {
                          edge_index = empty_large({2, E}, at::kLong);
                          shifts = empty_large({E, 3}, at::kLong);
                          int64_t* pairs = mutable_data_of<int64_t>(edge_index);
                          return cpu::PairBuffers{pairs, pairs + E,
                                                  mutable_data_of<int64_t>(shifts)};
                        });
    if (N > 0) row_ptr.slice(0, 1).copy_(counts.cumsum(0));
    return {edge_index, shifts, row_ptr};
  }
#ifdef PYGFM_WITH_GPU
  void* stream = current_stream(positions_in.device());
  at::Tensor counts = at::empty({N}, long_options);
  check_launch(gpu::count_neighbors(g, N, cutoff, self_interaction,
                                    mutable_data_of<int64_t>(counts), stream),
               op);
  at::Tensor offsets = at::zeros({N + 1}, long_options);
  if (N > 0) offsets.slice(0, 1).copy_(counts.cumsum(0));
  const int64_t found = offsets[N].item<int64_t>();
  at::Tensor sender = at::empty({found}, long_options);
  shifts = at::empty({found, 3}, long_options);
  at::Tensor distance2 = at::empty({found}, grid.positions.options());
  check_launch(gpu::fill_neighbors(g, N, cutoff, self_interaction, data_of<int64_t>(offsets),
                                   mutable_data_of<int64_t>(sender),
                                   mutable_data_of<int64_t>(shifts),
                                   mutable_data_of<double>(distance2), stream),
               op);
  if (max_neighbors >= 0) {
    at::Tensor kept = counts.clamp_max(max_neighbors);
    if (N > 0) row_ptr.slice(0, 1).copy_(kept.cumsum(0));
    const int64_t E = row_ptr[N].item<int64_t>();
    at::Tensor kept_sender = at::empty({E}, long_options);
    at::Tensor kept_shifts = at::empty({E, 3}, long_options);
    check_launch(gpu::select_nearest(N, max_neighbors, data_of<int64_t>(offsets),
                                     data_of<int64_t>(sender), data_of<int64_t>(shifts),
                                     mutable_data_of<double>(distance2), data_of<int64_t>(row_ptr),
                                     mutable_data_of<int64_t>(kept_sender),
                                     mutable_data_of<int64_t>(kept_shifts), stream),
                 op);
    sender = kept_sender;
    shifts = kept_shifts;
    counts = kept;
  } else {
    row_ptr = offsets;
  }
  const at::Tensor receiver = at::repeat_interleave(counts, std::optional<int64_t>(sender.size(0)));
  edge_index = at::stack({receiver, sender});
  return {edge_index, shifts, row_ptr};
#else
  TORCH_CHECK(false, "pygfm.neighbor_list: unreachable without GPU kernels");  // checked above
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pygfm, m) {
  m.def(
      "neighbor_list(Tensor positions, Tensor ptr, Tensor cell, Tensor inv_cell, Tensor pbc, "
      "Tensor origin, Tensor width, Tensor bins, Tensor search, float cutoff, "
      "bool self_interaction, int max_neighbors) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pygfm, CPU, m) { m.impl("neighbor_list", &neighbor_list); }

#ifdef PYGFM_WITH_GPU
TORCH_LIBRARY_IMPL(pygfm, CUDA, m) { m.impl("neighbor_list", &neighbor_list); }
#endif

}  // namespace ops
}  // namespace pygfm

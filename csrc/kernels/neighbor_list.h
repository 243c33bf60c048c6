// Backend-free body of the cell-list neighbor search.
//
// Geometry (prepared per structure in pygfm/ops/neighbors.py, float64):
//   cell rows are lattice vectors (completed with unit vectors on axes that have
//   none), fractional coordinates f = x @ inv(cell). Along axis a the grid has
//   bins[a] bins of fractional width width[a] starting at origin[a]; the
//   fractional image of the cutoff, cutoff * |column a of inv(cell)|, is at most
//   search[a] bin widths, so every neighbor lies within +-search[a] bins.
//   Periodic axes wrap the grid (an atom sees periodic images of itself and of
//   others, as many as the cutoff reaches); other axes end at the grid's edge.
// Atoms (prepared by the launcher): periodic coordinates are wrapped into [0, 1)
//   by subtracting an integer image n_i; atoms are stably sorted by global bin,
//   so each bin is a contiguous run of the sorted arrays, in atom order.
// A pair (i, j, k) found between wrapped atoms with grid image shift k has, in
//   the caller's (unwrapped) coordinates, the cell shift S = k - n_j + n_i:
//   r_ij = x_j - x_i + S @ cell. It is kept if |r_ij| < cutoff (strictly, as
//   ASE does), and (i, j, S) != (i, i, 0) unless self_interaction.
#pragma once

#include <cmath>

#include "../common/scalar.h"

namespace pygfm {
namespace kernels {

struct NeighborGrid {
  // per structure
  const double* cell;        // [B, 3, 3]
  const double* origin;      // [B, 3]  fractional start of the grid
  const double* width;       // [B, 3]  fractional bin width
  const int64_t* bins;       // [B, 3]
  const int64_t* search;     // [B, 3]
  const bool* pbc;           // [B, 3]
  const int64_t* bin_offset; // [B]     first global bin of each structure
  // per atom, in atom order
  const double* positions;   // [N, 3]  as given
  const int64_t* structure;  // [N]
  const int64_t* image;      // [N, 3]  n_i (0 on non-periodic axes)
  const int64_t* atom_bin;   // [N, 3]  grid coordinates of atom i
  const double* wrapped;     // [N, 3]  x_i - n_i @ cell
  // per atom, in bin order
  const int64_t* sorted_atom;     // [N] atom index
  const double* sorted_wrapped;   // [N, 3]
  const int64_t* bin_start;       // [total_bins + 1]
};

PYGFM_HD int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Grid coordinate t along one axis, reached from an atom's bin by an offset:
// on a periodic axis it wraps into [0, bins) with image k; elsewhere it must lie
// inside the grid (returns false when it does not).
PYGFM_HD bool grid_bin(int64_t t, int64_t bins, bool periodic, int64_t& wrapped, int64_t& k) {
  k = 0;
  if (periodic) {
    k = floor_div(t, bins);
    wrapped = t - k * bins;
    return true;
  }
  wrapped = t;
  return t >= 0 && t < bins;
}

// Calls visit(j, S0, S1, S2, k0, k1, k2, distance_squared) for every neighbor of atom i,
// in an order fixed by the grid (callers sort). Returns nothing.
template <typename Visitor>
PYGFM_HD void visit_neighbors(const NeighborGrid& g, int64_t i, double cutoff,
                              bool self_interaction, Visitor& visit) {
  const int64_t b = g.structure[i];
  const double* cell = g.cell + 9 * b;
  const int64_t* bins = g.bins + 3 * b;
  const int64_t* search = g.search + 3 * b;
  const bool* pbc = g.pbc + 3 * b;
  const double cut2 = cutoff * cutoff;
  // Within this band around the cutoff, re-decide with the caller's coordinates.
  const double cut2_low = cut2 * (1.0 - 1e-9), cut2_high = cut2 * (1.0 + 1e-9);
  const double xi0 = g.wrapped[3 * i], xi1 = g.wrapped[3 * i + 1], xi2 = g.wrapped[3 * i + 2];
  const int64_t* home = g.atom_bin + 3 * i;
  const int64_t* image_i = g.image + 3 * i;

  int64_t t0, t1, t2, k0, k1, k2;
  for (int64_t o0 = -search[0]; o0 <= search[0]; ++o0) {
    if (!grid_bin(home[0] + o0, bins[0], pbc[0], t0, k0)) continue;
    for (int64_t o1 = -search[1]; o1 <= search[1]; ++o1) {
      if (!grid_bin(home[1] + o1, bins[1], pbc[1], t1, k1)) continue;
      for (int64_t o2 = -search[2]; o2 <= search[2]; ++o2) {
        if (!grid_bin(home[2] + o2, bins[2], pbc[2], t2, k2)) continue;
        // base = k @ cell - x_i (wrapped), so r = x_j(wrapped) + base
        const double base0 = k0 * cell[0] + k1 * cell[3] + k2 * cell[6] - xi0;
        const double base1 = k0 * cell[1] + k1 * cell[4] + k2 * cell[7] - xi1;
        const double base2 = k0 * cell[2] + k1 * cell[5] + k2 * cell[8] - xi2;
        const int64_t bin = g.bin_offset[b] + (t0 * bins[1] + t1) * bins[2] + t2;
        const bool zero_shift = k0 == 0 && k1 == 0 && k2 == 0;
        for (int64_t p = g.bin_start[bin]; p < g.bin_start[bin + 1]; ++p) {
          const double d0 = g.sorted_wrapped[3 * p] + base0;
          const double d1 = g.sorted_wrapped[3 * p + 1] + base1;
          const double d2 = g.sorted_wrapped[3 * p + 2] + base2;
          double r2 = d0 * d0 + d1 * d1 + d2 * d2;
          if (r2 >= cut2_high) continue;
          const int64_t j = g.sorted_atom[p];
          if (j == i && zero_shift && !self_interaction) continue;
          const int64_t* image_j = g.image + 3 * j;
          const int64_t s0 = k0 - image_j[0] + image_i[0];
          const int64_t s1 = k1 - image_j[1] + image_i[1];
          const int64_t s2 = k2 - image_j[2] + image_i[2];
          if (r2 >= cut2_low) {
            const double* xi = g.positions + 3 * i;
            const double* xj = g.positions + 3 * j;
            const double e0 = xj[0] - xi[0] + (s0 * cell[0] + s1 * cell[3] + s2 * cell[6]);
            const double e1 = xj[1] - xi[1] + (s0 * cell[1] + s1 * cell[4] + s2 * cell[7]);
            const double e2 = xj[2] - xi[2] + (s0 * cell[2] + s1 * cell[5] + s2 * cell[8]);
            r2 = e0 * e0 + e1 * e1 + e2 * e2;
            if (!(sqrt(r2) < cutoff)) continue;
          }
          visit(j, s0, s1, s2, k0, k1, k2, r2);
        }
      }
    }
  }
}

// Atoms in the bins atom i's search visits (a bin reached as several periodic
// images counts each time): an upper bound on its neighbors from the bins'
// occupancy alone, for memory guards, without computing a distance.
PYGFM_HD int64_t candidate_count(const NeighborGrid& g, int64_t i) {
  const int64_t b = g.structure[i];
  const int64_t* bins = g.bins + 3 * b;
  const int64_t* search = g.search + 3 * b;
  const bool* pbc = g.pbc + 3 * b;
  const int64_t* home = g.atom_bin + 3 * i;
  int64_t total = 0, t0, t1, t2, k;
  for (int64_t o0 = -search[0]; o0 <= search[0]; ++o0) {
    if (!grid_bin(home[0] + o0, bins[0], pbc[0], t0, k)) continue;
    for (int64_t o1 = -search[1]; o1 <= search[1]; ++o1) {
      if (!grid_bin(home[1] + o1, bins[1], pbc[1], t1, k)) continue;
      for (int64_t o2 = -search[2]; o2 <= search[2]; ++o2) {
        if (!grid_bin(home[2] + o2, bins[2], pbc[2], t2, k)) continue;
        const int64_t bin = g.bin_offset[b] + (t0 * bins[1] + t1) * bins[2] + t2;
        total += g.bin_start[bin + 1] - g.bin_start[bin];
      }
    }
  }
  return total;
}

// Prepares atom i: image n_i, wrapped position, grid coordinates and global bin.
PYGFM_HD void place_atom(const NeighborGrid& g, const double* inv_cell, int64_t i,
                         int64_t* image, double* wrapped, int64_t* atom_bin,
                         int64_t* global_bin) {
  const int64_t b = g.structure[i];
  const double* cell = g.cell + 9 * b;
  const double* inv = inv_cell + 9 * b;
  const double* x = g.positions + 3 * i;
  const int64_t* bins = g.bins + 3 * b;
  double n[3];
  for (int a = 0; a < 3; ++a) {
    const double f = x[0] * inv[a] + x[1] * inv[3 + a] + x[2] * inv[6 + a];
    double fw = f;
    n[a] = 0.0;
    if (g.pbc[3 * b + a]) {
      n[a] = floor(f);
      fw = f - n[a];
      if (fw >= 1.0) {  // f just below an integer can round to exactly 1
        fw -= 1.0;
        n[a] += 1.0;
      }
    }
    int64_t t = static_cast<int64_t>(floor((fw - g.origin[3 * b + a]) / g.width[3 * b + a]));
    t = t < 0 ? 0 : (t >= bins[a] ? bins[a] - 1 : t);
    atom_bin[3 * i + a] = t;
    image[3 * i + a] = static_cast<int64_t>(n[a]);
  }
  for (int c = 0; c < 3; ++c)
    wrapped[3 * i + c] = x[c] - (n[0] * cell[c] + n[1] * cell[3 + c] + n[2] * cell[6 + c]);
  global_bin[i] = g.bin_offset[b] +
                  (atom_bin[3 * i] * bins[1] + atom_bin[3 * i + 1]) * bins[2] + atom_bin[3 * i + 2];
}

}  // namespace kernels
}  // namespace pygfm

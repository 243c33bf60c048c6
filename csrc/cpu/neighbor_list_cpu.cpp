// CPU neighbor search over the cell grid of kernels/neighbor_list.h.
//
// One pass: receivers are split into contiguous chunks, each chunk collects its
// pairs into its own buffers (no counting pass, no atomics), and the chunks are
// concatenated in order. Each receiver's neighbors are sorted by a packed 64-bit
// key (sender, grid image k) so the output order is (i, j, S) without a
// comparison sort over tuples: for fixed i and j, S = k + n_i - n_j differs from
// k by a constant, so ordering by k orders by S.
#include <ATen/Parallel.h>

#include <algorithm>

#include "../common/large_alloc.h"
#include "../kernels/launchers.h"

namespace pygfm {
namespace cpu {
namespace {

// key = sender << 30 | (k0 + 512) << 20 | (k1 + 512) << 10 | (k2 + 512); the
// Python layer guarantees |k| < 512 and fewer than 2^33 atoms.
constexpr int64_t kImageBias = 512;

struct Candidate {
  uint64_t key;
  double distance2;
};

inline uint64_t pack(int64_t j, int64_t k0, int64_t k1, int64_t k2) {
  return (static_cast<uint64_t>(j) << 30) | (static_cast<uint64_t>(k0 + kImageBias) << 20) |
         (static_cast<uint64_t>(k1 + kImageBias) << 10) | static_cast<uint64_t>(k2 + kImageBias);
}

// Keys only (sorting 8-byte keys beats sorting pairs); shifts are rebuilt from
// the key's k and the atoms' images. Distances only when max_neighbors is set.
using KeyBuffer = std::vector<uint64_t, LargeAllocator<uint64_t>>;

struct KeyCollector {
  KeyBuffer* keys;
  void operator()(int64_t j, int64_t, int64_t, int64_t, int64_t k0, int64_t k1, int64_t k2,
                  double) {
    keys->push_back(pack(j, k0, k1, k2));
  }
};

struct PairCounter {
  int64_t count = 0;
  void operator()(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double) {
    ++count;
  }
};

struct CandidateCollector {
  std::vector<Candidate>* out;
  void operator()(int64_t j, int64_t, int64_t, int64_t, int64_t k0, int64_t k1, int64_t k2,
                  double r2) {
    out->push_back(Candidate{pack(j, k0, k1, k2), r2});
  }
};

}  // namespace

void place_atoms(const kernels::NeighborGrid& g, const double* inv_cell, int64_t N,
                 int64_t* image, double* wrapped, int64_t* atom_bin, int64_t* global_bin) {
  at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      kernels::place_atom(g, inv_cell, i, image, wrapped, atom_bin, global_bin);
  });
}

void find_neighbors(const kernels::NeighborGrid& g, int64_t N, double cutoff,
                    bool self_interaction, int64_t max_neighbors, int64_t* counts,
                    const std::function<PairBuffers(int64_t)>& allocate) {
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::min<int64_t>(N, std::max<int64_t>(1, 4 * threads));
  // Each chunk keeps only its sorted 8-byte keys; senders and shifts are decoded
  // straight into the output once its size is known (on this VM, writing fresh
  // memory twice cost more than the search itself).
  std::vector<KeyBuffer> chunk_keys(chunks);

  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<Candidate> found;
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      const int64_t first = N * chunk / chunks, last = N * (chunk + 1) / chunks;
      KeyBuffer& keys = chunk_keys[chunk];
      for (int64_t i = first; i < last; ++i) {
        const size_t row_start = keys.size();
        if (max_neighbors >= 0) {
          found.clear();
          CandidateCollector collect{&found};
          kernels::visit_neighbors(g, i, cutoff, self_interaction, collect);
          if (static_cast<int64_t>(found.size()) > max_neighbors) {
            auto nearer = [](const Candidate& a, const Candidate& b) {
              return a.distance2 < b.distance2 || (a.distance2 == b.distance2 && a.key < b.key);
            };
            std::nth_element(found.begin(), found.begin() + max_neighbors, found.end(), nearer);
            found.resize(max_neighbors);
          }
          for (const Candidate& c : found) keys.push_back(c.key);
        } else {
          KeyCollector collect{&keys};
          kernels::visit_neighbors(g, i, cutoff, self_interaction, collect);
        }
        std::sort(keys.begin() + row_start, keys.end());
        counts[i] = static_cast<int64_t>(keys.size() - row_start);
      }
    }
  });

  std::vector<int64_t> start(chunks + 1, 0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    start[chunk + 1] = start[chunk] + static_cast<int64_t>(chunk_keys[chunk].size());
  const PairBuffers out = allocate(start[chunks]);
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      int64_t pair = start[chunk];
      const uint64_t* key = chunk_keys[chunk].data();
      for (int64_t i = N * chunk / chunks; i < N * (chunk + 1) / chunks; ++i) {
        const int64_t* image_i = g.image + 3 * i;
        for (int64_t n = 0; n < counts[i]; ++n, ++pair, ++key) {
          const int64_t j = static_cast<int64_t>(*key >> 30);
          const int64_t* image_j = g.image + 3 * j;
          out.receiver[pair] = i;
          out.sender[pair] = j;
          out.shift[3 * pair] =
              static_cast<int64_t>((*key >> 20) & 1023) - kImageBias - image_j[0] + image_i[0];
          out.shift[3 * pair + 1] =
              static_cast<int64_t>((*key >> 10) & 1023) - kImageBias - image_j[1] + image_i[1];
          out.shift[3 * pair + 2] =
              static_cast<int64_t>(*key & 1023) - kImageBias - image_j[2] + image_i[2];
        }
      }
      KeyBuffer().swap(chunk_keys[chunk]);
    }
  });
}

int64_t candidate_pairs(const kernels::NeighborGrid& g, int64_t N, int64_t max_neighbors) {
  return at::parallel_reduce(
      0, N, 1024, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t total) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t c = kernels::candidate_count(g, i);
          total += max_neighbors >= 0 ? std::min(c, max_neighbors) : c;
        }
        return total;
      },
      [](int64_t a, int64_t b) { return a + b; });
}

void count_pairs(const kernels::NeighborGrid& g, int64_t N, double cutoff, bool self_interaction,
                 int64_t max_neighbors, int64_t* counts) {
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      PairCounter counter;
      kernels::visit_neighbors(g, i, cutoff, self_interaction, counter);
      counts[i] = max_neighbors >= 0 ? std::min(counter.count, max_neighbors) : counter.count;
    }
  });
}

}  // namespace cpu
}  // namespace pygfm

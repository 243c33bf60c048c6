// Memory for large CPU buffers, backed by transparent huge pages on request.
//
// Fresh memory is paid for in page faults, one per 4 KiB page; on the VMs we
// measure on that runs at ~2 GB/s, slower than the kernels that fill it.
// Asking for huge pages (madvise, for THP's common "madvise" mode) makes that
// 512 times fewer faults. Small requests use plain malloc.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <new>

namespace pygfm {

constexpr size_t kHugePage = size_t(2) << 20;

// Whether large buffers ask for huge pages (PYGFM_HUGE_PAGES=0 turns it off).
inline bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* setting = std::getenv("PYGFM_HUGE_PAGES");
    return !(setting && setting[0] == '0');
  }();
  return enabled;
}

// Memory for `bytes` bytes, released with std::free; nullptr if none is left.
inline void* allocate_large(size_t bytes) {
  if (bytes < 2 * kHugePage || !huge_pages_enabled()) return std::malloc(bytes == 0 ? 1 : bytes);
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* memory = std::aligned_alloc(kHugePage, rounded);
#ifdef MADV_HUGEPAGE
  if (memory != nullptr) madvise(memory, rounded, MADV_HUGEPAGE);
#endif
  return memory;
}

// A std::vector allocator on top of allocate_large.
template <typename T>
struct LargeAllocator {
  using value_type = T;
  LargeAllocator() = default;
  template <typename U>
  LargeAllocator(const LargeAllocator<U>&) {}
  T* allocate(size_t n) {
    void* memory = allocate_large(n * sizeof(T));
    if (memory == nullptr) throw std::bad_alloc();
    return static_cast<T*>(memory);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const LargeAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LargeAllocator<U>&) const { return false; }
};

}  // namespace pygfm

// Memory for large CPU buffers: huge pages, and reuse of freed blocks.
//
// Fresh memory is paid for in page faults, one per 4 KiB page; on the VMs we
// measure on that runs at ~2 GB/s, slower than the kernels that fill it
// (100k-atom neighbor list: 344 ms with fresh 4 KiB pages). Two remedies:
//  - blocks are 2 MiB aligned and madvise(MADV_HUGEPAGE)d, 512x fewer faults;
//  - freed blocks are kept (up to kCacheBytes in all) and handed out again for
//    a request of the same rounded size, so a training or screening loop that
//    allocates the same large outputs every step faults only once, as torch's
//    GPU caching allocator does. Without reuse, huge-page faults with the
//    kernel's synchronous compaction were seen to stall (25 MB output: 29 ms
//    against 6 ms for glibc's reused heap).
// Small requests use plain malloc. The settings huge_pages and cpu_cache_mb
// (common/settings.h, set from pygfm.settings) turn this off and bound the cache.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#include "settings.h"

namespace pygfm {

constexpr size_t kHugePage = size_t(2) << 20;

inline bool huge_pages_enabled() { return settings().huge_pages.load(std::memory_order_relaxed); }

class LargeBlockCache {
 public:
  static LargeBlockCache& instance() {
    static LargeBlockCache* cache = new LargeBlockCache();  // never destroyed: used at exit
    return *cache;
  }

  void* allocate(size_t bytes) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = free_.find(rounded);
      if (found != free_.end()) {
        void* block = found->second;
        free_.erase(found);
        cached_ -= rounded;
        size_of_[block] = rounded;
        return block;
      }
    }
    void* block = std::aligned_alloc(kHugePage, rounded);
    if (block == nullptr) {  // give the cache back to the system and retry once
      release_all();
      block = std::aligned_alloc(kHugePage, rounded);
      if (block == nullptr) return nullptr;
    }
#ifdef MADV_HUGEPAGE
    madvise(block, rounded, MADV_HUGEPAGE);
#endif
    std::lock_guard<std::mutex> lock(mutex_);
    size_of_[block] = rounded;
    return block;
  }

  // Whether `block` is a live block of this cache.
  bool owns(void* block) {
    std::lock_guard<std::mutex> lock(mutex_);
    return size_of_.count(block) != 0;
  }

  // Takes back a block of this cache; any other pointer (a plain malloc made
  // while huge pages were off) is freed, so callers need not know which it was.
  void release(void* block) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto size = size_of_.find(block);
    if (size == size_of_.end()) {
      std::free(block);
      return;
    }
    const size_t rounded = size->second;
    size_of_.erase(size);
    if (cached_ + rounded > limit()) {
      std::free(block);
      return;
    }
    free_.emplace(rounded, block);
    cached_ += rounded;
  }

  void release_all() { trim(0); }

  // Frees cached blocks, largest first, until at most `bytes` stay cached.
  void trim(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (cached_ > bytes && !free_.empty()) {
      auto largest = std::prev(free_.end());
      std::free(largest->second);
      cached_ -= largest->first;
      free_.erase(largest);
    }
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  LargeBlockCache() = default;
  static size_t limit() { return settings().cpu_cache_bytes.load(std::memory_order_relaxed); }
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> size_of_;
  size_t cached_ = 0;
};

// Memory for `bytes` bytes, returned with release_large; nullptr if none is left.
inline void* allocate_large(size_t bytes) {
  if (bytes < 2 * kHugePage || !huge_pages_enabled()) return std::malloc(bytes == 0 ? 1 : bytes);
  return LargeBlockCache::instance().allocate(bytes);
}

// Frees by size alone: huge_pages may have been switched since the allocation,
// and the cache frees whatever it does not own.
inline void release_large(void* block, size_t bytes) {
  if (bytes < 2 * kHugePage) {
    std::free(block);
    return;
  }
  LargeBlockCache::instance().release(block);
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
  void deallocate(T* p, size_t n) { release_large(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const LargeAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LargeAllocator<U>&) const { return false; }
};

}  // namespace pygfm

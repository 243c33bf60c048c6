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
// Small requests use plain malloc. PYGFM_HUGE_PAGES=0 turns all of this off;
// PYGFM_CPU_CACHE_MB sets the cache size (default 2048, 0 disables reuse).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

namespace pygfm {

constexpr size_t kHugePage = size_t(2) << 20;

inline bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* setting = std::getenv("PYGFM_HUGE_PAGES");
    return !(setting && setting[0] == '0');
  }();
  return enabled;
}

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

  void release(void* block) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto size = size_of_.find(block);
    if (size == size_of_.end()) {  // not ours: cannot happen, but never leak
      std::free(block);
      return;
    }
    const size_t rounded = size->second;
    size_of_.erase(size);
    if (cached_ + rounded > limit_) {
      std::free(block);
      return;
    }
    free_.emplace(rounded, block);
    cached_ += rounded;
  }

  void release_all() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& entry : free_) std::free(entry.second);
    free_.clear();
    cached_ = 0;
  }

 private:
  LargeBlockCache() {
    const char* setting = std::getenv("PYGFM_CPU_CACHE_MB");
    limit_ = (setting ? std::strtoull(setting, nullptr, 10) : 2048ull) << 20;
  }
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> size_of_;
  size_t cached_ = 0;
  size_t limit_ = 0;
};

// Memory for `bytes` bytes, returned with release_large; nullptr if none is left.
inline void* allocate_large(size_t bytes) {
  if (bytes < 2 * kHugePage || !huge_pages_enabled()) return std::malloc(bytes == 0 ? 1 : bytes);
  return LargeBlockCache::instance().allocate(bytes);
}

inline void release_large(void* block, size_t bytes) {
  if (bytes < 2 * kHugePage || !huge_pages_enabled()) {
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

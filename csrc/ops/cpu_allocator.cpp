// A CPU allocator for torch that serves large blocks from pygfm's huge-page
// block cache (common/large_alloc.h) and everything else from torch's own.
//
// Why: on the machines we measure on, first touches of fresh 4 KiB pages cost
// more than the work done in them. glibc hands blocks above 32 MB (and often
// above 128 KB) back to the kernel on free, so a model step that allocates the
// same [E, 3F] tensors every layer and every step pays the faults every time:
// a [24k, 21] x [21, 384] FP32 product took 29 ms with a fresh output against
// 12 ms into a reused one. With this allocator a training or inference loop
// faults once and then reuses its blocks, as torch's GPU caching allocator does.
//
// Installed when the extension loads, for requests of at least 4 MiB.
// PYGFM_CPU_ALLOCATOR=0 keeps torch's allocator; PYGFM_CPU_CACHE_MB bounds the
// memory kept for reuse (default 2048); PYGFM_HUGE_PAGES=0 turns both off.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>

#include "../common/large_alloc.h"

namespace pygfm {
namespace {

void release_block(void* block) { LargeBlockCache::instance().release(block); }

class LargeBlockAllocator final : public c10::Allocator {
 public:
  explicit LargeBlockAllocator(c10::Allocator* fallback) : fallback_(fallback) {}

  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < 2 * kHugePage) return fallback_->allocate(bytes);
    void* block = LargeBlockCache::instance().allocate(bytes);
    if (block == nullptr) return fallback_->allocate(bytes);  // let torch report the OOM
    return {block, block, &release_block, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

 private:
  c10::Allocator* fallback_;
};

c10::Allocator* const torch_allocator = c10::GetCPUAllocator();
bool active = false;

bool set_active(bool enable) {
  static LargeBlockAllocator allocator(torch_allocator);
  const bool was = active;
  // Blocks keep the deleter of the allocator that made them, so switching at
  // any time is safe. Priority 1 outranks torch's default registration.
  c10::SetCPUAllocator(enable ? static_cast<c10::Allocator*>(&allocator) : torch_allocator, 1);
  active = enable;
  return was;
}

bool install() {
  const char* setting = std::getenv("PYGFM_CPU_ALLOCATOR");
  if ((setting && setting[0] == '0') || !huge_pages_enabled()) return false;
  set_active(true);
  return true;
}

const bool installed = install();

}  // namespace
}  // namespace pygfm

// For pygfm._C (module.cpp does not see torch's headers): switches the
// allocator on or off and returns whether it was on.
extern "C" bool pygfm_set_cpu_allocator(bool enable) {
  if (enable && !pygfm::huge_pages_enabled()) return pygfm::set_active(false);
  return pygfm::set_active(enable);
}

extern "C" bool pygfm_cpu_allocator_active() { return pygfm::active; }

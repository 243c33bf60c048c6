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
// Off unless the user turns it on (pygfm.settings.set("cpu_allocator", True) or
// PYGFM_CPU_ALLOCATOR=1 before import): it serves every torch CPU tensor of the
// process, so it is a process setting, never a side effect of `import pygfm`.
//
// The whole c10::Allocator contract holds: every DataPtr has data == context,
// and raw_deleter() frees any pointer this allocator returned, from the block
// cache or from torch's allocator. oneDNN's BF16/AMX paths allocate scratch
// through raw_allocate/raw_deallocate, which need that deleter.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>

#include "../common/large_alloc.h"

namespace pygfm {
namespace {

c10::Allocator* const torch_allocator = c10::GetCPUAllocator();

void release_block(void* block) { LargeBlockCache::instance().release(block); }

// raw_deleter(): a raw pointer may come from either source.
void release_any(void* pointer) {
  if (LargeBlockCache::instance().owns(pointer)) {
    LargeBlockCache::instance().release(pointer);
    return;
  }
  torch_allocator->raw_deleter()(pointer);
}

class LargeBlockAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < 2 * kHugePage || !huge_pages_enabled()) return torch_allocator->allocate(bytes);
    void* block = LargeBlockCache::instance().allocate(bytes);
    if (block == nullptr) return torch_allocator->allocate(bytes);  // let torch report the OOM
    return {block, block, &release_block, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override {
    // Without torch's raw deleter there is nothing correct to return: raw
    // calls then fail in torch's own check, as they would without pygfm.
    return torch_allocator->raw_deleter() != nullptr ? &release_any : nullptr;
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

bool active = false;

bool set_active(bool enable) {
  static LargeBlockAllocator allocator;
  const bool was = active;
  // Blocks keep the deleter of the allocator that made them, so switching at
  // any time is safe. Priority 1 outranks torch's default registration.
  c10::SetCPUAllocator(enable ? static_cast<c10::Allocator*>(&allocator) : torch_allocator, 1);
  active = enable;
  return was;
}

}  // namespace
}  // namespace pygfm

// For pygfm._C (module.cpp does not see torch's headers): switches the
// allocator on or off and returns whether it was on.
extern "C" bool pygfm_set_cpu_allocator(bool enable) { return pygfm::set_active(enable); }

extern "C" bool pygfm_cpu_allocator_active() { return pygfm::active; }

// For the tests: `bytes` bytes through the current CPU allocator's
// raw_allocate/raw_deallocate (oneDNN's path), written end to end in between.
extern "C" bool pygfm_cpu_allocator_raw_roundtrip(size_t bytes) {
  c10::Allocator* allocator = c10::GetCPUAllocator();
  if (allocator->raw_deleter() == nullptr) return false;
  void* memory = allocator->raw_allocate(bytes);  // may be null for 0 bytes
  if (memory == nullptr && bytes != 0) return false;
  if (bytes != 0) std::memset(memory, 0x5a, bytes);
  const bool intact = bytes == 0 || static_cast<unsigned char*>(memory)[bytes - 1] == 0x5a;
  allocator->raw_deallocate(memory);
  return intact;
}

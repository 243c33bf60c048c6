// The Python extension module pygfm._C. Loading it registers every op in
// torch.ops.pygfm (the TORCH_LIBRARY blocks in csrc/ops/ run at load time);
// its Python functions report how the library was built and get and set the
// run-time settings (pygfm.settings is their public face).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "common/large_alloc.h"
#include "common/memory.h"
#include "common/settings.h"

#ifndef PYGFM_VERSION
#error "PYGFM_VERSION must be defined by the build"
#endif

namespace py = pybind11;

// csrc/ops/cpu_allocator.cpp
extern "C" bool pygfm_set_cpu_allocator(bool enable);
extern "C" bool pygfm_cpu_allocator_active();
extern "C" bool pygfm_cpu_allocator_raw_roundtrip(size_t bytes);

namespace {

// The settings of common/settings.h by name; "cpu_cache_bytes" is a byte count.
long long get_setting(const std::string& name) {
  auto& values = pygfm::settings();
  if (name == "huge_pages") return values.huge_pages.load();
  if (name == "cpu_stream") return values.cpu_stream.load();
  if (name == "cpu_cache_bytes") return static_cast<long long>(values.cpu_cache_bytes.load());
  if (name == "neighbor_memory_bytes")
    return static_cast<long long>(values.neighbor_memory_bytes.load());
  throw std::invalid_argument("pygfm has no native setting named '" + name + "'");
}

void set_setting(const std::string& name, long long value) {
  auto& values = pygfm::settings();
  if (value < 0) throw std::invalid_argument("setting " + name + " must be >= 0");
  if (name == "huge_pages") {
    values.huge_pages.store(value != 0);
  } else if (name == "cpu_stream") {
    values.cpu_stream.store(value != 0);
  } else if (name == "cpu_cache_bytes") {
    values.cpu_cache_bytes.store(static_cast<size_t>(value));
    pygfm::LargeBlockCache::instance().trim(static_cast<size_t>(value));
  } else if (name == "neighbor_memory_bytes") {
    values.neighbor_memory_bytes.store(static_cast<size_t>(value));
  } else {
    throw std::invalid_argument("pygfm has no native setting named '" + name + "'");
  }
}

}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "pygfm compiled kernels; the ops live in torch.ops.pygfm";
  module.def("build_info", []() {
    py::dict info;
    info["version"] = PYGFM_VERSION;
    info["torch_version"] = PYGFM_TORCH_VERSION;
    info["backends"] = PYGFM_BACKENDS;
    info["gpu_archs"] = PYGFM_GPU_ARCHS;
    info["compiler"] = PYGFM_COMPILER;
    info["build_type"] = PYGFM_BUILD_TYPE;
    return info;
  });
  module.def("set_cpu_allocator", &pygfm_set_cpu_allocator, py::arg("enable"),
             "Serve large CPU tensors from pygfm's huge-page block cache (True) or with "
             "torch's allocator (False); returns the previous setting.");
  module.def("cpu_allocator_active", &pygfm_cpu_allocator_active);
  module.def("get_setting", &get_setting, py::arg("name"));
  module.def("set_setting", &set_setting, py::arg("name"), py::arg("value"));
  module.def("neighbor_memory_budget", []() { return pygfm::neighbor_memory_budget(); },
             "Bytes a CPU neighbor search may use now (the setting, or what is available).");
  module.def("cpu_cache_bytes", []() { return pygfm::LargeBlockCache::instance().cached_bytes(); },
             "Bytes of freed large blocks currently kept for reuse.");
  module.def("cpu_allocator_raw_roundtrip", &pygfm_cpu_allocator_raw_roundtrip, py::arg("bytes"),
             "Test hook: raw_allocate, write and raw_deallocate through torch's current CPU "
             "allocator; True when that worked.");
}

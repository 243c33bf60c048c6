// The Python extension module pygfm._C. Loading it registers every op in
// torch.ops.pygfm (the TORCH_LIBRARY blocks in csrc/ops/ run at load time);
// its only Python function reports how the library was built.
#include <pybind11/pybind11.h>

#ifndef PYGFM_VERSION
#error "PYGFM_VERSION must be defined by the build"
#endif

namespace py = pybind11;

// csrc/ops/cpu_allocator.cpp
extern "C" bool pygfm_set_cpu_allocator(bool enable);
extern "C" bool pygfm_cpu_allocator_active();

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
}

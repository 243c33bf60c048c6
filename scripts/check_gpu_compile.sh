#!/usr/bin/env bash
# Compile-checks the GPU code on a machine without a GPU:
#   1. CUDA: a full CMake build with PYGFM_BACKENDS="cpu;cuda" (nvcc, sm_80 and sm_90)
#      against the CPU torch in .venv, linked, loaded into torch, and asked whether
#      every pygfm op has a CUDA kernel registered.
#   2. ROCm: every csrc/cuda/*.cu compiled by hipcc for gfx90a (MI250X), installing
#      Debian's hipcc first if it is missing.
# Prints one line per check; exits non-zero if any check that could run failed.
# Nothing here runs a kernel: that needs a GPU (tests marked `gpu`).
set -uo pipefail
cd "$(dirname "$0")/.."
python="$PWD/.venv/bin/python"
status=0
ran=()

if command -v nvcc >/dev/null 2>&1; then
  echo "==> CUDA: building with nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') for sm_80, sm_90"
  build=build/check-cuda
  if cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DPYGFM_BACKENDS="cpu;cuda" -DPYGFM_CUDA_ARCHS="80;90" \
        -DPython_EXECUTABLE="$python" -Dpybind11_DIR="$($python -m pybind11 --cmakedir)" \
        >"$build.log" 2>&1 && cmake --build "$build" >>"$build.log" 2>&1; then
    library=$(ls "$build"/_C*.so)
    if (cd /tmp && "$python" - "$OLDPWD/$library") <<'PY'
import sys, torch
torch.ops.load_library(sys.argv[1])
ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pygfm::")]
missing = [n for n in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
assert ops and not missing, f"ops without a CUDA kernel: {missing}"
print(f"    {len(ops)} ops, each with a CUDA kernel registered")
PY
    then ran+=("cuda sm_80+sm_90: OK"); else ran+=("cuda: FAILED (load)"); status=1; fi
  else
    tail -40 "$build.log"; ran+=("cuda sm_80+sm_90: FAILED (see $build.log)"); status=1
  fi
else
  ran+=("cuda: SKIPPED (no nvcc)")
fi

if ! command -v hipcc >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
  echo "==> installing Debian's hipcc"
  (apt-get update -qq && apt-get install -y -qq hipcc libamdhip64-dev) >/dev/null 2>&1
fi
if command -v hipcc >/dev/null 2>&1; then
  echo "==> ROCm: compiling with hipcc for gfx90a"
  hip_ok=1
  for source in csrc/cuda/*.cu; do
    if ! HIP_PLATFORM=amd hipcc --offload-arch=gfx90a -std=c++17 -O3 -Werror=unused-result \
        -c "$source" -o "build/check-hip-$(basename "$source").o" 2>build/check-hip.log; then
      cat build/check-hip.log; hip_ok=0
    fi
  done
  if ((hip_ok)); then ran+=("hip gfx90a: OK"); else ran+=("hip gfx90a: FAILED"); status=1; fi
else
  ran+=("hip: SKIPPED (no hipcc)")
fi

echo "GPU compile checks:"
printf '    %s\n' "${ran[@]}"
exit $status

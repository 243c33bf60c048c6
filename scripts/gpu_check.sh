#!/usr/bin/env bash
# One call on a lent GPU machine (see docs/gpu.md): build with nvcc for the card,
# run the GPU-marked tests, then benchmarks/gpu.py. Logs and JSON go to $OUT
# (or ./gpu-out). Python packages the image lacks (ase, adios2, vesin) travel as
# wheels in .whl/ (scripts/gpu_check.sh --fetch-wheels, run where pip works).
#   usage: scripts/gpu_check.sh [--tests-only|--bench-only] [extra benchmark args]
#   GPU_TRAIN=1 adds pygfm-train and benchmarks/precision.py on the GPU;
#   GPU_SCREEN=1 adds benchmarks/screen.py (model and whole driver).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [[ ${1:-} == --fetch-wheels ]]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl ase==3.29.0 adios2==2.12.1.1001 vesin==0.6.2 \
    vesin-torch==0.6.2
  exit
fi
out=${OUT:-$repo/gpu-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
what=all
if [[ ${1:-} == --tests-only || ${1:-} == --bench-only ]]; then what=$1; shift; fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
start=$(date +%s)
# sm_90 only: the card is Hopper; CI compile-checks 80;90 and gfx90a.
if ! PYGFM_CUDA_ARCHS=${PYGFM_CUDA_ARCHS:-90} CMAKE_BUILD_PARALLEL_LEVEL=16 \
     python3 -m pip install --no-build-isolation --no-deps -q . >"$out/build.log" 2>&1; then
  tail -60 "$out/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
(cd /tmp && python3 -c "import pygfm, torch; print(pygfm.build_info(), torch.__version__)") || exit 1
status=0
if [[ $what != --bench-only ]]; then
  (cd /tmp && timeout ${TEST_TIMEOUT:-240} python3 -m pytest -c "$repo/pyproject.toml" \
     --rootdir "$repo" -p no:cacheprovider -m gpu -q -rfE --timeout 90 \
     "$repo/tests/ops" "$repo/tests/nn" "$repo/tests/models" "$repo/tests/calculator" 2>&1) | tee "$out/tests.log" | tail -60
  status=${PIPESTATUS[0]}
  echo "tests if [[ ${GPU_SCREEN:-0} == 1 ]]; then
  # screening throughput (issue 7): the model, and the whole driver with the
  # neighbor lists on the host and on the device
  (cd /tmp && timeout ${SCREEN_TIMEOUT:-240} python3 "$repo/benchmarks/screen.py" --device cuda \
     --structures 512 --repeats 5 --batch-atoms 32768 2>&1) | tee "$out/screen.log"
  echo "screen exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
fi
exit $status after $(( $(date +%s) - start )) s"
fi
if [[ $what != --tests-only ]]; then
  (cd /tmp && timeout ${BENCH_TIMEOUT:-240} python3 "$repo/benchmarks/gpu.py" --json "$out/gpu.json" "$@" 2>&1) \
    | tee "$out/bench.log"
  echo "bench exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
fi
if [[ ${GPU_TRAIN:-0} == 1 ]]; then
  # pygfm-train on the GPU (demo config, bigger batches) in FP32 and BF16, and
  # the precision benchmark
  for precision in fp32 bf16; do
    (cd /tmp && timeout ${TRAIN_TIMEOUT:-120} python3 -m pygfm.cli.train \
       "$repo/pygfm/train/configs/demo.yaml" --run-dir /tmp/gpu-train-$precision --quiet \
       --set device=cuda --set precision=$precision --set sampling.batch_atoms=4096 \
       --set training.max_steps=${TRAIN_STEPS:-200} --set training.eval_every=100 2>&1) \
      | tee "$out/train_$precision.log" | tail -12
    echo "train $precision exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
  done
  (cd /tmp && timeout 120 python3 "$repo/benchmarks/precision.py" --device cuda \
     --batch-atoms 4096 --batches 6 --repeats 5 2>&1) | tee "$out/precision.log"
  echo "precision exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
fi
if [[ ${GPU_SCREEN:-0} == 1 ]]; then
  # screening throughput (issue 7): the model, and the whole driver with the
  # neighbor lists on the host and on the device
  (cd /tmp && timeout ${SCREEN_TIMEOUT:-240} python3 "$repo/benchmarks/screen.py" --device cuda \
     --structures 512 --repeats 5 --batch-atoms 32768 2>&1) | tee "$out/screen.log"
  echo "screen exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
fi
exit $status

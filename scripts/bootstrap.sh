#!/usr/bin/env bash
# Creates ./.venv with PyTorch (CPU build), builds pygfm against it and installs it.
#   scripts/bootstrap.sh          the package and what it needs (requirements.txt)
#   scripts/bootstrap.sh --test   also what the tests need (requirements-test.txt, and
#                                 schnetpack without its torch-replacing pins)
# Environment: PYTHON (default python3), PYGFM_TORCH (default 2.13.0, the CPU build
# that lies on this machine's disk), PYGFM_BACKENDS (default auto).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
torch_version=${PYGFM_TORCH:-2.13.0}
extras=()
[[ "${1:-}" == "--test" ]] && extras=(-r requirements-test.txt)

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
echo "==> installing torch==$torch_version and the build tools"
"${pip[@]}" install "torch==$torch_version" numpy scikit-build-core pybind11 cmake ninja \
  -r requirements.txt "${extras[@]}"
echo "==> building pygfm against $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
# --no-build-isolation: the extension must be compiled against the torch it runs with.
"${pip[@]}" install --no-build-isolation --no-deps .
if [[ "${1:-}" == "--test" ]]; then
  echo "==> installing schnetpack (the PaiNN reference) with --no-deps"
  "${pip[@]}" install --no-deps -r requirements-schnetpack.txt
fi
(cd /tmp && "$OLDPWD/.venv/bin/python" -c 'import pygfm; print("==> pygfm", pygfm.__version__, pygfm.build_info())')

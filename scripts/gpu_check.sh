#!/usr/bin/env bash
# Whole test suite with CUDA required (fails, not skips, when no GPU is visible), then a short
# GPU timing of the benchmarks. Meant for whoever has a GPU at hand; < 5 minutes on one GPU.
#   bash scripts/gpu_check.sh            (results under benchmarks/results/gpu/)
#   OUT=/some/dir bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export UNROLLSCI_REQUIRE_CUDA=1
RES=${OUT:-benchmarks/results/gpu}
mkdir -p "$RES"
"$PY" - <<'PY' || exit 1
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False)")
print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
status=0
"$PY" -m pytest -q -p no:cacheprovider --durations=15 2>&1 | tee "$RES/pytest_cuda.log" || status=1
echo "== CPU vs GPU timing of the main kernels"
OUT="$RES" timeout 240 "$PY" scripts/gpu_timing.py 2>&1 | tail -n 40 || status=1
echo "== bench solvers (cuda: lasso to scikit-learn, CG on 10^5 unknowns)"
timeout 120 "$PY" -m unrollsci.cli bench solvers --device cuda --out "$RES" 2>&1 | tail -n 20 \
  || status=1
exit $status

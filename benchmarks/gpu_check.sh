#!/usr/bin/env bash
# The GPU check of the Triton backend, in one call that finishes in under 10 minutes:
#   1. pytest on the kernels (every Triton test compiled for the GPU, plus the `gpu`-marked
#      fp16/bf16 cases) and the whole-model Triton-vs-torch comparison;
#   2. benchmarks/bench_kernels.py: prefill attention vs SDPA (flash), decode attention's
#      memory bandwidth as a share of the GPU's peak, pointwise kernels vs torch;
#   3. benchmarks/bench_gpu_engine.py: prefill / decode tokens/s vs transformers, RAG TTFT of
#      a blended prefill vs a full prefill, quality next to speed.
# JSON goes to $OUT (the device tool's folder), else benchmarks/results/gpu/ (a dry run's to
# /tmp/ragkv-gpu-check: its figures are no results).
#
#   benchmarks/gpu_check.sh            on a machine with CUDA (python3 holds torch + triton)
#   benchmarks/gpu_check.sh --dry-run  here, without a GPU: the same steps on the CPU under
#                                      Triton's interpreter, tiny shapes, no timing claims
#
# A GPU box that cannot reach a package index gets the few pure-Python packages the tests
# import from wheels in .whl/ (made here by benchmarks/gpu_wheels.sh; carried with the tree).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
RESULTS="${OUT:-benchmarks/results/gpu}"
[ -n "$DRY" ] && RESULTS="${OUT:-/tmp/ragkv-gpu-check}"
mkdir -p "$RESULTS"
STATUS=0

if [ -n "$DRY" ]; then
    PY="${PYTHON:-.venv/bin/python}"
    export TRITON_INTERPRET=1
    TESTS=(tests/kernels/test_triton_pointwise.py tests/kernels/test_triton_attention.py)
else
    PY="${PYTHON:-python3}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    if [ -d .whl ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ragkv-site .whl/*.whl \
            && export PYTHONPATH="/tmp/ragkv-site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    TESTS=(tests/kernels tests/engine/test_triton_backend.py)
fi
# ragkv.kernels is the top-level kernels/ folder (pyproject's package-dir): install the
# project itself without its dependencies when it is not importable yet.
if ! "$PY" -c "import ragkv.kernels.backend" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . || STATUS=1
fi
"$PY" - <<'PYEOF'
import torch, triton
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
print(f"torch {torch.__version__}, triton {triton.__version__}, {cuda}")
PYEOF

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going on failure
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    local started=$SECONDS
    timeout "$limit" "$@" || { echo "!! $name failed ($?)"; STATUS=1; }
    echo "   ($name: $((SECONDS - started)) s)"
}

step "kernel tests" 240 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
    --junitxml="$RESULTS/pytest.xml"
step "kernel benchmark" 150 "$PY" benchmarks/bench_kernels.py $DRY --json "$RESULTS/kernels.json"
step "engine benchmark" 180 "$PY" benchmarks/bench_gpu_engine.py $DRY --json "$RESULTS/engine.json"
echo "== results in $RESULTS (status $STATUS)"
exit $STATUS

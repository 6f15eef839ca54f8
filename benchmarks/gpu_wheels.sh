#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a GPU machine that has torch, triton, transformers and
# pytest but no package index: what the engine tests import besides those (settings, the
# chunk store's lmdb, the GGUF reader). Python 3.12, manylinux x86-64; written to .whl/
# (git-ignored locally through .git/info/exclude; the device tool carries it: carry [".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PACKAGES=(pydantic pydantic-core pydantic-settings python-dotenv typing-inspection
          annotated-types lmdb gguf)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${PACKAGES[@]}"
du -sh .whl

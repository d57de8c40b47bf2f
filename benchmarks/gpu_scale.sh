#!/usr/bin/env bash
# Issue 10's GPU section in one call of the device tool (benchmarks/gpu_scale.py says what
# it measures). That machine reaches no package registry and its Python lacks some of
# cobra_eval's packages, so they travel as wheels:
#
#   bash benchmarks/gpu_scale.sh wheels    # here, from the repo's root: the wheels, into .whl/
#
# then the device tool's run, with command `bash benchmarks/gpu_scale.sh`, carry [".whl"] and
# timeout_s 540 (arguments after it go to gpu_scale.py, e.g. --batches_each 4,2,2). It
# prints the figures and writes them to $OUT/gpu_scale.txt; commit that file as
# benchmarks/gpu_scale.txt and `make bench` puts it into RESULTS.md, marked with the device.
set -euo pipefail

# what cobra_eval imports for a --metrics none run that the device's image does not hold
# (its package list: /work/.library/device/KINDS.md), at the versions installed here
PACKAGES=(sqlmodel sqlalchemy alembic mako pydantic pydantic-core annotated-types
    typing-inspection typing-extensions orjson ijson)

if [[ "${1:-}" == "wheels" ]]; then
    python="${PYTHON:-.venv/bin/python}"
    pinned=$("$python" - "${PACKAGES[@]}" <<'EOF'
import importlib.metadata, sys
print(" ".join(f"{name}=={importlib.metadata.version(name)}" for name in sys.argv[1:]))
EOF
)
    rm -rf .whl
    # shellcheck disable=SC2086  # one argument per pinned package
    # the device's Python is 3.12 (PYTHON_VERSION=3.11 fetches wheels for this machine's)
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version "${PYTHON_VERSION:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $pinned
    ls .whl
    exit 0
fi

: "${OUT:?run this through the device tool (it sets OUT), after 'bash $0 wheels' here}"
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{
    gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true)
    echo "device: ${gpu:-no GPU found}"
    echo "date: $(date -u '+%Y-%m-%d %H:%M') UTC; $(python3 -c 'import platform, torch, transformers
print(f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")')"
} | tee "$OUT/gpu_scale.txt"
# under the 8 minutes the issue gives it: each batch size's line is printed when measured
timeout 470 python3 -m benchmarks.gpu_scale --device cuda "$@" 2>&1 | tee -a "$OUT/gpu_scale.txt"

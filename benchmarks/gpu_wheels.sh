#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels benchmarks/gpu_check.sh installs on a GPU machine
# without network: cxr's run-time requirements (pyproject.toml) and what they need, for CPython
# 3.12 on manylinux x86_64, less torch, torchvision and what they bring (the GPU machine has
# those), and pip's own wheel for a Python without pip.
#
#   bash benchmarks/gpu_wheels.sh                     # everything: about 140 MB
#   GPU_HAVE=have.txt bash benchmarks/gpu_wheels.sh   # only what that machine lacks
#
# GPU_HAVE names the GPU machine's `python3 -m pip freeze` output: a package it already has in a
# version every requirement accepts is not fetched (pip would not install it there either).
# Wheels go to GPU_WHEELS (default benchmarks/_wheels, emptied first). Fetches until
# benchmarks/gpu_check.py finds every requirement of every wheel satisfied, then prints the
# wheels and their total size.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${GPU_WHEELS:-benchmarks/_wheels}
# packaging reads the wheels' requirements: the project's venv has it (pip vendors it too).
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
HAVE=()
if [ -n "${GPU_HAVE:-}" ]; then HAVE=(--have "$GPU_HAVE"); fi

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
missing_now() { "$PY" benchmarks/gpu_check.py wheels-missing "$WHEELS" "${HAVE[@]}" || true; }
for _ in $(seq 10); do
    mapfile -t missing < <(missing_now)
    [ "${#missing[@]}" -eq 0 ] && break
    for req in "${missing[@]}"; do # a wheel a newer requirement refuses is replaced
        name=$(echo "${req%%[<>=!~]*}" | tr - _)
        rm -f "$WHEELS/$name"-*.whl
    done
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 --platform any \
        --dest "$WHEELS" "${missing[@]}"
done
mapfile -t missing < <(missing_now)
if [ "${#missing[@]}" -ne 0 ]; then
    echo "gpu_wheels: still unsatisfied: ${missing[*]}" >&2
    exit 1
fi
ls -1 "$WHEELS"
echo "gpu_wheels: $(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"

#!/usr/bin/env bash
# Every CUDA path of cxr, once, on demo data, in about 5 minutes on one GPU: bf16 autocast,
# channels_last, torch.compile on and off, a one-process NCCL DDP run under torchrun, --resume,
# evaluate and predict (Grad-CAM) on CUDA, and bench_train.py at DenseNet-121 224 px. Prints
# each step's figures or failure, goes on after a failure, and ends with a summary table.
#
#   bash benchmarks/gpu_wheels.sh                 # once, on a machine with PyPI: the wheels
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, from the repository root
#
# It uses the GPU machine's own Python and torch (PYTHON, default python3) and the source tree
# (PYTHONPATH=src). What that Python lacks of cxr's requirements is installed, without network,
# from the wheels in GPU_WHEELS (default benchmarks/_wheels) into a venv that sees the system's
# packages (so its torch is the one used). Everything is written under GPU_CHECK_WORK (default
# benchmarks/_work/gpu_check, emptied first); each step's output goes to GPU_CHECK_LOGS (default
# that folder's logs/).
#
# Exit status: 0 every step passed, 1 a step failed or was skipped, 2 the set-up failed,
# 3 no CUDA GPU here (said in one line, at once, before anything is installed or written).
# The logic lives in benchmarks/gpu_check.py (tested on machines without a GPU).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-benchmarks/_wheels}
WORK=${GPU_CHECK_WORK:-benchmarks/_work/gpu_check}
HELPER=benchmarks/gpu_check.py

"$PYTHON" "$HELPER" probe --python "$PYTHON" || exit $?

setup_failed() {
    echo "gpu_check: set-up failed: $*" >&2
    exit 2
}

t0=$(date +%s)
rm -rf "$WORK" && mkdir -p "$WORK" || setup_failed "cannot make $WORK"
WORK=$(cd "$WORK" && pwd)
# No pip of its own (ensurepip may be missing): the system's pip is visible through
# --system-site-packages and installs into the venv; else pip runs from its wheel.
"$PYTHON" -m venv --without-pip --system-site-packages "$WORK/venv" ||
    setup_failed "$PYTHON -m venv cannot make a venv in $WORK/venv"
VPY="$WORK/venv/bin/python"
if "$VPY" -m pip --version >/dev/null 2>&1; then
    PIP=("$VPY" -m pip)
else
    PIP_WHEEL=$(ls "$WHEELS"/pip-*.whl 2>/dev/null | head -n 1)
    [ -n "$PIP_WHEEL" ] || setup_failed "$PYTHON has no pip and $WHEELS holds no pip wheel"
    PIP=("$VPY" "$PIP_WHEEL/pip")
fi
mapfile -t REQS < <("$VPY" "$HELPER" requirements) || setup_failed "cannot read pyproject.toml"
if [ -d "$WHEELS" ]; then
    echo "gpu_check: installing what $PYTHON lacks of: ${REQS[*]}"
    "${PIP[@]}" install --isolated --quiet --disable-pip-version-check --no-index \
        --find-links "$WHEELS" "${REQS[@]}" ||
        setup_failed "pip could not install cxr's requirements from $WHEELS (above)"
else
    echo "gpu_check: no $WHEELS: using what $PYTHON has (run benchmarks/gpu_wheels.sh to bring the rest)"
fi
# Every module cxr imports at run time, before any step: a missing one is one line, not 15 failures.
PYTHONPATH=src "$VPY" -c "
import cxr.cli, cxr.training.train, cxr.evaluation.evaluate, cxr.evaluation.report
import cxr.inference.predict, cxr.imaging.images, sklearn.metrics, matplotlib.pyplot, timm
import torch.utils.tensorboard, pydicom, tomli_w
" || setup_failed "cxr cannot import everything it needs (above)"
echo "gpu_check: set-up took $(($(date +%s) - t0)) s"

LOGS=${GPU_CHECK_LOGS:-$WORK/logs}
# The steps share what is left of one 10-minute command.
BUDGET=$((560 - ($(date +%s) - t0)))
exec "$VPY" "$HELPER" run --work "$WORK" --logs "$LOGS" --budget "$BUDGET"

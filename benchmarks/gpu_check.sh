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
# from the wheels in GPU_WHEELS (default benchmarks/_wheels) into a folder of its own put on
# PYTHONPATH (site/), so the machine's torch is the one used. Everything is written under
# GPU_CHECK_WORK (default benchmarks/_work/gpu_check, emptied first); each step's output goes to
# GPU_CHECK_LOGS (default that folder's logs/).
#
# GPU_CHECK_ONLY="train bf16,evaluate" runs only those steps; GPU_CHECK_DEVICE=cpu rehearses
# everything on a machine without a GPU (smaller models; no probe).
#
# Exit status: 0 every step passed, 1 a step failed or was skipped, 2 the set-up failed,
# 3 no CUDA GPU here (said in one line, at once, before anything is installed or written).
# The logic lives in benchmarks/gpu_check.py (tested on machines without a GPU).
set -u
t0=$(date +%s)
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-benchmarks/_wheels}
WORK=${GPU_CHECK_WORK:-benchmarks/_work/gpu_check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
HELPER=benchmarks/gpu_check.py

if [ "$DEVICE" = cpu ]; then
    echo "gpu_check: a rehearsal on the CPU (GPU_CHECK_DEVICE=cpu): no figure here is a GPU's"
else
    "$PYTHON" "$HELPER" probe --python "$PYTHON" || exit $?
fi

setup_failed() {
    echo "gpu_check: set-up failed: $*" >&2
    exit 2
}

rm -rf "$WORK" && mkdir -p "$WORK" || setup_failed "cannot make $WORK"
WORK=$(cd "$WORK" && pwd)
SITE="$WORK/site"
# What this Python lacks goes into a folder of its own, first on PYTHONPATH: no venv, so the
# machine's torch is used wherever it is installed (system, user or a venv of its own).
if [ -d "$WHEELS" ]; then
    "$PYTHON" "$HELPER" install-plan "$WHEELS" >"$WORK/plan.txt" || exit 2
    mapfile -t PLAN <"$WORK/plan.txt"
    if [ "${#PLAN[@]}" -gt 0 ]; then
        echo "gpu_check: installing ${#PLAN[@]} wheels into $SITE"
        if "$PYTHON" -m pip --version >/dev/null 2>&1; then
            PIP=("$PYTHON" -m pip)
        else # no pip: pip runs from its own wheel
            PIP_WHEEL=$(ls "$WHEELS"/pip-*.whl 2>/dev/null | head -n 1)
            [ -n "$PIP_WHEEL" ] || setup_failed "$PYTHON has no pip and $WHEELS holds no pip wheel"
            PIP=("$PYTHON" "$PIP_WHEEL/pip")
        fi
        "${PIP[@]}" install --isolated --quiet --disable-pip-version-check --no-index --no-deps \
            --target "$SITE" "${PLAN[@]}" ||
            setup_failed "pip could not install the wheels of $WHEELS into $SITE (above)"
    else
        echo "gpu_check: $PYTHON has everything cxr needs"
    fi
else
    echo "gpu_check: no $WHEELS: using what $PYTHON has (benchmarks/gpu_wheels.sh brings the rest)"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Every module cxr imports at run time, before any step: a missing one is one line, not 15 failures.
PYTHONPATH="src:$PYTHONPATH" "$PYTHON" -c "
import cxr.cli, cxr.training.train, cxr.evaluation.evaluate, cxr.evaluation.report
import cxr.inference.predict, cxr.imaging.images, sklearn.metrics, matplotlib.pyplot, timm
import torch.utils.tensorboard, pydicom, tomli_w
" || setup_failed "cxr cannot import everything it needs (above)"
echo "gpu_check: set-up took $(($(date +%s) - t0)) s"

LOGS=${GPU_CHECK_LOGS:-$WORK/logs}
# The steps share what is left of 9 minutes, so that the whole stays inside one 10-minute command.
BUDGET=$((540 - ($(date +%s) - t0)))
exec "$PYTHON" "$HELPER" run --work "$WORK" --logs "$LOGS" --budget "$BUDGET" --device "$DEVICE" \
    --only "${GPU_CHECK_ONLY:-}"

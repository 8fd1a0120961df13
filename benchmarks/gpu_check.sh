#!/usr/bin/env bash
# A device check that fits a time budget (benchmarks/gpu_check.py): environment, train-step grid, mixer and method
# costs, short CIFAR-10 runs of vanilla / mixup / samix and, if time is left, a short BYOL run. Writes
# OUT/gpu_check.json and OUT/gpu_check.md, rewritten as results come in. Runs from the checkout without an installed
# mixbench (PYTHONPATH is the checkout); PYTHON picks the interpreter.
#
#   bash benchmarks/gpu_check.sh --budget-s 480 --out "$OUT/gpu_check"        # archive from data_local/ if there
#   bash benchmarks/gpu_check.sh --budget-s 480 --cifar10 /path/to/cifar10-jpeg.tar.gz --out /tmp/gpu_check
#   bash benchmarks/gpu_check.sh --budget-s 60 --device cpu --cifar10 shapes --out /tmp/gpu_check   # CPU, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"

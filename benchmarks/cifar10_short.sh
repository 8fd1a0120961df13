#!/usr/bin/env bash
# Short CIFAR-10 comparison of vanilla, mixup, AutoMix and SAMix with one schedule, from the JPEG copy
# of CIFAR-10 (../shared/data/cifar10-jpeg.tar.gz in a development checkout, or pass its path).
# A CPU-sized run: ResNet-10 (width 0.25), 8,000 training / 2,000 test images (class-balanced),
# 10 epochs; the momentum encoder's schedule is shortened to the run (0.99 -> 0.999).
# On a GPU: DEVICE=cuda MODEL=resnet18_cifar WIDTH=1 TRAIN=50000 TEST=10000 EPOCHS=30 bash benchmarks/cifar10_short.sh
set -euo pipefail
DATA=${1:-$(dirname "$0")/../../shared/data/cifar10-jpeg.tar.gz}
OUT=${OUT:-results_cifar10_short}
DEVICE=${DEVICE:-cpu}; MODEL=${MODEL:-resnet10_cifar}; WIDTH=${WIDTH:-0.25}
TRAIN=${TRAIN:-8000}; TEST=${TEST:-2000}; EPOCHS=${EPOCHS:-10}
common=(--out "$OUT" --device "$DEVICE" --overwrite
        --set data.source=imagefolder --set "data.root=\"$DATA\"" --set data.train_size="$TRAIN"
        --set data.test_size="$TEST" --set model.name="$MODEL" --set model.width="$WIDTH"
        --set train.epochs="$EPOCHS" --set train.log_every=20)
short=(--set method.momentum=0.99 --set method.momentum_end=0.999)
for m in vanilla mixup automix samix; do
  extra=()
  [[ $m == automix || $m == samix ]] && extra=("${short[@]}")
  mixbench run "recipes/cifar10_r18_$m.toml" "${common[@]}" "${extra[@]}" --set name="cifar10_short_$m"
done
mixbench compare "$OUT" --format markdown

#!/usr/bin/env bash
# Issue 13's CPU comparison: vanilla, mixup and cutmix trained briefly on a class-balanced subset of
# the real CIFAR-10 (JPEG copy), then every evaluator on each run, and one `compare` table.
#   bash benchmarks/eval_cifar10_subset.sh [CIFAR10_ARCHIVE] [TINY_IMAGENET_ARCHIVE]
# Defaults: the archives of ../shared/data beside a development checkout. Sizes through the environment:
#   TRAIN=5000 TEST=1000 EPOCHS=10 MODEL=resnet10_cifar WIDTH=0.25 TINY_TRAIN=2000 TINY_TEST=1000 DEVICE=cpu
# Each evaluator's time is the `seconds` of its result.json (printed by benchmarks/eval_times.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
C10=${1:-$here/../../shared/data/cifar10-jpeg.tar.gz}
TINY=${2:-$here/../../shared/data/tiny-imagenet-200.tar.gz}
OUT=${OUT:-results_eval_cifar10}
DEVICE=${DEVICE:-cpu}; MODEL=${MODEL:-resnet10_cifar}; WIDTH=${WIDTH:-0.25}
TRAIN=${TRAIN:-5000}; TEST=${TEST:-1000}; EPOCHS=${EPOCHS:-10}
TINY_TRAIN=${TINY_TRAIN:-2000}; TINY_TEST=${TINY_TEST:-1000}
for m in vanilla mixup cutmix; do
  mixbench run "$here/../recipes/cifar10_r18_$m.toml" --out "$OUT" --device "$DEVICE" --overwrite \
    --set data.source=imagefolder --set "data.root=\"$C10\"" --set data.train_size="$TRAIN" \
    --set data.test_size="$TEST" --set model.name="$MODEL" --set model.width="$WIDTH" \
    --set train.epochs="$EPOCHS" --set train.log_every=20 --set name="cifar10_subset_$m"
done
for run in "$OUT"/cifar10_subset_*/seed*; do
  mixbench linear-eval "$run" --device "$DEVICE"
  mixbench knn "$run" --device "$DEVICE"
  mixbench evaluate "$run" --only calibration,corruptions,occlusion,fgsm --device "$DEVICE"
  mixbench transfer "$run" --data tiny-imagenet --root "$TINY" --device "$DEVICE" \
    --set data.train_size="$TINY_TRAIN" --set data.test_size="$TINY_TEST"
done
mixbench compare "$OUT" --format markdown
python "$here/eval_times.py" "$OUT"

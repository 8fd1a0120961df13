#!/bin/bash
# Self-supervised pre-training on a CIFAR-10 subset on the CPU (minutes, not hours): 5,000 train / 1,000 test images
# from the JPEG archive, ResNet-10 width 0.25, 20 epochs, the lightly/solo-learn recipe otherwise; two runs at a time,
# one thread each. Reports the online linear top-1 and the kNN monitor (k 200, T 0.1) of each run.
#
#   bash benchmarks/ssl_cifar10_subset.sh OUT [ARCHIVE] [METHOD...]
#   bash benchmarks/ssl_cifar10_subset.sh /tmp/cifar_ssl ../shared/data/cifar10-jpeg.tar.gz byol byol_sdmp
#
# METHOD is the suffix of recipes/ssl/cifar10_r18_<METHOD>.toml (default: mocov3 mocov3_sdmp byol byol_sdmp).
set -euo pipefail
out=${1:?usage: ssl_cifar10_subset.sh OUT [ARCHIVE] [METHOD...]}
archive=${2:-../shared/data/cifar10-jpeg.tar.gz}
shift $(( $# >= 2 ? 2 : $# ))
methods=("$@")
[ ${#methods[@]} -eq 0 ] && methods=(mocov3 mocov3_sdmp byol byol_sdmp)
cd "$(dirname "$0")/.."
mkdir -p "$out"
run() {
  OMP_NUM_THREADS=1 python -m mixbench run "recipes/ssl/cifar10_r18_$1.toml" --out "$out" --device cpu --overwrite \
    --set data.source=imagefolder --set "data.root=\"$(realpath "$archive")\"" \
    --set data.train_size=5000 --set data.test_size=1000 --set model.name=resnet10_cifar --set model.width=0.25 \
    --set train.epochs=20 --set train.warmup_epochs=2 --set train.precision=fp32 --set train.sync_bn=false \
    --set method.knn_every=5 --set train.log_every=10 --set "name=c10sub_$1" > "$out/c10sub_$1.log" 2>&1
  tail -n 1 "$out/c10sub_$1.log"
}
for ((i = 0; i < ${#methods[@]}; i += 2)); do
  run "${methods[$i]}" &
  if (( i + 1 < ${#methods[@]} )); then run "${methods[$((i + 1))]}" & fi
  wait
done
python -m mixbench compare "$out"   # top-1 = the online linear classifier; kNN: each run's metrics.jsonl (knn_top1)

#!/usr/bin/env bash
# Fetch the data, train 16 nodes on Fashion-MNIST (LeNet-5, 2-shard non-IID), Shakespeare
# (character LSTM, natural partition by role) and MovieLens (matrix factorization, by user),
# and CIFAR-10 (GN-LeNet) when its archive has been fetched; then plot each run with
# `dlactor report`.
#   experiments/datasets/run.sh [OUT_DIR]      (default runs/datasets)
# About 12 minutes on a 2-core machine (Fashion-MNIST ~3, Shakespeare ~7, MovieLens ~1).
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s .venv/.installed-stamp
dl=.venv/bin/dlactor
out=${1:-runs/datasets}
here=experiments/datasets

configs=(fmnist_lenet shakespeare_lstm movielens_mf)
for name in fashion_mnist shakespeare movielens; do
  $dl data fetch "$name"
done
if $dl validate "$here/cifar10_gnlenet.toml" >/dev/null 2>&1; then
  configs+=(cifar10_gnlenet)
else
  echo "skipping CIFAR-10: not in the data store (dlactor data fetch cifar10 --from ARCHIVE)"
fi

runs=()
for cfg in "${configs[@]}"; do
  $dl launch "$here/$cfg.toml" --out "$out"
  runs+=("$(ls -td "$out"/*-*/ | head -1)")
done
for run in "${runs[@]}"; do
  $dl report "$run"
done
printf 'plots: %s\n' "${runs[@]/%/plots}"

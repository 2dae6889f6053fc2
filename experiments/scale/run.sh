#!/usr/bin/env bash
# 1024 node processes on this machine: D-PSGD, 5-regular, logistic regression on
# Fashion-MNIST, 10 rounds. Needs about 17 GiB of free memory and about 2,100 open files in
# the launcher (docs/scaling.md); the launcher raises its own soft limit to the hard one.
#   experiments/scale/run.sh [NODES] [OUT_DIR]      (defaults: 1024, runs/scale)
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s .venv/.installed-stamp
dl=.venv/bin/dlactor
nodes=${1:-1024}
out=${2:-runs/scale}

$dl data fetch fashion_mnist
free -m | awk '/^Mem:/ {printf "memory available before the run: %d MiB\n", $7}'
time $dl launch experiments/scale/fmnist_1024.toml --set "nodes=$nodes" --out "$out"

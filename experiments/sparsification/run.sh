#!/usr/bin/env bash
# The paper's sparsification study (Figure 4): the same 64-node Fashion-MNIST run with six
# sharing strategies, then one comparison with `dlactor report` (accuracy against rounds,
# wall-clock time and bytes sent per node).
#   experiments/sparsification/run.sh [OUT_DIR] [--set ...]    (default runs/sparsification)
# About 30 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s .venv/.installed-stamp
dl=.venv/bin/dlactor
out=${1:-runs/sparsification}
shift || true
config=experiments/sparsification/fmnist_64.toml

$dl data fetch fashion_mnist
declare -A strategies=(
  [full]="--set sharing.kind=full"
  [random10]="--set sharing.kind=random --set sharing.budget=0.1"
  [topk10]="--set sharing.kind=topk --set sharing.budget=0.1"
  [choco10]="--set sharing.kind=choco --set sharing.compressor=topk --set sharing.budget=0.1"
  [quant8]="--set sharing.kind=quantize --set sharing.bits=8"
  [quant4]="--set sharing.kind=quantize --set sharing.bits=4"
)
runs=()
for name in full random10 topk10 choco10 quant8 quant4; do
  # shellcheck disable=SC2086  # the settings are meant to split into words
  $dl launch "$config" --out "$out" --set "name=$name" ${strategies[$name]} "$@"
  runs+=("$(ls -td "$out/$name"-*/ | head -1)")
done
$dl report "${runs[@]}" --out "$out/compare"
echo "figures and table: $out/compare"

#!/usr/bin/env bash
# The paper's topology study (Figure 3): the same 64-node Fashion-MNIST run on five
# topologies, then one comparison with `dlactor report` (accuracy against rounds, wall-clock
# time and bytes sent; degree distribution and spectral gap of every round's graph).
#   experiments/topologies/run.sh [OUT_DIR]      (default runs/topologies)
# About 30 minutes on a 2-core machine. Extra arguments after OUT_DIR go to every launch
# (e.g. --set rounds=40 for a quicker look).
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s .venv/.installed-stamp
dl=.venv/bin/dlactor
out=${1:-runs/topologies}
shift || true
config=experiments/topologies/fmnist_64.toml

$dl data fetch fashion_mnist
declare -A topologies=(
  [ring]="--set topology.kind=ring"
  [regular5]="--set topology.kind=regular --set topology.degree=5"
  [complete]="--set topology.kind=complete"
  [dynamic5-sampler]="--set topology.kind=peer_sampler --set topology.degree=5"
  [dynamic5-gossip]="--set topology.kind=gossip --set topology.degree=5"
)
runs=()
for name in ring regular5 complete dynamic5-sampler dynamic5-gossip; do
  # shellcheck disable=SC2086  # the settings are meant to split into words
  $dl launch "$config" --out "$out" --set "name=$name" ${topologies[$name]} "$@"
  runs+=("$(ls -td "$out/$name"-*/ | head -1)")
done
$dl report "${runs[@]}" --out "$out/compare"
.venv/bin/python experiments/topologies/uniformity.py "${runs[@]}" --out "$out/compare/uniformity.md"
echo "figures and table: $out/compare"

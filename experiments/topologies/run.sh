#!/usr/bin/env bash
# The paper's topology study (Figure 3): the same 64-node Fashion-MNIST run on five
# topologies, then one comparison with `dlactor report` (accuracy against rounds, wall-clock
# time and bytes sent; degree distribution and spectral gap of every round's graph) and
# uniformity.md (how close the sampled graphs come to uniformly random ones).
#   experiments/topologies/run.sh [OUT_DIR] [LAUNCH_ARGS]     (default runs/topologies)
# About 25 minutes on a 2-core machine; LAUNCH_ARGS go to every launch (e.g.
# --set rounds=40 for a quicker look).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/topologies}
shift || true
make -s .venv/.installed-stamp
.venv/bin/dlactor data fetch fashion_mnist
experiments/variants.sh experiments/topologies/fmnist_64.toml "$out" \
  "ring:--set topology.kind=ring" \
  "regular5:--set topology.kind=regular --set topology.degree=5" \
  "complete:--set topology.kind=complete" \
  "dynamic5-sampler:--set topology.kind=peer_sampler --set topology.degree=5" \
  "dynamic5-gossip:--set topology.kind=gossip --set topology.degree=5" \
  -- "$@"
mapfile -t runs < "$out/compare/runs.txt"
.venv/bin/python experiments/topologies/uniformity.py "${runs[@]}" --out "$out/compare/uniformity.md"
echo "figures and tables: $out/compare"

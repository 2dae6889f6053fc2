#!/usr/bin/env bash
# The round protocols compared (FedAvg, parameter server, D-PSGD, Epidemic Learning) on the
# same 64-node Fashion-MNIST task, then one comparison with `dlactor report` (accuracy
# against rounds, wall-clock time and bytes sent per node).
#   experiments/algorithms/run.sh [OUT_DIR] [LAUNCH_ARGS]    (default runs/algorithms)
# About 45 minutes on a 2-core machine (the 10% FedAvg run has 1,200 rounds).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/algorithms}
shift || true
make -s .venv/.installed-stamp
.venv/bin/dlactor data fetch fashion_mnist
experiments/variants.sh experiments/algorithms/fmnist_64.toml "$out" \
  "fedavg_all:--set algorithm.kind=fedavg --set algorithm.fraction=1.0" \
  "fedavg_10pct:--set algorithm.kind=fedavg --set algorithm.fraction=0.1 --set rounds=1200 --set evaluation.every=100" \
  "param_server:--set algorithm.kind=parameter_server" \
  "dpsgd_5reg:--set algorithm.kind=dpsgd --set topology.kind=regular --set topology.degree=5" \
  "el_oracle_s5:--set algorithm.kind=epidemic --set algorithm.s=5" \
  -- "$@"
echo "figures and table: $out/compare"

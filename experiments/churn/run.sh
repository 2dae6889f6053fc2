#!/usr/bin/env bash
# Churn and losses on Fashion-MNIST / LeNet-5 at 64 nodes, on a static 5-regular graph and
# on a 5-regular graph drawn afresh every round: no churn, 10% and 30% of the nodes offline
# at any time (sessions of 5 rounds on average), and 8 nodes killed with SIGKILL at rounds
# drawn from the seed while the others go on (on_node_failure = "continue"). Each topology's
# four runs are compared with `dlactor report` (accuracy against rounds, time and bytes,
# with the nodes taking part per round under it); table.py writes the table.
#   experiments/churn/run.sh [OUT_DIR] [LAUNCH_ARGS]    (default runs/churn)
# About 35 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/churn}
shift || true
make -s .venv/.installed-stamp
.venv/bin/dlactor data fetch fashion_mnist
for topology in regular dynamic_regular; do
  experiments/variants.sh experiments/churn/fmnist_64.toml "$out/$topology" \
    "none:--set topology.kind=$topology" \
    "offline10:--set topology.kind=$topology --set availability.offline=0.1" \
    "offline30:--set topology.kind=$topology --set availability.offline=0.3" \
    "killed8:--set topology.kind=$topology --set faults.kill=8 --set launcher.on_node_failure=continue" \
    -- "$@"
done
.venv/bin/python experiments/churn/table.py "$out/regular" "$out/dynamic_regular" | tee "$out/table.md"
echo "figures: $out/regular/compare, $out/dynamic_regular/compare; table: $out/table.md"

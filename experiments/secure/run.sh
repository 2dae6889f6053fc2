#!/usr/bin/env bash
# Secure aggregation against plain full sharing, same seed, on two tasks at the reference
# paper's size (48 nodes, D-PSGD, 5-regular graph): Fashion-MNIST with LeNet-5 (2-shard
# non-IID) and MovieLens matrix factorization (by user). A third run per task is the control:
# plain sharing whose average is summed in float64 (full64.py), which changes only rounding,
# as the secure run's fixed point does. Each task is compared with `dlactor report`
# (accuracy or RMSE against rounds, time and bytes sent); table.py writes the table.
#   experiments/secure/run.sh [OUT_DIR] [LAUNCH_ARGS]    (default runs/secure)
# About 30 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/secure}
shift || true
make -s .venv/.installed-stamp
.venv/bin/dlactor data fetch fashion_mnist
.venv/bin/dlactor data fetch movielens
for task in fmnist movielens; do
  experiments/variants.sh "experiments/secure/${task}_48.toml" "$out/$task" \
    "plain:--set sharing.kind=full" \
    "secure:--set sharing.kind=secure" \
    "float64:--set plugins=['full64.py'] --set sharing.kind=full64" \
    -- "$@"
done
.venv/bin/python experiments/secure/table.py "$out/fmnist" "$out/movielens" | tee "$out/table.md"
echo "figures: $out/fmnist/compare, $out/movielens/compare; table: $out/table.md"

#!/usr/bin/env bash
# The paper's sparsification study (Figure 4): the same 64-node Fashion-MNIST run with six
# sharing strategies, then one comparison with `dlactor report` (accuracy against rounds,
# wall-clock time and bytes sent per node).
#   experiments/sparsification/run.sh [OUT_DIR] [LAUNCH_ARGS]    (default runs/sparsification)
# About 27 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/sparsification}
shift || true
make -s .venv/.installed-stamp
.venv/bin/dlactor data fetch fashion_mnist
experiments/variants.sh experiments/sparsification/fmnist_64.toml "$out" \
  "full:--set sharing.kind=full" \
  "random10:--set sharing.kind=random --set sharing.budget=0.1" \
  "topk10:--set sharing.kind=topk --set sharing.budget=0.1" \
  "choco10:--set sharing.kind=choco --set sharing.compressor=topk --set sharing.budget=0.1" \
  "quant8:--set sharing.kind=quantize --set sharing.bits=8" \
  "quant4:--set sharing.kind=quantize --set sharing.bits=4" \
  -- "$@"
echo "figures and table: $out/compare"

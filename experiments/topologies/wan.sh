#!/usr/bin/env bash
# The topology study (run.sh: 64 nodes, Fashion-MNIST, LeNet-5, 2-shard non-IID; ring,
# 5-regular, fully connected, dynamic 5-regular, gossip) on an emulated wide-area network,
# in virtual time: every node has a 50 Mbit/s uplink and downlink (about the median fixed
# broadband upload in Ookla's Speedtest Global Index), the nodes sit in four cloud regions
# with one-way latencies of 5 to 105 ms between them (wan_latency.csv, written by
# wan_matrix.py, which says where the figures come from), each message's latency varies by
# up to +-5 ms, and compute is this machine's measured CPU time. docs/network.md has the
# model.
#   experiments/topologies/wan.sh [OUT_DIR] [LAUNCH_ARGS]     (default runs/topologies-wan)
# About 45 minutes on an idle 2-core machine (59 with other work on it). Then the figures
# and the table of the study:
# OUT_DIR/compare/accuracy.png (accuracy against rounds, virtual seconds and bytes),
# OUT_DIR/compare/summary.md, and OUT_DIR/compare/time_to_accuracy.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/topologies-wan}
shift || true
experiments/topologies/run.sh "$out" \
  --set network.uplink_mbps=50 --set network.downlink_mbps=50 \
  --set network.latency_matrix=wan_latency.csv \
  --set network.jitter_ms=5 --set 'evaluation.targets=[0.5, 0.6, 0.7]' "$@"
mapfile -t runs < "$out/compare/runs.txt"
.venv/bin/python experiments/topologies/time_table.py "${runs[@]}" > "$out/compare/time_to_accuracy.md"
cat "$out/compare/time_to_accuracy.md"

#!/usr/bin/env bash
# The reference paper's Figure 6 here: figure6.toml at 256 nodes on 5-regular and 9-regular
# graphs and at 1024 nodes on a 5-regular graph, the same rounds and per-node work, then the
# comparison (`dlactor report`: accuracy against rounds, virtual time and bytes; degrees and
# spectral gap) and table.md (experiments/scale/table.py).
#   experiments/scale/figure6.sh [OUT_DIR] [LAUNCH_ARGS]     (default runs/figure6)
# Runs in the background: it says where its log is and returns; `tail -f OUT_DIR/study.log`
# follows it. The 1024-node run needs about 26 GiB of memory and swap together
# (docs/scaling.md, "The paper's Figure 6 at 1024 nodes"): the nodes take about 15 GiB, and
# while it runs the machine's free memory falls by about half a GiB a minute in kernel
# memory that it gives back when the run ends. On this 24 GiB machine it finished with 8 GiB
# of swap; the script refuses a machine whose memory and swap cannot hold it, and waits for
# the memory to be free on one that can. The three runs took 30 minutes here.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/figure6}
shift || true
need_kib=$((26 * 1024 * 1024))
meminfo() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }
if (( $(meminfo MemTotal) + $(meminfo SwapTotal) < need_kib )); then
  echo "the 1024-node run needs 26 GiB of memory and swap; this machine has" \
    "$(( ($(meminfo MemTotal) + $(meminfo SwapTotal)) >> 20 )) GiB: add swap" \
    "(fallocate -l 8G /swapfile && chmod 600 /swapfile && mkswap /swapfile && swapon /swapfile)" >&2
  exit 2
fi
if [[ -z ${FIGURE6_FOREGROUND:-} ]]; then
  mkdir -p "$out"
  FIGURE6_FOREGROUND=1 nohup setsid "$0" "$out" "$@" > "$out/study.log" 2>&1 < /dev/null &
  echo "figure 6 study running in the background (pid $!); follow it with: tail -f $out/study.log"
  exit 0
fi
make -s .venv/.installed-stamp
.venv/bin/dlactor data fetch fashion_mnist
until (( $(meminfo MemAvailable) + $(meminfo SwapFree) >= need_kib )); do
  echo "$(date +%T) waiting for 26 GiB of free memory and swap before the runs"; sleep 30
done
# The 1024-node run goes first: it needs the most memory, and nothing else of the study runs
# beside it.
experiments/variants.sh experiments/scale/figure6.toml "$out" \
  "n1024-d5:--set nodes=1024 --set topology.degree=5" \
  "n256-d5:--set nodes=256 --set topology.degree=5" \
  "n256-d9:--set nodes=256 --set topology.degree=9" \
  -- "$@"
mapfile -t runs < "$out/compare/runs.txt"
.venv/bin/python experiments/scale/table.py "${runs[@]}" > "$out/compare/table.md"
cat "$out/compare/table.md"
echo "$(date +%T) done: figures and table in $out/compare"

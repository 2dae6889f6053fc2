#!/usr/bin/env bash
# Run one config once per variant, then compare the runs with `dlactor report`.
#   experiments/variants.sh CONFIG OUT_DIR 'name:--set a=b --set c=d' ... [-- LAUNCH_ARGS]
# Each variant is a run name and the --set options that make it; LAUNCH_ARGS go to every
# launch. Writes the figures and summary table into OUT_DIR/compare/, and the run
# directories, one per line, into OUT_DIR/compare/runs.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s .venv/.installed-stamp
dl=.venv/bin/dlactor
config=$1 out=$2
shift 2
variants=()
while (($#)) && [[ $1 != -- ]]; do variants+=("$1"); shift; done
if (($#)); then shift; fi
runs=() labels=()
for variant in "${variants[@]}"; do
  name=${variant%%:*}
  # shellcheck disable=SC2086  # the settings are meant to split into words
  $dl launch "$config" --out "$out" --set "name=$name" ${variant#*:} "$@"
  runs+=("$(ls -td "$out/$name"-*/ | head -1)")
  labels+=(--label "$name")  # the variant's own name, not the settings that differ
done
mkdir -p "$out/compare"
printf '%s\n' "${runs[@]}" > "$out/compare/runs.txt"
$dl report "${runs[@]}" --out "$out/compare" "${labels[@]}"

#!/usr/bin/env bash
# Stages what a protocol study has finished so far, for a commit: each finished run's small
# records (results.json, config.json, harness.json; checkpoints and event files stay here, they
# are git-ignored), the study's runs.csv / report.md / figures rewritten from them, and
# RESULTS.md with the generated blocks of README and docs/.
#   scripts/snapshot_study.sh frontier_deep frontier_hourglass && git commit -m "..."
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for s in "$@"; do
  dir="results/$s"
  "$PY" -m arsp_jax.study --protocol="$dir/protocol.json" --workdir="$dir" --report_only
  for d in "$dir"/runs/*/; do
    [ -f "$d/results.json" ] || continue
    for f in results.json config.json harness.json harness.recorded.json results.recorded.json; do
      [ -f "$d/$f" ] && git add "$d/$f"
    done
  done
  for f in protocol.json study.json runs.csv report.md frontier.png pareto.png keep_ratios.png; do
    [ -f "$dir/$f" ] && git add "$dir/$f"
  done
done
"$PY" -m arsp_jax.study.results
git add RESULTS.md README.md docs

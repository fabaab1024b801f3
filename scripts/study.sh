#!/usr/bin/env bash
# Runs one comparison study with several harness processes at once (they share the study's
# workdir; each run is claimed with a lock file), then writes the study's report.
#
#   scripts/study.sh WORKERS <arguments of python -m arsp_jax.study>
#
# e.g. scripts/study.sh 4 --workdir=studies/fmnist_mlp --seeds=3
# On one GPU, several workers keep it busy (small models leave it idle between steps);
# on a 2-core CPU use 1.
set -euo pipefail
workers=${1:?usage: scripts/study.sh WORKERS <study args>}
shift
PY=${PY:-python}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
pids=()
for i in $(seq 1 "$workers"); do
  "$PY" -m arsp_jax.study "$@" > >(sed "s/^/[w$i] /") 2>&1 &
  pids+=($!)
  sleep 2
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
"$PY" -m arsp_jax.study "$@" --report_only
exit $status

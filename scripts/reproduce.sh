#!/usr/bin/env bash
# Reproduce rows of the experiments table, each row its own sweep, and render each row's report into
# $RESULTS_DIR/<row>/ (default docs/results/<row>/).
#   scripts/reproduce.sh exp1                              # row 1 (about 2-5 minutes on a 2-core CPU)
#   scripts/reproduce.sh exp2,exp3 hardware=cpu
#   RUNS_DIR=~/shakegpt-runs scripts/reproduce.sh exp4     # keep long runs outside the work tree
# Extra arguments are Hydra overrides for every row. The runs stay in $RUNS_DIR/<row>/ (default
# outputs/reproduce/<row>/). Running the same command again resumes: finished rows are skipped, interrupted
# ones continue from their last checkpoint to the same numbers.
set -euo pipefail
rows=${1:?usage: scripts/reproduce.sh exp1[,exp2,...] [overrides...]}
shift
runs_dir=${RUNS_DIR:-outputs/reproduce}
results_dir=${RESULTS_DIR:-docs/results}
IFS=, read -ra names <<<"$rows"
for row in "${names[@]}"; do
    python -m shakegpt.train -m "experiment=$row" "hydra.sweep.dir=$runs_dir/$row" resume=true "$@"
    python -m shakegpt.report "$runs_dir/$row" --out "$results_dir/$row"
done

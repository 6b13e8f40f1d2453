#!/usr/bin/env bash
# Reproduce rows of the experiments table and render their report into docs/results/.
#   scripts/reproduce.sh exp1                       # row 1 (about 5 minutes on a 2-core CPU)
#   scripts/reproduce.sh exp2,exp3,exp4,exp5 hardware=cuda
# Extra arguments are Hydra overrides for every row. The runs stay in outputs/reproduce/<rows>/.
set -euo pipefail
rows=${1:?usage: scripts/reproduce.sh exp1[,exp2,...] [overrides...]}
shift
name=${rows//,/_}
sweep="outputs/reproduce/$name"
python -m shakegpt.train -m "experiment=$rows" "hydra.sweep.dir=$sweep" "$@"
python -m shakegpt.report "$sweep" --out "docs/results/$name"

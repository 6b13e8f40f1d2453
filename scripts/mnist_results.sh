#!/usr/bin/env bash
# Train both MNIST models on all 60,000 training images and record their test accuracy and time.
#   scripts/mnist_results.sh            -> docs/results/mnist.md
set -euo pipefail
out=docs/results/mnist.md
mkdir -p "$(dirname "$out")"
{
  echo "# MNIST, full data, default settings"
  echo
  echo "Machine: $(nproc) CPU cores; torch $(python -c 'import torch; print(torch.__version__)')."
  echo
  for model in numpy torch; do
    line=$(python -m mnist.train "model=$model" "$@" | grep "model: test accuracy")
    echo "- \`python -m mnist.train model=$model\`: $line"
  done
} | tee "$out"

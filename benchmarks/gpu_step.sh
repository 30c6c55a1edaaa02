#!/usr/bin/env bash
# The GPU step benchmark: base, batch 64, 224 px, bf16, eager then torch.compile; prints samples/s,
# MFU against the GPU's bf16 peak and peak memory (benchmarks/gpu_step.py). Stops after 5 minutes.
#   benchmarks/gpu_step.sh                         # figures on stdout, JSON in runs/gpu_step.json
#   benchmarks/gpu_step.sh --modes eager           # extra arguments go to gpu_step.py
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
exec timeout 300 python benchmarks/gpu_step.py --json runs/gpu_step.json "$@"

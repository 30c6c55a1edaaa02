#!/usr/bin/env bash
# Pre-train on one or several nodes with torchrun's c10d rendezvous. Run the SAME command on every
# node (torchrun numbers the nodes itself); --out and the data must be on a filesystem every node sees.
#
#   NNODES=2 RDZV_ENDPOINT=node01:29500 examples/launch_torchrun.sh --out /shared/runs/base \
#       --config base data.dataset=/shared/data/packed data.num_workers=8 data.batch_size=64 run.precision=bf16
#   ... run.parallel=fsdp                     # shard weights, gradients and AdamW state over the ranks
#   examples/launch_torchrun.sh --out /shared/runs/base --resume   # continue from the newest checkpoint
#
# Environment: NNODES (default 1), GPUS_PER_NODE (default: the GPUs nvidia-smi lists, else 1),
# RDZV_ENDPOINT host:port of any one node reachable from all (default localhost:29500),
# RDZV_ID a job id shared by the nodes (default mpma). Extra arguments go to `mpma pretrain`.
set -euo pipefail

NNODES=${NNODES:-1}
if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    GPUS_PER_NODE=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    (( GPUS_PER_NODE > 0 )) || GPUS_PER_NODE=1
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # per process; the data workers are separate processes

exec torchrun \
    --nnodes "$NNODES" \
    --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv-backend c10d \
    --rdzv-endpoint "${RDZV_ENDPOINT:-localhost:29500}" \
    --rdzv-id "${RDZV_ID:-mpma}" \
    -m mpma.cli pretrain "$@"

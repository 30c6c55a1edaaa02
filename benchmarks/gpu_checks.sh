#!/usr/bin/env bash
# Every GPU path in one command, sized for a GPU lent for a few minutes (~5-6 min on one H200).
# Each check runs under its own time limit and writes its own log, so one failure does not hide the
# others; a summary line per check (exit status, seconds) is printed at the end.
#
#   benchmarks/gpu_checks.sh [OUT_DIR]            # default runs/gpu_checks; needs CUDA
#   DEVICE=cpu STEPS_SCALE=0 benchmarks/gpu_checks.sh /tmp/smoke   # a smoke run of the script itself
#   ONLY="cli torchrun" benchmarks/gpu_checks.sh                   # some checks only
#
# The checks, in order of importance:
#   env         GPU, driver, torch/transformers versions, host CPU
#   gpu_step    benchmarks/gpu_step.py: base, batch 64, 224 px, bf16, eager and torch.compile
#               (samples/s, MFU against the GPU's dense bf16 peak, peak memory) -> gpu_step.json
#   mfu_levers  the two untried levers for the host-bound base step (7.4% MFU on an H200, 2026-12-04):
#               a 4x larger batch (256, eager) and CUDA graphs (mode cudagraphs: run.compile_mode=
#               reduce-overhead, batch 64) -> mfu_batch256.json, mfu_cudagraphs.json
#   gpu_step_checkpointing   the same, eager, with run.activation_checkpointing=true
#   cli         `mpma pretrain` on the GPU (bf16 autocast, 4 data workers, pinned memory) to step 200,
#               resumed to 300, then `mpma finetune vqa` and `mpma finetune retrieval` from it (1 epoch)
#   torchrun    examples/launch_torchrun.sh (c10d rendezvous) with run.compile=true, resumed from its
#               checkpoint. With one GPU torchrun starts one process, which trains unwrapped: DDP and
#               FSDP over NCCL need two GPUs (NCCL refuses two ranks on one device); both are tested on
#               CPU with gloo (tests/engine/test_ddp.py, test_fsdp.py)
#   data        benchmarks/data_loading.py: raw files vs packed shards with 8 workers
#   pytest      the test suite on a machine where CUDA is available (tests that pick `auto` devices
#               take the GPU)
set -u
OUT_DIR=${1:-runs/gpu_checks}
DEVICE=${DEVICE:-cuda}
STEPS_SCALE=${STEPS_SCALE:-1}  # 0: the smallest runs that still exercise each path (smoke test)
ONLY=${ONLY:-}                  # e.g. ONLY="cli torchrun": run only these checks
ARCHIVE=${ARCHIVE:-}            # a .tar.gz of OUT_DIR, rewritten after each check (kept if a later one hangs)
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)  # both paths as given from the caller's folder, before the cd below
[[ -z "$ARCHIVE" ]] || ARCHIVE=$(realpath -m "$ARCHIVE")
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
SUMMARY=()
export OUT_DIR DEVICE STEPS_SCALE WORK

check() {  # check NAME LIMIT_S COMMAND...: run COMMAND under `timeout`, its output in OUT_DIR/NAME.log
    local name=$1 limit=$2 started rc
    shift 2
    [[ -z "$ONLY" || " $ONLY " == *" $name "* ]] || return 0
    echo "== $name (limit ${limit} s)"
    started=$(date +%s)
    timeout "$limit" bash -c '"$@"' "$name" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    SUMMARY+=("$name: exit $rc, $(($(date +%s) - started)) s")
    tail -n 30 "$OUT_DIR/$name.log"
    echo "== $name: exit $rc"
    printf '%s\n' "${SUMMARY[@]}" >"$OUT_DIR/summary.txt"
    [[ -z "$ARCHIVE" ]] || tar czf "$ARCHIVE" -C "$OUT_DIR" .
}

env_report() {
    nvidia-smi || true
    python3 - <<'EOF'
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__)
print("cuda available", torch.cuda.is_available(), "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
EOF
    grep -m1 "model name" /proc/cpuinfo; nproc
}

cli_runs() {
    set -e
    local steps=$((STEPS_SCALE ? 300 : 6)) half=$((STEPS_SCALE ? 200 : 4)) run="$WORK/pretrain"
    local common=(run.device="$DEVICE" run.precision=bf16 data.num_workers=4 run.eval_size=64
                  run.checkpoint_every=$((half / 2)))
    python3 -m mpma.cli pretrain --out "$run" optim.steps="$half" "${common[@]}"
    python3 -m mpma.cli pretrain --out "$run" --resume optim.steps="$steps" "${common[@]}"
    python3 - "$run" <<'EOF'
import json, sys
from pathlib import Path
lines = [json.loads(l) for l in (Path(sys.argv[1]) / "log.jsonl").read_text().splitlines() if l.strip()]
steps = [l["step"] for l in lines if "loss" in l and "step" in l]
print("logged train steps:", len(steps), "first", steps[:1], "last", steps[-1:], "duplicates", len(steps) - len(set(steps)))
print(json.dumps(json.loads((Path(sys.argv[1]) / "summary.json").read_text()), indent=1)[:3000])
EOF
    # the fine-tunes check the paths, not the scores: one epoch of a few hundred questions/pairs
    local size=$((STEPS_SCALE ? 512 : 40))
    local small=(data.train_size=$size data.val_size=$((size / 4)) data.test_size=$((size / 4)) epochs=1)
    python3 -m mpma.cli finetune vqa --init "$run" --out "$WORK/vqa" run.device="$DEVICE" run.precision=bf16 "${small[@]}"
    python3 -m mpma.cli finetune retrieval --init "$run" --out "$WORK/retrieval" run.device="$DEVICE" run.precision=bf16 "${small[@]}"
}

torchrun_runs() {
    set -e
    local steps=$((STEPS_SCALE ? 60 : 4)) half=$((STEPS_SCALE ? 30 : 2))
    local common=(run.device="$DEVICE" run.precision=bf16 run.eval_size=32 run.checkpoint_every="$half")
    local compile=(run.compile=true)  # the first launch compiles; the resumed one runs eagerly (saves a compile)
    ((STEPS_SCALE)) || compile=()     # smoke test: compiling even tiny takes minutes on 2 CPU cores
    GPUS_PER_NODE=1 examples/launch_torchrun.sh --out "$WORK/torchrun" optim.steps="$half" "${common[@]}" "${compile[@]}"
    GPUS_PER_NODE=1 examples/launch_torchrun.sh --out "$WORK/torchrun" --resume optim.steps="$steps" "${common[@]}"
    tail -n 3 "$WORK/torchrun/log.jsonl"
}

mfu_levers() {  # a larger batch, then CUDA graphs; each writes its JSON as soon as it finishes
    if ((STEPS_SCALE)); then
        python3 benchmarks/gpu_step.py --device "$DEVICE" --modes eager --batch 256 --steps 5 \
            --json "$OUT_DIR/mfu_batch256.json" || return
        python3 benchmarks/gpu_step.py --device "$DEVICE" --modes cudagraphs --json "$OUT_DIR/mfu_cudagraphs.json"
    else
        python3 benchmarks/gpu_step.py --device "$DEVICE" --preset tiny --steps 2 --warmup 1 --batch 8 --modes eager \
            --json "$OUT_DIR/mfu_batch256.json" || return
        python3 benchmarks/gpu_step.py --device "$DEVICE" --preset tiny --steps 2 --warmup 2 --batch 4 \
            --modes cudagraphs --json "$OUT_DIR/mfu_cudagraphs.json"
    fi
}

export -f env_report cli_runs torchrun_runs mfu_levers
if ((STEPS_SCALE)); then
    step_args=(--json "$OUT_DIR/gpu_step.json")
else
    step_args=(--preset tiny --steps 2 --warmup 1 --batch 4 --modes eager --json "$OUT_DIR/gpu_step.json")
fi
check env 60 env_report
check gpu_step 240 python3 benchmarks/gpu_step.py --device "$DEVICE" "${step_args[@]}"
check mfu_levers 240 mfu_levers
check gpu_step_checkpointing 120 python3 benchmarks/gpu_step.py --device "$DEVICE" "${step_args[@]/gpu_step.json/gpu_step_checkpointing.json}" \
    --modes eager --overrides run.activation_checkpointing=true
check cli 150 cli_runs
check torchrun 150 torchrun_runs
check data 60 python3 benchmarks/data_loading.py --n $((STEPS_SCALE ? 300 : 20)) --workers $((STEPS_SCALE ? 8 : 2))
if ((STEPS_SCALE)); then
    check pytest 180 python3 -m pytest -q -n 12 --maxprocesses=12 -p no:cacheprovider --durations=5
fi
rm -rf "$WORK"
cat "$OUT_DIR/summary.txt" 2>/dev/null || echo "no check ran: ONLY=\"$ONLY\" names none of them"

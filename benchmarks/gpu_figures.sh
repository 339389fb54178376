#!/usr/bin/env bash
# The GPU figures of the throughput work, on one CUDA machine, stage by stage:
#   tests     the CUDA-only tests (a training step never waits for the device)
#   augment   device augmentation per step, eager and compiled, and their agreement
#   updates   the SGD step (foreach and fused) and the EMA update: host launch time and
#             completed time per update
#   train     end-to-end steps/s, data wait, peak memory and the projected 2^20-step time of
#             the paper config (CIFAR-10, WRN-28-2, B 64, mu 7): CPU and device augmentation,
#             fp32 and bf16, eager and compiled
#   compiled  the same for the compiled model with CUDA graphs (trainer.compile_mode=reduce_overhead)
#   autotune  the same, compiled with trainer.compile_mode=max_autotune (long compiles)
#   step      the step split into forward/backward/optimizer/EMA beside the port's step
#   accuracy  fp32 against bf16 autocast over the first minutes of a paper-length run (same
#             seeds, same schedule, evaluated every EVAL_EVERY steps)
#
# Usage: bash benchmarks/gpu_figures.sh DATA RESULTS
#   DATA     CIFAR-10 as an image folder (train/<class>/*, test/<class>/*), e.g. the JPEGs
#            of shared/data unpacked; read through dataset=folder
#   RESULTS  folder for the JSON files, run folders and logs
# Knobs (environment): STAGES (default: all, in the order above), WORKERS (loader workers
# with CPU augmentation, default 12), TRAIN_STEPS (steps per end-to-end figure, default 600),
# ACCURACY_SECONDS (wall time of each accuracy run, default 140), EVAL_EVERY (default 500),
# SEEDS (default "1 2"), DEVICE (default cuda), EXTRA (more overrides for every stage, e.g. a
# smaller model for a dry run on the CPU).
# Each run has its own time limit, so one failing stage still leaves the others' figures.
set -uo pipefail
DATA=${1:?usage: bash benchmarks/gpu_figures.sh DATA RESULTS}
RESULTS=${2:?usage: bash benchmarks/gpu_figures.sh DATA RESULTS}
STAGES=${STAGES:-"tests augment updates train compiled autotune step accuracy"}
WORKERS=${WORKERS:-12}
TRAIN_STEPS=${TRAIN_STEPS:-600}
ACCURACY_SECONDS=${ACCURACY_SECONDS:-140}
EVAL_EVERY=${EVAL_EVERY:-500}
SEEDS=${SEEDS:-"1 2"}
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ] && ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device is visible; these are GPU figures (for a dry run on the CPU: DEVICE=cpu with a small model in EXTRA)" >&2
  exit 2
fi
read -r -a EXTRA <<< "${EXTRA:-}"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
PAPER=(dataset=folder "dataset.root=$DATA" ssl.num_labeled=4000 "trainer.device=$DEVICE" "${EXTRA[@]}")
COMPILED=(trainer.compile=true trainer.compile_mode=reduce_overhead)

stage() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

train_figure() {  # name, overrides...
  local name=$1; shift
  timeout "${TRAIN_TIMEOUT:-180}" python3 -m fixmatch.bench train "${PAPER[@]}" "$@" --steps "$TRAIN_STEPS" \
    --json "$RESULTS/train-$name.json"
}

run_tests() {
  stage "CUDA-only tests"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_step_variants.py tests/test_resident.py \
    -k "cuda or gpu"
}

run_augment() {
  stage "device augmentation, eager and compiled"
  timeout 120 python3 benchmarks/device_augment_speed.py --device "$DEVICE"
}

run_updates() {
  stage "weight updates: SGD step and EMA update"
  timeout 120 python3 benchmarks/update_cost.py --device "$DEVICE"
}

run_train() {
  stage "end to end (bench train)"
  train_figure cpu-aug-bf16 trainer.precision=bf16 trainer.augment_on=cpu "trainer.num_workers=$WORKERS"
  train_figure device-aug-bf16 trainer.precision=bf16 trainer.augment_on=device trainer.num_workers=4
  train_figure device-aug-fp32 trainer.precision=fp32 trainer.augment_on=device trainer.num_workers=4
  train_figure device-aug-bf16-compiled trainer.precision=bf16 trainer.augment_on=device \
    trainer.num_workers=4 trainer.compile=true
}

run_compiled() {
  stage "end to end, compiled with CUDA graphs (bench train)"
  train_figure device-aug-bf16-cudagraphs trainer.precision=bf16 trainer.augment_on=device \
    trainer.num_workers=4 "${COMPILED[@]}"
  train_figure cpu-aug-bf16-cudagraphs trainer.precision=bf16 trainer.augment_on=cpu \
    "trainer.num_workers=$WORKERS" "${COMPILED[@]}"
}

run_autotune() {
  stage "end to end, compiled with autotuned kernels and CUDA graphs (bench train)"
  TRAIN_TIMEOUT=420 train_figure cpu-aug-bf16-max-autotune trainer.precision=bf16 trainer.augment_on=cpu \
    "trainer.num_workers=$WORKERS" trainer.compile=true trainer.compile_mode=max_autotune
}

run_step() {
  stage "training step (bench step)"
  for precision in fp32 bf16; do
    timeout 120 python3 -m fixmatch.bench step "${PAPER[@]}" "trainer.precision=$precision" \
      --steps 40 --rounds 1 --json "$RESULTS/step-$precision.json"
  done
  timeout 150 python3 -m fixmatch.bench step "${PAPER[@]}" trainer.precision=bf16 "${COMPILED[@]}" \
    --steps 40 --rounds 1 --json "$RESULTS/step-bf16-cudagraphs.json"
}

run_accuracy() {
  stage "accuracy: fp32 and bf16 side by side, ${ACCURACY_SECONDS}s each"
  for precision in fp32 bf16; do
    for seed in $SEEDS; do
      # SIGTERM ends a run as a preemption: checkpoint, status "preempted", evaluations kept.
      timeout -s TERM "$ACCURACY_SECONDS" python3 run.py "${PAPER[@]}" "seed=$seed" \
        "trainer.precision=$precision" trainer.augment_on=device trainer.num_workers=2 \
        "trainer.eval_every_steps=$EVAL_EVERY" trainer.progress_bar=log \
        "hydra.run.dir=$RESULTS/accuracy/$precision/$seed" > "$RESULTS/accuracy-$precision-$seed.log" 2>&1 &
    done
  done
  wait
  python3 - "$RESULTS/accuracy" <<'PY'
import json, sys
from pathlib import Path
curves = {}
for path in sorted(Path(sys.argv[1]).glob("*/*/metrics.jsonl")):
    precision, seed = path.parts[-3], path.parts[-2]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    curves[(precision, seed)] = {row["step"]: row["eval/top1_ema"] for row in rows if "eval/top1_ema" in row}
steps = sorted(set.intersection(*(set(curve) for curve in curves.values()))) if curves else []
print("EMA top-1 (%) at step:", steps)
for (precision, seed), curve in sorted(curves.items()):
    print(f"{precision} seed {seed}: " + "  ".join(f"{curve[s]:.2f}" for s in steps))
PY
}

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
nproc
for name in $STAGES; do
  "run_$name"
done
stage "done"

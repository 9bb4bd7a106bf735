#!/usr/bin/env bash
# The GPU check, in one call of under 8 minutes on one GPU: install the project, run the tests
# marked `cuda` (bf16 training, fp16 with the loss scaler across both optimizers, compiled vs
# eager, resume with compile on), then the step-throughput benchmark (plain loop, our eager
# step, our compiled step; eye and hand configs), then the gaze estimator trained with and
# without DeepSpeed (ZeRO-2, bf16: time per step, peak memory; skipped with a note where
# deepspeed is not installed), then the `hands` preset trained at 224x224 for a few hundred
# steps in bf16 with and without channels-last (images/s over the adversarial phase,
# read from its TensorBoard log by benchmarks/scaling.py's measure_one).
# Logs and JSON go to $OUT.
#
#   benchmarks/gpu_check.sh                 # on a GPU machine, from the repository root
#   benchmarks/gpu_check.sh --cpu-dry-run   # the same steps on the CPU at tiny sizes, so the
#                                           # script cannot fail for a trivial reason on its
#                                           # first (scarce) GPU call
#
# On the device tool's machine nothing can be downloaded: the project installs without its
# dependencies (that image has them, but webdataset, which only shard tests import), and
# falls back to PYTHONPATH if even that fails.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--cpu-dry-run" ]]; then DRY=1; fi
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
started=$(date +%s)
status=0
step() { echo "== $(( $(date +%s) - started ))s: $*"; }

step "install"
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
    echo "pip install failed (see install.log); using PYTHONPATH"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

step "environment"
python3 - <<'EOF' 2>&1 | tee "$OUT/environment.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", f"cc {p.major}.{p.minor}")
else:
    print("no GPU: CPU dry run")
EOF

if [[ $DRY == 1 ]]; then
    export DISTSIM_TEST_DEVICE=cpu
    BENCH=(--configs eyes-cpu --batches 8 --precisions fp32 --iters 1 --warmup 2
           --compiled-batches 8 --device cpu)
    ESTIMATOR=(--steps 3 --warmup 1 --batch-size 8 --width-mult 0.25)
    HAND_RUN=(hands-cpu '{"builtin_count": 64, "pretrain_r_steps": 2, "pretrain_d_steps": 2,
              "steps": 6, "log_every": 2}')
elif python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    # Compiled rows only at batch 512 for the eyes (each compile is tens of seconds) and for
    # the hand preset's own batch; hands in bf16 with and without channels-last.
    BENCH=(--configs eyes --batches 32,128,512 --precisions fp32,bf16 --iters 20 --warmup 3
           --compiled-batches 512)
    HANDS=(--configs hands --batches 16 --precisions bf16 --iters 5 --warmup 2
           --compiled-batches 16)
    ESTIMATOR=(--steps 300 --warmup 20 --batch-size 512)
    # 512 crops a domain render in seconds; 300 adversarial steps after a short pretraining.
    HAND_RUN=(hands '{"builtin_count": 512, "pretrain_r_steps": 100, "pretrain_d_steps": 50,
              "steps": 300, "mixed_precision": "bf16", "log_every": 25}')
else
    echo "no GPU here: run with --cpu-dry-run, or on the GPU machine"
    exit 2
fi

step "tests marked cuda"
python3 -m pytest -m cuda tests/training/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
test "${PIPESTATUS[0]}" -eq 0 || status=1

step "step throughput"
python3 benchmarks/step_throughput.py "${BENCH[@]}" --out "$OUT/step_throughput.json" \
    2>&1 | tee "$OUT/step_throughput.log"
test "${PIPESTATUS[0]}" -eq 0 || status=1
if [[ $DRY == 0 ]]; then
    for cl in --no-channels-last --channels-last; do
        python3 benchmarks/step_throughput.py "${HANDS[@]}" "$cl" \
            --out "$OUT/step_throughput_hands${cl#--}.json" 2>&1 | tee -a "$OUT/step_throughput.log"
        test "${PIPESTATUS[0]}" -eq 0 || status=1
    done
    python3 benchmarks/step_throughput.py --configs eyes --batches 512 --precisions bf16 \
        --modes eager,compiled --compiled-batches 512 --channels-last --compile-mode reduce-overhead \
        --iters 20 --out "$OUT/step_throughput_cudagraphs.json" 2>&1 | tee -a "$OUT/step_throughput.log"
    test "${PIPESTATUS[0]}" -eq 0 || status=1
fi

step "gaze estimator with and without DeepSpeed"
if ! python3 -c 'import deepspeed, transformers' >/dev/null 2>&1; then
    echo "skipped: deepspeed or transformers not installed (pip install '.[deepspeed]')" \
        | tee "$OUT/estimator_deepspeed.log"
else
    for mode in plain deepspeed; do
        python3 benchmarks/estimator_deepspeed.py --mode "$mode" "${ESTIMATOR[@]}" \
            --out "$OUT/estimator_$mode.json" 2>&1 | tee -a "$OUT/estimator_deepspeed.log"
        test "${PIPESTATUS[0]}" -eq 0 || status=1
    done
fi

step "hands preset training, with and without channels-last"
# benchmarks/scaling.py's measure_one: images/s over the adversarial phase after its first log.
python3 - "${HAND_RUN[@]}" "$OUT/hands-cache" <<'EOF' 2>&1 | tee "$OUT/hands_run.txt"
import json, os, sys
from pathlib import Path
from benchmarks.scaling import measure_one
preset, overrides = sys.argv[1], json.loads(sys.argv[2])
overrides |= {"realism_images": 0, "image_every": 100, "ckpt_every": 100_000, "num_workers": 2}
for channels_last in (False, True):
    run = measure_one(preset, overrides | {"channels_last": channels_last}, 1,
                      os.cpu_count() or 1, Path(sys.argv[3]))
    print(f"hands run {preset}, channels_last {channels_last}: "
          f"{run['images_per_second']:.1f} images/s, {run['wall_s']:.0f} s wall")
EOF
test "${PIPESTATUS[0]}" -eq 0 || status=1

step "done (status $status); files in $OUT"
ls -l "$OUT"
exit $status

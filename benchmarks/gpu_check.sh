#!/usr/bin/env bash
# The GPU check, in one call of under 8 minutes on one GPU: install the project, run the tests
# marked `cuda` (bf16 training, fp16 with the loss scaler across both optimizers, compiled vs
# eager, resume with compile on), then the step-throughput benchmark (plain loop, our eager
# step, our compiled step; eye and hand configs), then the gaze estimator trained with and
# without DeepSpeed (ZeRO-2, bf16: time per step, peak memory; skipped with a note where
# deepspeed is not installed), then the `hands` preset trained at 224x224 for a few hundred
# steps in bf16 with and without channels-last (issue 12; images/s from its TensorBoard log).
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
    HAND_RUN=(--preset hands-cpu --builtin-count 64 --pretrain-r-steps 2 --pretrain-d-steps 2
              --steps 6 --log-every 2)
elif python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    # Compiled rows only at batch 512 for the eyes (each compile is tens of seconds) and for
    # the hand preset's own batch; hands in bf16 with and without channels-last.
    BENCH=(--configs eyes --batches 32,128,512 --precisions fp32,bf16 --iters 20 --warmup 3
           --compiled-batches 512)
    HANDS=(--configs hands --batches 16 --precisions bf16 --iters 5 --warmup 2
           --compiled-batches 16)
    ESTIMATOR=(--steps 300 --warmup 20 --batch-size 512)
    # 512 crops a domain render in seconds; 300 adversarial steps after a short pretraining.
    HAND_RUN=(--preset hands --builtin-count 512 --pretrain-r-steps 100 --pretrain-d-steps 50
              --steps 300 --mixed-precision bf16 --log-every 25)
else
    echo "no GPU here: run with --cpu-dry-run, or on the GPU machine"
    exit 2
fi

step "tests marked cuda"
python3 -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
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
for cl in --no-channels-last --channels-last; do
    run="$OUT/hands-run${cl#--}"
    python3 distsim/train.py "${HAND_RUN[@]}" "$cl" --realism-images 0 --image-every 100 \
        --ckpt-every 100000 --num-workers 2 --run-dir "$run" --cache-dir "$OUT/hands-cache" \
        >"$run.log" 2>&1
    test $? -eq 0 || { status=1; tail -5 "$run.log"; continue; }
    python3 - "$run" "$cl" <<'EOF' 2>&1 | tee -a "$OUT/hands_run.txt"
import statistics, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(sys.argv[1] + "/tensorboard", size_guidance={"scalars": 0})
events.Reload()
rates = [e.value for e in events.Scalars("images_per_second")]
late = rates[len(rates) // 2 :]  # past pretraining and the first compile or warm-up
print(f"hands run {sys.argv[2]}: {len(rates)} logs, images/s median of the last half "
      f"{statistics.median(late):.1f} (all: {', '.join(f'{r:.0f}' for r in rates)})")
EOF
done

step "done (status $status); files in $OUT"
ls -l "$OUT"
exit $status

#!/usr/bin/env bash
# The project's GPU check, one command sized for a ~10-minute slot on one CUDA GPU:
#   1. guided masking, vectorised (torch backend on the GPU) vs the original per-sample loop,
#      batch 256, N = 196;
#   2. one pre-training step of ViT-B/16 at 224, batch 256, bf16 autocast: MAE vs guided masking
#      vs VasoMIM (consistency loss through the folded UNeXt-S), ms/step, img/s and
#      torch.cuda.max_memory_allocated per arm;
#   3. anatomy extraction on the GPU (batched torch path) vs the reference pipeline.
# Every output also lands in $OUT (default: gpu-check/) for BENCHMARKS.md.
#
#   OUT=gpu-check bash benchmarks/gpu_check.sh            # from the repository root
#   DEVICE=cpu STEP_BATCH=2 SIZE=tiny bash benchmarks/gpu_check.sh   # rehearsal without a GPU
#
# The package need not be installed: src/ goes on PYTHONPATH. torch, timm, numpy, scipy,
# scikit-image, opencv-python-headless, pillow, pyyaml, tqdm and pydantic must be importable
# (pydantic is the one a bare PyTorch image tends to lack: carry its wheels).
set -uo pipefail
out="${OUT:-gpu-check}"
device="${DEVICE:-cuda}"
size="${SIZE:-base}"
step_batch="${STEP_BATCH:-256}"
py="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

run() {  # run NAME TIMEOUT CMD...: tee into $out/NAME.txt, remember a failure, go on
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee "$out/$name.txt"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "!! $name failed (exit $rc)" | tee -a "$out/$name.txt"
        status=1
    fi
}

run environment 60 "$py" -c "
import platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu', p.name, f'{p.total_memory / 2**30:.0f} GiB', 'bf16', torch.cuda.is_bf16_supported())
import vasomim, timm, pydantic, skimage, cv2
print('vasomim', vasomim.__version__, '| timm', timm.__version__, '| pydantic', pydantic.__version__)
"
run masking 150 "$py" benchmarks/bench_pretrain.py --device "$device" --sections masking --repeats 50
run step 360 "$py" benchmarks/bench_pretrain.py --device "$device" --sections step --size "$size" \
    --step-batch-size "$step_batch" --amp bf16 --warmup 3 --step-repeats 5
run anatomy 150 "$py" benchmarks/bench_anatomy.py --device "$device" --synthetic 32 --batch-size 16 --workers 8
exit "$status"

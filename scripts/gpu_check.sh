#!/usr/bin/env bash
# Prove the GPU path on an NVIDIA machine and record it: bash scripts/gpu_check.sh [OUT]
#
# Uses only what is installed (no package index needed): $PYTHON (default: .venv/bin/python when
# present, else python3) with fuse installed or importable from this checkout. Each step records
# ok / failed / skipped with the reason in OUT/steps.jsonl and its output in OUT/logs/, and the
# script goes on; at the end OUT/gpu_check.json and OUT/gpu_check.md hold the whole report
# (environment, steps, TensorRT parity rows, TensorRT and ONNX Runtime CUDA latency at batch 1/8/32).
# Exit status: 0 when no step failed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
: >"$OUT/steps.jsonl"
SHARED=${FUSE_SHARED_DATA:-$ROOT/../shared/data}
TRAIN_STEPS=${GPU_CHECK_EPOCHS:-1}

# record NAME STATUS SECONDS REASON [LOG]: one JSON line in steps.jsonl.
record() {
  "$PYTHON" - "$OUT/steps.jsonl" "$1" "$2" "$3" "$4" "${5:-}" <<'PY'
import json, sys
path, name, status, seconds, reason, log = sys.argv[1:7]
with open(path, "a") as f:
    f.write(json.dumps({"name": name, "status": status, "seconds": float(seconds), "reason": reason or None, "log": log or None}) + "\n")
PY
}

# skip NAME REASON
skip() { echo "gpu_check: skipped $1: $2"; record "$1" skipped 0 "$2"; }

# cli MODULE ARGS...: a fuse command by its module (the console scripts may not be on PATH).
cli() { local module=$1; shift; "$PYTHON" -c "import sys; from $module import main; sys.argv[0] = '$module'; main()" "$@"; }

# step NAME COMMAND...: run it, keep its output, record ok/failed (the failure reason: last line of output).
step() {
  local name=$1; shift
  echo "gpu_check: $name"
  local start end rc
  start=$(date +%s.%N)
  "$@" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  local seconds
  seconds=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.2f", b-a}')
  local last
  last=$(grep -v '^\s*$' "$OUT/logs/$name.log" | tail -n 1 | cut -c1-300)
  if [[ $rc -eq 0 ]]; then
    record "$name" ok "$seconds" "$last" "logs/$name.log"
  else
    record "$name" failed "$seconds" "exit $rc: $last" "logs/$name.log"
  fi
}

has_module() { "$PYTHON" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" 2>/dev/null; }
has_provider() { "$PYTHON" -c "import onnxruntime, sys; sys.exit(0 if '$1' in onnxruntime.get_available_providers() else 1)" 2>/dev/null; }
cuda_ok() { "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gpu_check: no Python at $PYTHON; set PYTHON=/path/to/python" >&2
  exit 1
fi

step environment "$PYTHON" -m benchmarks.gpu_check env "$OUT/env.json"
MISSING=()
has_module torch || MISSING+=("PyTorch (pip install -c constraints.txt -e '.[train,gpu-cu12]')")
cuda_ok || MISSING+=("a CUDA GPU visible to PyTorch")
has_module tensorrt || MISSING+=("TensorRT (the gpu-cu12 / gpu-cu13 extra)")
has_module onnxruntime || MISSING+=("ONNX Runtime (the cpu or gpu-cu12 / gpu-cu13 extra)")
for item in "${MISSING[@]}"; do echo "gpu_check: missing: $item"; done

# 1. The GPU-marked tests.
if has_module pytest; then
  step gpu-tests "$PYTHON" -m pytest -q -m "gpu or tensorrt" tests -ra
else
  skip gpu-tests "pytest is not installed (the dev extra)"
fi

# 2. Two short CUDA training runs: fp16 with GradScaler, and bf16.
if [[ -d "$SHARED/harvard/ct-mri-train" ]]; then
  TRAIN_DATA="$SHARED/harvard/ct-mri-train"
else
  TRAIN_DATA="$OUT/phantoms"
  "$PYTHON" -c "from fuse_runtime.phantoms import write_phantoms; write_phantoms('$TRAIN_DATA')" >/dev/null 2>&1
fi
if cuda_ok; then
  for precision in fp16 bf16; do
    step "train-$precision" cli fuse_train.cli --task ct-mri --data "$TRAIN_DATA" --out "$OUT/train-$precision" \
      --device cuda --precision "$precision" --epochs "$TRAIN_STEPS" --max-pairs 16 --batch-size 8 --no-imagenet
  done
else
  skip train-fp16 "no CUDA GPU visible to PyTorch"
  skip train-bf16 "no CUDA GPU visible to PyTorch"
fi

# 3. fuse-export --fp16: model.onnx, model.fp16.onnx, model.plan and the parity rows.
CHECKPOINT=$(ls "$OUT"/train-fp16/best.pt "$OUT"/train-bf16/best.pt 2>/dev/null | head -n 1)
EXPORT="$OUT/export"
if [[ -z "$CHECKPOINT" ]]; then
  skip export "no checkpoint: both training runs failed or were skipped"
else
  step export cli fuse_export.cli --checkpoint "$CHECKPOINT" --out "$EXPORT" --fp16 --overwrite
fi

# 4. fuse-run with the plan in all three output formats, and with ONNX Runtime's GPU providers.
SCANS="$OUT/scans"
"$PYTHON" -c "from fuse_runtime.phantoms import write_phantoms; write_phantoms('$SCANS')" >/dev/null 2>&1
for format in png nifti dicom; do
  if [[ -f "$EXPORT/model.plan" ]]; then
    step "fuse-run-plan-$format" cli fuse_runtime.cli --engine "$EXPORT/model.plan" --in "$SCANS" \
      --out "$OUT/fused-plan-$format" --format "$format" --quiet
  else
    skip "fuse-run-plan-$format" "no $EXPORT/model.plan (TensorRT missing or the export failed)"
  fi
done
for provider in cuda tensorrt; do
  ort_name=$([[ $provider == cuda ]] && echo CUDAExecutionProvider || echo TensorrtExecutionProvider)
  if [[ ! -f "$EXPORT/model.onnx" ]]; then
    skip "fuse-run-ort-$provider" "no $EXPORT/model.onnx (the export failed or was skipped)"
  elif ! has_provider "$ort_name"; then
    skip "fuse-run-ort-$provider" "this onnxruntime has no $ort_name (install onnxruntime-gpu via the gpu-cu12 / gpu-cu13 extra)"
  else
    step "fuse-run-ort-$provider" cli fuse_runtime.cli --engine "$EXPORT/model.onnx" --in "$SCANS" \
      --out "$OUT/fused-ort-$provider" --provider "$provider" --quiet
  fi
done

# 5. Latency: the TensorRT and ONNX Runtime CUDA rows at batch 1/8/32.
if [[ -f "$EXPORT/model.onnx" ]] && cuda_ok; then
  args=(--onnx "$EXPORT/model.onnx" --batch 1,8,32 --backends onnxruntime-cuda,tensorrt --out "$OUT/latency" --quiet)
  [[ -f "$EXPORT/model.plan" ]] && args+=(--engine "$EXPORT/model.plan")
  step latency "$PYTHON" -m benchmarks.latency "${args[@]}"
else
  skip latency "no exported model.onnx or no CUDA GPU"
fi

"$PYTHON" -m benchmarks.gpu_check report "$OUT"
! grep -q '"status": "failed"' "$OUT/steps.jsonl"

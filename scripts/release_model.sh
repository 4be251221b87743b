#!/usr/bin/env bash
# Reproduce the release model from scratch:
#   vis-ir pretraining -> CT-MRI fine-tuning -> ONNX export with parity -> quality report on the test folder.
# Usage: scripts/release_model.sh [OUT]   (default OUT: release/<timestamp>; an existing OUT is refused)
# Data: $FUSE_SHARED_DATA, else ../shared/data beside the repository (vis-ir/ and harvard/ct-mri-{train,test}/).
# Expected wall time: 10 minutes on a 2-core Intel Xeon with AMX (bf16, measured with this recipe); the earlier,
# cheaper S8 loss took 13 on an AMD EPYC with AVX512-BF16 and 15-23 on 2 AVX2-only cores (fp32); minutes on a GPU.
# The recipe is configs/release/*.json; README "Release model" says what differs from the design and why.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${FUSE_SHARED_DATA:-../shared/data}"
OUT="${1:-release/$(date +%Y%m%d-%H%M%S)}"
PY="${PYTHON:-.venv/bin/python}"
BIN="$(dirname "$PY")"
for folder in "$DATA/vis-ir" "$DATA/harvard/ct-mri-train" "$DATA/harvard/ct-mri-test"; do
  [ -d "$folder" ] || { echo "release_model: $folder not found; set FUSE_SHARED_DATA to the data folder" >&2; exit 2; }
done
if [ -e "$OUT" ]; then
  echo "release_model: $OUT already exists; pass a new folder so no earlier run is overwritten" >&2
  exit 2
fi
if [ ! -x "$PY" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c constraints.txt -e '.[train,cpu]'
fi
mkdir -p "$OUT"
start=$(date +%s)
echo "== 1/4 vis-ir pretraining -> $OUT/visir"
"$BIN/fuse-train" --config configs/release/visir.json --data "$DATA/vis-ir" --out "$OUT/visir" --no-progress
echo "== 2/4 CT-MRI fine-tuning -> $OUT/ctmri"
"$BIN/fuse-train" --config configs/release/ctmri.json --data "$DATA/harvard/ct-mri-train" \
  --init "$OUT/visir/best.pt" --out "$OUT/ctmri" --no-progress
echo "== 3/4 ONNX export and parity -> $OUT/export"
"$BIN/fuse-export" --checkpoint "$OUT/ctmri/best.pt" --out "$OUT/export" --format onnx \
  --parity-data "$DATA/harvard/ct-mri-test"
echo "== 4/4 quality on the test folder (never used for training or selection)"
"$PY" -m benchmarks.quality --data "$DATA/harvard/ct-mri-test" --checkpoint "$OUT/ctmri/best.pt" --out "$OUT/quality"
"$PY" -m benchmarks.quality --data "$DATA/harvard/ct-mri-test" --engine "$OUT/export/model.onnx" --backend onnxruntime --out "$OUT/quality-onnx" --grid-pairs 0
minutes=$(( ($(date +%s) - start + 59) / 60 ))
echo "== done in about $minutes min: run $OUT/ctmri (history.png), export $OUT/export, report $OUT/quality/quality.md"

#!/usr/bin/env bash
# The main job end to end on the embedded phantoms, no arguments and no download:
# install -> write sample CT/MRI phantoms (PNG, DICOM series, NIfTI) -> train briefly with the release recipe's
# select head (it starts near a soft per-pixel maximum, so even a short run fuses both sources) -> export ONNX -> fuse.
# Each run writes into a fresh folder demo-out/<timestamp>, so nothing earlier is overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e '.[train,cpu]'
OUT="demo-out/$(date +%Y%m%d-%H%M%S)"
echo "== writing sample phantoms to $OUT/samples"
.venv/bin/python -m fuse_runtime.phantoms "$OUT/samples"
echo "== training a small model on them (the release recipe: select head, 6 short epochs at 96 px crops)"
.venv/bin/fuse-train --config configs/release/ctmri.json --data "$OUT/samples" --out "$OUT/run" --epochs 6 --warmup-epochs 1 --freeze-encoder-epochs 0
echo "== exporting to ONNX"
.venv/bin/fuse-export --checkpoint "$OUT/run/best.pt" --out "$OUT/export" --format onnx --parity-data "$OUT/samples"
echo "== fusing every sample pair (PNG, DICOM series, NIfTI)"
.venv/bin/fuse-run --engine "$OUT/export/model.onnx" --in "$OUT/samples" --out "$OUT/fused" --preview
echo "== done: fused images in $OUT/fused (report: $OUT/fused/report.json)"
echo "   Labelled CT | MRI | fused sheets: $OUT/fused/preview/ (bone from the CT and soft tissue from the MRI in one image)."
echo "   The demo model trains for a minute on six phantoms; for a real model, train on real pairs as the README shows."

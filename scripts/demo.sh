#!/usr/bin/env bash
# The main job end to end on the embedded phantoms, no arguments and no download:
# install -> write sample CT/MRI phantoms (PNG, DICOM series, NIfTI) -> train briefly -> export ONNX -> fuse.
# Each run writes into a fresh folder demo-out/<timestamp>, so nothing earlier is overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e '.[train,cpu]'
OUT="demo-out/$(date +%Y%m%d-%H%M%S)"
echo "== writing sample phantoms to $OUT/samples"
.venv/bin/python -m fuse_runtime.phantoms "$OUT/samples"
echo "== training a small model on them (2 epochs, 128 px crops)"
.venv/bin/fuse-train --task ct-mri --data "$OUT/samples" --out "$OUT/run" --epochs 2 --crop-size 128
echo "== exporting to ONNX"
.venv/bin/fuse-export --checkpoint "$OUT/run/best.pt" --out "$OUT/export" --format onnx --parity-data "$OUT/samples"
echo "== fusing every sample pair (PNG, DICOM series, NIfTI)"
.venv/bin/fuse-run --engine "$OUT/export/model.onnx" --in "$OUT/samples" --out "$OUT/fused" --preview
echo "== done: fused images in $OUT/fused (report: $OUT/fused/report.json)"
echo "   The demo model trains for two short epochs from scratch: it proves the chain, not fusion quality."
echo "   For a real model, train on real pairs as the README shows."

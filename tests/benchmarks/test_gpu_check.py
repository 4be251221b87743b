"""scripts/gpu_check.sh: its syntax, and the report its Python half writes (on the CPU)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_script_is_valid_bash_and_runs_every_step() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    for step in (
        "gpu-tests", "train-$precision", "export", "fuse-run-plan-$format", "fuse-run-ort-$provider", "latency"
    ):
        assert f"{step}" in text
    assert "for precision in fp16 bf16" in text and "for format in png nifti dicom" in text
    assert "--batch 1,8,32" in text
    assert "-m pip" not in text and not re.search(r"^\s*pip\b", text, re.M), "the script must not install anything"


def _steps(out: Path, steps: list[dict]) -> None:
    (out / gpu_check.STEPS_NAME).write_text("\n".join(json.dumps(s) for s in steps) + "\n")


def test_report_has_every_step_with_its_status_and_reason(tmp_path: Path) -> None:
    _steps(tmp_path, [
        {"name": "environment", "status": "ok", "seconds": 0.4, "reason": None, "log": "logs/environment.log"},
        {"name": "train-fp16", "status": "failed", "seconds": 12.0, "reason": "exit 1: CUDA out of memory",
         "log": "logs/train-fp16.log"},
        {"name": "fuse-run-ort-tensorrt", "status": "skipped", "seconds": 0,
         "reason": "this onnxruntime has no TensorrtExecutionProvider | x"},
    ])
    (tmp_path / gpu_check.STEPS_NAME).open("a").write("not json\n")
    (tmp_path / gpu_check.ENV_NAME).write_text(
        json.dumps({"gpus": ["0, NVIDIA H200, 580.1, 9.0, 143771 MiB"], "tensorrt": "missing: x"})
    )
    (tmp_path / "export").mkdir()
    (tmp_path / gpu_check.PARITY_PATH).write_text(json.dumps({"results": {
        "tensorrt-fp16": {
            "max_abs": 0.004, "mean_abs": 1e-4, "psnr_db": 61.2, "limits": {"max_abs": 0.02}, "passed": True
        },
    }}))
    (tmp_path / "latency").mkdir()
    rows = [
        {"backend": "tensorrt", "label": "TensorRT fp16", "batch": b, "status": "ok", "p50_ms": 2.5 * b,
         "slices_per_s": 400.0 / b}
        for b in (1, 8, 32)
    ] + [{"backend": "onnxruntime-cpu", "label": "ORT cpu", "batch": 8, "status": "ok"},
         {"backend": "onnxruntime-cuda", "label": "ORT CUDA", "batch": 4, "status": "ok"},
         {"backend": "onnxruntime-cuda", "label": "ORT CUDA", "batch": None, "status": "skipped", "reason": "no CUDA"}]
    (tmp_path / gpu_check.LATENCY_PATH).write_text(json.dumps({"rows": rows}))

    json_path, md_path = gpu_check.write_report(tmp_path)
    report = json.loads(json_path.read_text())
    assert report["counts"] == {"ok": 1, "failed": 2, "skipped": 1}
    assert [s["name"] for s in report["steps"]] == ["environment", "train-fp16", "fuse-run-ort-tensorrt", "line 4"]
    assert report["parity"][0]["candidate"] == "tensorrt-fp16" and report["parity"][0]["passed"] is True
    assert [(r["backend"], r["batch"]) for r in report["latency"]] == [
        ("tensorrt", 1), ("tensorrt", 8), ("tensorrt", 32), ("onnxruntime-cuda", None)
    ]
    md = md_path.read_text()
    assert "1 steps ok, 2 failed, 1 skipped" in md
    assert "| train-fp16 | failed | 12.0 | exit 1: CUDA out of memory |" in md
    assert "TensorrtExecutionProvider \\| x" in md, "a | in a reason must not break the table"
    assert "| tensorrt-fp16 | 4.00e-03 | 1.00e-04 | 61.2 | True |" in md
    assert "| TensorRT fp16 | 32 | ok | 80.00 | 12 |" in md and "NVIDIA H200" in md


def test_report_without_results_says_what_is_missing(tmp_path: Path) -> None:
    _steps(tmp_path, [{"name": "export", "status": "skipped", "seconds": 0, "reason": "no checkpoint"}])
    _, md_path = gpu_check.write_report(tmp_path)
    md = md_path.read_text()
    assert "env.json was not written" in md and "no export/parity.json" in md and "no latency/latency.json" in md


def test_environment_records_what_is_missing_here() -> None:
    env = gpu_check.environment()
    assert env["python"].count(".") == 2
    if shutil.which("nvidia-smi") is None:
        assert str(env["gpus"]).startswith("missing")
    if env.get("tensorrt", "").startswith("missing"):
        assert "gpu-cu12" in env["tensorrt"]

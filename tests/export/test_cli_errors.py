"""``fuse-export`` refuses what it cannot export with one message and exit status 2, writing nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fuse_export.config import MODEL_ONNX

BAD_ARGUMENTS = [
    # (extra arguments, words the message must contain)
    (["--image-size", "48"], ["multiple of 32", "48", "e.g. 64"]),
    (["--image-size", "100"], ["multiple of 32", "100"]),
    (["--image-size", "0"], ["multiple of 32"]),
    (["--opset", "13"], ["opset must be 17 or newer"]),
    (["--opset", "21"], ["up to 20"]),
    (["--batch", "8,1,32"], ["MIN <= OPT <= MAX"]),
    (["--batch", "1,8"], ["three integers MIN,OPT,MAX"]),
    (["--batch", "a,b,c"], ["three integers MIN,OPT,MAX"]),
    (["--workspace-gb", "0"], ["workspace_gb must be > 0"]),
    (["--parity-pairs", "0"], ["parity_pairs must be >= 1"]),
    (["--parity-data", "/nonexistent/pairs"], ["parity data folder not found", "/nonexistent/pairs"]),
]


def _error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one message, no traceback
    assert lines[0].startswith("fuse-export: error: ")
    return lines[0]


@pytest.mark.parametrize(("extra", "words"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_message(cli, ct_mri_checkpoint, tmp_path, extra, words):
    out = tmp_path / "out"
    result = cli(["--checkpoint", str(ct_mri_checkpoint), "--out", str(out), *extra])
    assert result.exit_code == 2
    line = _error_line(result)
    for word in words:
        assert word in line
    assert not out.exists()


def test_missing_checkpoint(cli, tmp_path):
    missing = tmp_path / "run" / "best.pt"
    result = cli(["--checkpoint", str(missing), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    line = _error_line(result)
    assert str(missing) in line and "checkpoint not found" in line and "RUN/best.pt" in line
    assert not (tmp_path / "out").exists()


def test_file_that_is_not_a_checkpoint(cli, tmp_path):
    bogus = tmp_path / "best.pt"
    bogus.write_bytes(b"not a checkpoint at all")
    result = cli(["--checkpoint", str(bogus), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert str(bogus) in _error_line(result)


def test_vis_ir_checkpoint_is_refused_with_the_fine_tuning_command(cli, vis_ir_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = cli(["--checkpoint", str(vis_ir_checkpoint), "--out", str(out), "--image-size", "64"])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "vis-ir" in line and "CT–MRI" in line
    assert f"fuse-train --task ct-mri --init {vis_ir_checkpoint}" in line
    assert not out.exists()


def test_unwritable_output_folder(cli, ct_mri_checkpoint, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where the output folder's parent should be")
    out = blocker / "out"
    result = cli(["--checkpoint", str(ct_mri_checkpoint), "--out", str(out)])
    assert result.exit_code == 2
    line = _error_line(result)
    assert str(out) in line and "choose a writable --out" in line


def test_earlier_export_is_not_overwritten_without_overwrite(cli, ct_mri_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / MODEL_ONNX
    earlier.write_bytes(b"earlier export")
    result = cli(["--checkpoint", str(ct_mri_checkpoint), "--out", str(out)])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "model.onnx" in line and "--overwrite" in line
    assert earlier.read_bytes() == b"earlier export"
    assert sorted(p.name for p in out.iterdir()) == [MODEL_ONNX]


def test_help_explains_every_option_with_units_and_defaults(cli):
    result = cli(["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for option in ("--checkpoint", "--out", "--fp16", "--onnx-only", "--opset", "--batch", "--image-size",
                   "--parity-data", "--workspace-gb", "--timing-cache", "--overwrite"):
        assert option in text
    for phrase in ("GiB", "pixels", "default: 17", "default: 1,8,32", "exits 3", "Exit status"):
        assert phrase in text


def test_importing_the_cli_does_not_import_tensorrt():
    code = (
        "import sys, fuse_export.cli, fuse_export.pipeline; "
        "assert 'tensorrt' not in sys.modules and 'fuse_export.tensorrt_build' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

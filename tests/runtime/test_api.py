"""The Python API (fuse_runtime.api): Fuser on arrays, files and folders gives fuse-run's pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from engine_models import build_scan_tree, read_output, write_max_fusion_onnx

import fuse_runtime
from fuse_runtime.api import Fuser, as_scan, fuse_files
from fuse_runtime.cli import main
from fuse_runtime.errors import FuseError
from fuse_runtime.inference import infer_chunks, pad_batch
from fuse_runtime.io import read_scan
from fuse_runtime.pairing import find_pairs
from fuse_runtime.pipeline import AUTO_FORMAT, FLAT_KINDS, safe_relative_name


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_max_fusion_onnx(tmp_path_factory.mktemp("model") / "model.onnx", image_size=64)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, harvard_test: Path) -> Path:
    """Every layout: 3 real Harvard pairs, phantom PNGs, a DICOM series and a NIfTI pair."""
    return build_scan_tree(tmp_path_factory.mktemp("scans"), harvard_test, harvard_pairs=3)


@pytest.fixture(scope="module")
def fuse_run_out(model: Path, scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuse-run")
    result = CliRunner().invoke(main, ["--engine", str(model), "--in", str(scans), "--out", str(out), "--quiet",
                                       "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.stderr
    return out


def _output_name(kind: str, name: str) -> str:
    fmt = AUTO_FORMAT[kind]
    if fmt == "nifti":
        return f"{safe_relative_name(name)}.nii.gz"
    if kind in FLAT_KINDS:
        return f"{safe_relative_name(name)}.{'png' if fmt == 'png' else 'dcm'}"
    return safe_relative_name(name)


def test_fuse_files_writes_the_pixels_fuse_run_writes_for_every_layout(
    model: Path, scans: Path, fuse_run_out: Path, tmp_path: Path
) -> None:
    pairs = find_pairs(scans).pairs
    assert {pair.kind for pair in pairs} == {"image", "dicom-series", "nifti"}
    with Fuser(model, backend="onnxruntime", batch_size=5) as fuser:
        for pair in pairs:
            name = _output_name(pair.kind, pair.name)
            ours = tmp_path / name
            assert fuser.fuse_files(pair.first, pair.second, ours) == ours
            ct = read_scan(pair.first, "CT")
            fmt = AUTO_FORMAT[pair.kind]
            theirs = read_output(fuse_run_out / name, fmt, ct)
            mine = read_output(ours, fmt, ct)
            assert mine.shape == theirs.shape and mine.shape[1:3] == ct.slices().shape[1:]
            np.testing.assert_array_equal(mine, theirs, err_msg=pair.name)


def test_fuse_on_arrays_equals_fuse_run_on_the_real_pairs(model: Path, scans: Path, fuse_run_out: Path) -> None:
    fuser = fuse_runtime.Fuser(model, backend="onnxruntime")
    try:
        names = sorted(p.name for p in (scans / "harvard" / "CT").glob("*.png"))
        assert len(names) == 3
        for name in names:
            ct = cv2.imread(str(scans / "harvard" / "CT" / name), cv2.IMREAD_GRAYSCALE)
            mri = cv2.imread(str(scans / "harvard" / "MRI" / name), cv2.IMREAD_GRAYSCALE)
            fused = fuser.fuse(ct, mri)
            written = cv2.cvtColor(cv2.imread(str(fuse_run_out / "harvard" / name)), cv2.COLOR_BGR2RGB)
            assert fused.dtype == np.uint8 and fused.shape == (*ct.shape, 3)
            np.testing.assert_array_equal(fused, written)
            assert fuser.fuse(ct, mri, gray=True).shape == ct.shape
    finally:
        fuser.close()


def test_fuse_on_a_volume_and_on_scans_matches_fuse_run(model: Path, scans: Path, fuse_run_out: Path) -> None:
    ct = read_scan(scans / "nifti" / "case01" / "ct.nii.gz", "CT")
    mri = read_scan(scans / "nifti" / "case01" / "mri.nii.gz", "MR")
    theirs = read_output(fuse_run_out / "nifti" / "case01.nii.gz", "nifti", ct)
    with Fuser(model, backend="onnxruntime", batch_size=4) as fuser:
        from_scans = fuser.fuse(ct, mri)
        from_arrays = fuser.fuse(ct.pixels, mri.pixels, ct_hu=True)
    assert from_scans.shape == (*ct.pixels.shape, 3)
    np.testing.assert_array_equal(from_scans, theirs)
    # The NIfTI's int16 HU and uint16 MRI as plain arrays are read the same way (HU window, percentiles).
    np.testing.assert_array_equal(from_arrays, theirs)


def test_run_folder_is_fuse_run(model: Path, scans: Path, fuse_run_out: Path, tmp_path: Path) -> None:
    with Fuser(model, backend="onnxruntime") as fuser:
        report = fuser.run_folder(scans, tmp_path, progress=False, preview=True)
    assert report.counts["ok"] == len(find_pairs(scans).pairs) and not report.counts["failed"]
    for name in ("harvard/" + p.name for p in (scans / "harvard" / "CT").glob("*.png")):
        assert (tmp_path / name).read_bytes() == (fuse_run_out / name).read_bytes()
    assert (tmp_path / "preview").is_dir()


def test_module_function_and_output_rules(model: Path, scans: Path, tmp_path: Path) -> None:
    ct, mri = scans / "png" / "CT" / "phantom01.png", scans / "png" / "MRI" / "phantom01.png"
    out = fuse_files(ct, mri, tmp_path / "a.png", model=model)
    assert cv2.imread(str(out)).shape == (256, 256, 3)
    with pytest.raises(FuseError, match="overwrite=True"):
        fuse_files(ct, mri, out, model=model)
    before = out.read_bytes()
    fuse_files(ct, mri, out, model=model, overwrite=True, gray=True)
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).ndim == 2 and out.read_bytes() != before
    with pytest.raises(FuseError, match="NIfTI result is one file"):
        fuse_files(ct, mri, tmp_path / "folder", model=model, output_format="nifti")
    with pytest.raises(FuseError, match="suffix means png"):
        fuse_files(ct, mri, tmp_path / "b.png", model=model, output_format="dicom")
    assert not (tmp_path / "b.png").exists()


def test_bad_inputs_are_fuse_errors(model: Path) -> None:
    with Fuser(model, backend="onnxruntime") as fuser:
        with pytest.raises(FuseError, match="not registered"):
            fuser.fuse(np.zeros((8, 8), np.uint8) + 1, np.ones((9, 8), np.uint8))
        with pytest.raises(FuseError, match="gray image"):
            fuser.fuse(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8))
        with pytest.raises(FuseError, match="constant"):
            fuser.fuse(np.full((8, 8), 7, np.uint8), np.arange(64, dtype=np.uint8).reshape(8, 8))
    with pytest.raises(FuseError, match="engine file not found"):
        Fuser(model.parent / "missing.onnx")


def test_as_scan_reads_arrays_like_files() -> None:
    assert as_scan(np.zeros((4, 4), np.uint8), "CT").bit_depth == 8
    hu = np.full((4, 4), -1000, np.int16)
    assert as_scan(hu, "CT").is_hu and not as_scan(hu, "MR").is_hu
    assert not as_scan(hu, "CT", hu=False).is_hu


def test_chunks_pad_with_zeros_and_drop_the_padding() -> None:
    seen: list[int] = []

    def infer(ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        seen.append(len(ct))
        return np.repeat(np.maximum(ct[:, :1], mri), 3, axis=1)

    ct = np.random.default_rng(0).random((7, 3, 4, 4), dtype=np.float32)
    mri = np.random.default_rng(1).random((7, 1, 4, 4), dtype=np.float32)
    out = infer_chunks(infer, ct, mri, batch_size=3, min_batch=3)
    assert seen == [3, 3, 3] and out.shape == (7, 3, 4, 4)
    np.testing.assert_array_equal(out[:, 0], np.maximum(ct[:, 0], mri[:, 0]))
    assert pad_batch(ct[:1], 3)[1:].max() == 0.0 and len(pad_batch(ct, 3)) == 7


def test_a_fixed_batch_engine_fuses_any_number_of_slices(tmp_path: Path, scans: Path, fuse_run_out: Path) -> None:
    fixed = write_max_fusion_onnx(tmp_path / "model.onnx", image_size=64, batch=5)
    ct = read_scan(scans / "dicom" / "case01" / "CT", "CT")
    mri = read_scan(scans / "dicom" / "case01" / "MRI", "MR")
    with Fuser(fixed, backend="onnxruntime", batch_size=16) as fuser:
        assert fuser.engine.batch_range == (5, 5)
        fused = fuser.fuse(ct, mri)
    assert len(fused) == ct.num_slices and ct.num_slices % 5 != 0
    np.testing.assert_array_equal(fused, read_output(fuse_run_out / "dicom" / "case01", "dicom", ct))

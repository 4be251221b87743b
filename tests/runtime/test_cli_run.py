"""fuse-run end to end with a real exported FusionNet (random weights, 64 px) on the CPU."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from click.testing import CliRunner
from engine_models import build_scan_tree, fuse_directly, read_output, write_max_fusion_onnx
from pydicom.data import get_testdata_file

from fuse_export.config import ExportConfig
from fuse_export.pipeline import run_export
from fuse_runtime.cli import main
from fuse_runtime.engines import open_engine
from fuse_runtime.io import read_scan
from fuse_runtime.pairing import find_pairs, load_pair
from fuse_runtime.preprocess import PreprocessConfig, prepare_pair, restore_geometry
from fuse_runtime.writers import to_display
from fuse_train.checkpoint import load_model, save_checkpoint
from fuse_train.config import TrainConfig
from fuse_train.model import FusionNet

SIZE = 64
FUSE_RUN = [sys.executable, "-m", "fuse_runtime.cli"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, harvard_test: Path) -> Path:
    """fuse-export's model.onnx (+ manifest.json) of a random-weight FusionNet at 64 px."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    config = TrainConfig(preprocess=PreprocessConfig(image_size=SIZE), crop_size=SIZE)
    save_checkpoint(folder / "model.pt", FusionNet(imagenet=False), config, epoch=1, val_loss=None)
    export = ExportConfig(image_size=SIZE, simplify=False, parity_pairs=1, parity_data=harvard_test)
    with _torch_threads(1):
        run_export(folder / "model.pt", folder / "out", export, log=lambda _: None)
    return folder / "out" / "model.onnx"


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, harvard_test: Path) -> Path:
    return build_scan_tree(tmp_path_factory.mktemp("scans"), harvard_test, harvard_pairs=1)


def _fuse_run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_real_model_end_to_end_matches_pytorch(exported: Path, scans: Path, tmp_path: Path) -> None:
    # ONNX Runtime FP32 (a named provider selects it): this test holds the pipeline to PyTorch FP32.
    code, out, err = _fuse_run("--engine", exported, "--in", scans, "--out", tmp_path, "--quiet", "--batch-size", "5",
                               "--provider", "cpu")
    assert code == 0, err
    assert "fused 7 pair(s), 29 slice(s)" in out and "pairs/s" in out
    model, _, _ = load_model(exported.parent.parent / "model.pt")
    engine = open_engine(exported, provider="cpu", threads=1)
    report = json.loads((tmp_path / "report.json").read_text())
    pairs = {pair.name: pair for pair in find_pairs(scans).pairs}
    assert sorted(r["name"] for r in report["pairs"]) == sorted(pairs)
    for entry in report["pairs"]:
        pair = pairs[entry["name"]]
        ct, mri = load_pair(pair)
        fmt = {"image": "png", "dicom-series": "dicom", "nifti": "nifti"}[pair.kind]
        written = read_output(Path(entry["outputs"][0]), fmt, ct)
        # the engine applied directly, one pair at a time: identical bytes
        np.testing.assert_array_equal(written, fuse_directly(engine, pair))
        if entry["name"] not in ("harvard/11", "dicom/case01", "nifti/case01"):
            continue  # PyTorch on the CPU is slow: one pair of each kind
        # PyTorch on the same preprocessed inputs: within one 8-bit step
        prepared = prepare_pair(ct, mri, pair.roles, engine.preprocess)
        with torch.no_grad(), _torch_threads(1):  # more threads than free cores make it crawl
            reference = model(torch.from_numpy(prepared.first), torch.from_numpy(prepared.second)).numpy()
        expected = to_display(restore_geometry(reference, prepared.restore))
        assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1
        assert written.shape[:3] == ct.slices().shape


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _contents(folder: Path) -> dict[str, object]:
    """Every output's pixels (DICOM files differ by their fresh UIDs and dates, so pixels only)."""
    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.suffix == ".png":
            found[name] = path.read_bytes()
        elif path.suffix == ".dcm":
            found[name] = pydicom.dcmread(path).pixel_array.tobytes()
        elif path.name.endswith(".nii.gz"):
            image = nib.load(path)
            found[name] = (np.asarray(image.dataobj).tobytes(), image.affine.tobytes())
    return found


def test_batch_size_does_not_change_the_outputs_and_geometry_is_kept(
    exported: Path, scans: Path, tmp_path: Path
) -> None:
    for batch in (1, 7):
        code, _, err = _fuse_run("--engine", exported, "--in", scans, "--out", tmp_path / str(batch), "--quiet",
                                 "--batch-size", batch, "--threads", 1)
        assert code == 0, err
    one, seven = _contents(tmp_path / "1"), _contents(tmp_path / "7")
    assert len(one) == 4 + 1 + 12 + 1 and one == seven
    _check_geometry(scans, tmp_path / "7")


def _check_geometry(scans: Path, out: Path) -> None:
    """NIfTI: the CT's affine, zooms and shape; DICOM: the CT series' grid; PNG: the source size."""
    source, fused = nib.load(scans / "nifti" / "case01" / "ct.nii.gz"), nib.load(out / "nifti" / "case01.nii.gz")
    np.testing.assert_array_equal(fused.affine, source.affine)
    assert fused.shape == source.shape and fused.header["datatype"] == 128  # RGB24
    assert int(fused.header["sform_code"]) == int(source.header["sform_code"]) > 0
    assert fused.header.get_zooms()[:3] == source.header.get_zooms()[:3]
    ct_series, fused_series = read_scan(scans / "dicom" / "case01" / "CT"), read_scan(out / "dicom" / "case01")
    assert fused_series.pixels.shape == ct_series.pixels.shape
    assert fused_series.spacing == pytest.approx(ct_series.spacing)
    np.testing.assert_allclose(fused_series.affine, ct_series.affine, atol=1e-4)
    first = pydicom.dcmread(out / "dicom" / "case01" / "IM_00001.dcm")
    assert first.PhotometricInterpretation == "RGB" and list(first.ImageType) == ["DERIVED", "SECONDARY"]
    assert "fuse" in first.SeriesDescription and "model.onnx" in first.DerivationDescription
    assert read_scan(out / "harvard" / "11.png").pixels.shape == (256, 256)


def test_resume_after_a_crash_gives_identical_files(exported: Path, harvard_train: Path, tmp_path: Path) -> None:
    scans = tmp_path / "in"
    names = sorted(p.name for p in (harvard_train / "CT").glob("*.png"))[:30]
    for role in ("CT", "MRI"):
        (scans / role).mkdir(parents=True)
        for name in names:
            shutil.copy2(harvard_train / role / name, scans / role / name)
    crashed = tmp_path / "crashed"
    args = ["--engine", str(exported), "--in", str(scans), "--batch-size", "1", "--workers", "1", "--threads", "1"]
    process = subprocess.Popen([*FUSE_RUN, *args, "--out", str(crashed), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_finished_pngs(crashed)) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "fuse-run finished before it could be killed"
    done_before = len(_finished_pngs(crashed))
    assert 3 <= done_before < len(names)
    # what a kill mid-write leaves
    (crashed / f".{names[-1]}.fuse-20250101T000000-deadbeef.abcd.partial.png").write_bytes(b"\x89PNG half")
    resumed = subprocess.run([*FUSE_RUN, *args, "--out", str(crashed), "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((crashed / "report.json").read_text())
    # An output renamed into place just before the kill, before its record said "done", is redone.
    assert report["totals"]["skipped"] in (done_before - 1, done_before)
    assert report["totals"]["skipped"] + report["totals"]["ok"] == len(names)
    uninterrupted = tmp_path / "uninterrupted"
    assert _fuse_run(*args, "--out", uninterrupted, "--quiet")[0] == 0
    assert _contents(crashed) == _contents(uninterrupted)
    assert not [p for p in crashed.rglob("*") if ".partial" in p.name]


def _finished_pngs(folder: Path) -> list[Path]:
    """Renamed outputs only: pathlib's glob also matches the hidden `.name.XXXX.partial.png` temporaries."""
    return [p for p in folder.glob("*.png") if not p.name.startswith(".")]


def _nifti_pair(folder: Path, ct: np.ndarray, mri: np.ndarray) -> None:
    folder.mkdir(parents=True)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(ct.astype(np.float32), affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mri.astype(np.float32), affine), folder / "mri.nii.gz")


@pytest.fixture
def bad_scans(tmp_path: Path, harvard_test: Path) -> Path:
    """One good pair and every kind of bad input, in one tree."""
    import cv2

    root = tmp_path / "bad_in"
    ct_dir, mri_dir = root / "slices" / "CT", root / "slices" / "MRI"
    ct_dir.mkdir(parents=True)
    mri_dir.mkdir(parents=True)
    for role in ("CT", "MRI"):
        shutil.copy2(harvard_test / role / "11.png", root / "slices" / role / "good.png")
    cv2.imwrite(str(ct_dir / "constant.png"), np.full((256, 256), 100, np.uint8))
    shutil.copy2(harvard_test / "MRI" / "12.png", mri_dir / "constant.png")
    (ct_dir / "notes.txt").write_text("not an image")
    (mri_dir / "notes.txt").write_text("not an image")
    shutil.copy2(get_testdata_file("CT_small.dcm"), ct_dir / "truncated.dcm")
    shutil.copy2(get_testdata_file("MR_truncated.dcm"), mri_dir / "truncated.dcm")
    shutil.copy2(harvard_test / "CT" / "13.png", ct_dir / "unpaired.png")
    shutil.copy2(harvard_test / "CT" / "14.png", ct_dir / "mismatch.png")
    cv2.imwrite(str(mri_dir / "mismatch.png"), cv2.resize(cv2.imread(str(harvard_test / "MRI" / "14.png")), (128, 128)))
    volume = np.random.default_rng(0).normal(0, 100, (32, 32, 4))
    with_nan = volume.copy()
    with_nan[3, 4, 1] = np.nan
    _nifti_pair(root / "nan_case", with_nan, volume)
    return root


def test_every_bad_input_is_reported_and_the_rest_completes(exported: Path, bad_scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = _fuse_run("--engine", exported, "--in", bad_scans, "--out", out)  # with the progress bar
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    status = {r["name"]: (r["status"], r["error"]) for r in report["pairs"]}
    assert status["slices/good"] == ("ok", None) and (out / "slices" / "good.png").is_file()
    expected_errors = {
        "slices/constant": "constant",
        "slices/notes.txt": "not a scan",
        "slices/truncated": "truncated",
        "slices/unpaired": "no MRI for CT/unpaired.png",
        "slices/mismatch": "shapes differ",
        "nan_case": "NaN",
    }
    for name, reason in expected_errors.items():
        assert status[name][0] == "failed", name
        assert reason in status[name][1], (name, status[name][1])
        assert f"failed: {name}:" in stderr
    assert report["totals"]["ok"] == 1 and report["totals"]["failures"] == len(report["pairs"]) - 1
    assert "1 pair(s)" in stdout and "failed" in stdout and "slice" in stderr
    visible = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    assert visible == ["report.json", f"reports/{report['run_id']}.json", "slices/good.png"]


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A folder nobody, root included, can write into (immutable for root, mode 0555 otherwise)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    yield folder
    if as_root:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def test_read_only_output_folder_is_a_clear_error(exported: Path, scans: Path, read_only_dir: Path) -> None:
    code, _, err = _fuse_run("--engine", exported, "--in", scans / "harvard", "--out", read_only_dir)
    assert code == 2
    assert f"{read_only_dir}: the output folder cannot be written" in err and "Traceback" not in err
    assert list(read_only_dir.iterdir()) == []


def test_engine_of_another_size_is_a_clear_error(scans: Path, tmp_path: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "m" / "model.onnx", 64, graph_size=128)
    code, _, err = _fuse_run("--engine", model, "--in", scans, "--out", tmp_path / "out")
    assert code == 2 and "image sizes disagree" in err and str(model) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "{tmp}/missing.onnx"], "engine file not found"),
        (["--engine", "{model}", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["--engine", "{model}", "--format", "jpeg"], "Invalid value for '--format'"),
        (["--engine", "{model}", "--provider", "gpu"], "Invalid value for '--provider'"),
        (["--engine", "{model}", "--workers", "0"], "Invalid value for '--workers'"),
    ],
)
def test_usage_errors_exit_2(scans: Path, tmp_path: Path, args: list[str], message: str) -> None:
    model = write_max_fusion_onnx(tmp_path / "m" / "model.onnx")
    filled = [a.format(tmp=tmp_path, model=model) for a in args]
    code, _, err = _fuse_run(*filled, "--in", scans, "--out", tmp_path / "out")
    assert code == 2 and message in err


def test_missing_input_folder_exits_2(tmp_path: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "m" / "model.onnx")
    code, _, err = _fuse_run("--engine", model, "--in", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert code == 2 and "input folder not found" in err


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for option in ("--engine", "--in", "--out", "--batch-size", "--format", "--workers", "--threads", "--provider",
                   "--overwrite", "--metrics", "--preview", "--gray", "--quiet", "--streams"):
        assert option in result.output
    assert "default: 8" in result.output and "default: auto" in result.output

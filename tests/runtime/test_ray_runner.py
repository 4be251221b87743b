"""fuse-run --ray on a local 2-CPU Ray cluster: the local runner's outputs, report, resume and failures.

The cluster is started once for the module (``address="local"``: never someone else's Ray) and used by
``run_on_ray`` and by the CLI in this process. The model is a random-weight FusionNet exported at 64 px
by fuse-export, as in test_cli_run.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
import ray
import torch
from click.testing import CliRunner
from engine_models import build_scan_tree
from pydicom.data import get_testdata_file

from fuse_export.config import ExportConfig
from fuse_export.pipeline import run_export
from fuse_runtime.cli import main
from fuse_runtime.distributed import RayOptions, run_on_ray
from fuse_runtime.engines import open_engine
from fuse_runtime.errors import FuseError
from fuse_runtime.pipeline import RunOptions, run
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import save_checkpoint
from fuse_train.config import TrainConfig
from fuse_train.model import FusionNet

SIZE = 64
BATCH = 5
#: Report fields that depend on timing or on the runner, not on what was fused.
TIMING_TOTALS = ("wall_seconds", "pairs_per_second", "slices_per_second")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, harvard_test: Path) -> Path:
    """fuse-export's model.onnx (+ manifest.json) of a random-weight FusionNet at 64 px."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    config = TrainConfig(preprocess=PreprocessConfig(image_size=SIZE), crop_size=SIZE)
    save_checkpoint(folder / "model.pt", FusionNet(imagenet=False), config, epoch=1, val_loss=None)
    export = ExportConfig(image_size=SIZE, simplify=False, parity_pairs=1, parity_data=harvard_test)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # more threads than free cores make a 64 px forward crawl on a shared box
    try:
        run_export(folder / "model.pt", folder / "out", export, log=lambda _: None)
    finally:
        torch.set_num_threads(before)
    return folder / "out" / "model.onnx"


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, harvard_test: Path) -> Path:
    """3 Harvard pairs (PNG), a NIfTI volume pair, a DICOM series pair and 4 phantom PNG pairs."""
    return build_scan_tree(tmp_path_factory.mktemp("scans"), harvard_test, harvard_pairs=3)


@pytest.fixture(scope="module")
def runs(ray_cluster: None, exported: Path, scans: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same tree fused by the local runner and on Ray, with metrics and previews."""
    options = RunOptions(batch_size=BATCH, metrics=True, preview=True, progress=False)
    out = tmp_path_factory.mktemp("runs")
    with open_engine(exported, provider="cpu", threads=1) as engine:
        local = run(engine, scans, out / "local", options)
    announced = []
    distributed = run_on_ray(
        exported, scans, out / "ray", options, RayOptions(provider="cpu"), on_engine=announced.append
    )
    return {"local": (out / "local", local), "ray": (out / "ray", distributed), "announced": announced}


def test_ray_writes_the_local_runners_files_byte_for_byte(runs: dict[str, Any]) -> None:
    (local_dir, _), (ray_dir, report) = runs["local"], runs["ray"]
    assert report.counts == {"ok": 9, "skipped": 0, "failed": 0} and report.fused_slices == 31
    local_files, ray_files = _files(local_dir), _files(ray_dir)
    assert sorted(ray_files) == sorted(local_files)
    assert {"harvard/11.png", "nifti/case01.nii.gz", "dicom/case01/IM_00012.dcm", "preview/nifti/case01.png"} <= set(
        ray_files
    )
    for name in local_files:
        if name.endswith((".png", ".nii.gz")):
            assert (ray_dir / name).read_bytes() == (local_dir / name).read_bytes(), name
        elif name.endswith(".dcm"):  # fresh UIDs and dates per run: the pixels and the geometry must agree
            ours, theirs = pydicom.dcmread(ray_dir / name), pydicom.dcmread(local_dir / name)
            assert ours.pixel_array.tobytes() == theirs.pixel_array.tobytes(), name
            assert ours.ImagePositionPatient == theirs.ImagePositionPatient
            assert ours.StudyInstanceUID == theirs.StudyInstanceUID  # copied from the CT series


def test_ray_report_is_equivalent_to_the_local_report(runs: dict[str, Any]) -> None:
    (local_dir, _), (ray_dir, _) = runs["local"], runs["ray"]
    local, distributed = _comparable(local_dir), _comparable(ray_dir)
    assert distributed == local
    written = json.loads((ray_dir / "report.json").read_text())
    assert written["settings"]["ray"]["cluster_cpus"] == 2 and written["settings"]["ray"]["max_actors"] == 1
    assert all(pair["metrics"] and pair["seconds"] > 0 for pair in written["pairs"])
    (engine,) = runs["announced"]
    assert engine.description == written["engine"] and "64x64" in engine.description


def test_rerun_on_ray_skips_finished_outputs_and_redoes_a_missing_one(
    runs: dict[str, Any], scans: Path, exported: Path, tmp_path: Path
) -> None:
    ray_dir, _ = runs["ray"]
    out = tmp_path / "out"
    shutil.copytree(ray_dir, out)
    (out / "nifti" / "case01.nii.gz").unlink()
    # what a killed write leaves
    (out / "harvard" / ".12.png.fuse-20250101T000000-deadbeef.abcd.partial.png").write_bytes(b"\x89PNG half")
    kept = {name: (out / name).stat().st_mtime_ns for name in _files(out) if name != "report.json"}
    result = CliRunner().invoke(
        main, ["--engine", str(exported), "--in", str(scans), "--out", str(out), "--ray", "--quiet"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert "fused 1 pair(s), 12 slice(s)" in result.stdout and "8 skipped, 0 failed" in result.stdout
    report = json.loads((out / "report.json").read_text())
    status = {pair["name"]: pair["status"] for pair in report["pairs"]}
    assert status.pop("nifti/case01") == "ok" and set(status.values()) == {"skipped"}
    assert (out / "nifti" / "case01.nii.gz").read_bytes() == (ray_dir / "nifti" / "case01.nii.gz").read_bytes()
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # finished outputs untouched
    assert not [path for path in out.rglob("*") if ".partial" in path.name]
    assert any("partial file" in notice for notice in report["notices"])


@pytest.fixture
def bad_scans(tmp_path: Path, harvard_test: Path) -> Path:
    """Two good pairs among bad ones: constant, unregistered, truncated DICOM, unpaired, NaN volume."""
    root = tmp_path / "bad_in"
    ct_dir, mri_dir = root / "slices" / "CT", root / "slices" / "MRI"
    ct_dir.mkdir(parents=True)
    mri_dir.mkdir(parents=True)
    for name in ("11.png", "12.png"):
        for role in ("CT", "MRI"):
            shutil.copy2(harvard_test / role / name, root / "slices" / role / name)
    cv2.imwrite(str(ct_dir / "constant.png"), np.full((256, 256), 100, np.uint8))
    shutil.copy2(harvard_test / "MRI" / "13.png", mri_dir / "constant.png")
    shutil.copy2(harvard_test / "CT" / "14.png", ct_dir / "mismatch.png")
    cv2.imwrite(str(mri_dir / "mismatch.png"), cv2.resize(cv2.imread(str(harvard_test / "MRI" / "14.png")), (128, 96)))
    shutil.copy2(get_testdata_file("CT_small.dcm"), ct_dir / "truncated.dcm")
    shutil.copy2(get_testdata_file("MR_truncated.dcm"), mri_dir / "truncated.dcm")
    shutil.copy2(harvard_test / "CT" / "15.png", ct_dir / "unpaired.png")
    volume = np.random.default_rng(0).normal(0, 100, (32, 32, 4)).astype(np.float32)
    with_nan = volume.copy()
    with_nan[3, 4, 1] = np.nan
    (root / "nan_case").mkdir()
    nib.save(nib.Nifti1Image(with_nan, np.diag([2.0, 2.0, 3.0, 1.0])), root / "nan_case" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])), root / "nan_case" / "mri.nii.gz")
    return root


def test_bad_pairs_fail_alone_with_the_local_runners_messages(
    ray_cluster: None, exported: Path, bad_scans: Path, tmp_path: Path
) -> None:
    options = RunOptions(batch_size=BATCH, progress=False)
    with open_engine(exported, provider="cpu", threads=1) as engine:
        run(engine, bad_scans, tmp_path / "local", options)
    report = run_on_ray(exported, bad_scans, tmp_path / "ray", options, RayOptions(provider="cpu"))
    status = {result.name: (result.status, result.error or "") for result in report.pairs}
    assert status.pop("slices/11") == ("ok", "") and status.pop("slices/12") == ("ok", "")
    expected = {
        "slices/constant": "constant",
        "slices/mismatch": "shapes differ",
        "slices/truncated": "truncated",
        "slices/unpaired": "no MRI for CT/unpaired.png",
        "nan_case": "NaN",
    }
    assert {name: (state, expected[name] in error) for name, (state, error) in status.items()} == {
        name: ("failed", True) for name in expected
    }
    assert sorted(_files(tmp_path / "ray")) == ["report.json", "slices/11.png", "slices/12.png"]
    assert _comparable(tmp_path / "ray") == _comparable(tmp_path / "local")


def test_cli_with_ray_takes_relative_paths_and_exits_1_when_a_pair_fails(
    ray_cluster: None, exported: Path, bad_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the workers' working directory: paths must reach them absolute
    engine = os.path.relpath(exported, tmp_path)
    result = CliRunner().invoke(
        main, ["--engine", engine, "--in", "bad_in/slices", "--out", "o", "--ray", "--quiet"], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert "failed: constant:" in result.stderr and "Traceback" not in result.stderr
    assert "fused 2 pair(s)" in result.stdout and (tmp_path / "o" / "11.png").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"engine_path": "{tmp}/missing.onnx"}, "engine file not found"),
        ({"engine_path": "{tmp}/broken.onnx"}, "the engine was opened on a Ray worker"),
        ({"in_dir": "s3://bucket/scans"}, "--in is a URL"),
        ({"out_dir": "gs://bucket/fused"}, "--out is a URL"),
        ({"in_dir": "{tmp}/nowhere"}, "input folder not found"),
        ({"out_dir": "{scans}/harvard/out"}, "inside the input folder"),
        ({"ray_options": RayOptions(threads=64)}, "more CPUs per inference actor than any Ray node has (2)"),
    ],
)
def test_refusals_before_any_pair_is_read(
    ray_cluster: None, exported: Path, scans: Path, tmp_path: Path, arguments: dict[str, Any], message: str
) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    call: dict[str, Any] = {"engine_path": str(exported), "in_dir": str(scans), "out_dir": str(tmp_path / "out")}
    call.update(arguments)
    for key in ("engine_path", "in_dir", "out_dir"):
        call[key] = call[key].format(tmp=tmp_path, scans=scans)
    with pytest.raises(FuseError) as caught:
        run_on_ray(**call, options=RunOptions(progress=False))
    assert message in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "bad", [{"threads": 0}, {"actors": 0}, {"writes_in_flight": -1}, {"provider": "gpu"}]
)
def test_bad_ray_options_raise(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        RayOptions(**bad)


@pytest.mark.parametrize(("name", "backend"), [("model.onnx", "onnxruntime"), ("model.int8.onnx", "onnxruntime"),
                                               ("model.plan", "auto")])
def test_ray_actors_run_one_library_on_every_node(name: str, backend: str) -> None:
    """Never the local auto choice (OpenVINO bf16 on AMX nodes): every node fuses alike."""
    from fuse_runtime.distributed.ray_runner import ray_backend

    assert ray_backend(name) == backend


def test_runtime_and_cli_import_without_ray() -> None:
    code = "import sys, fuse_runtime.cli, fuse_runtime.distributed; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_help_explains_ray() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "--ray [ADDRESS]" in result.output and "ray start" in result.output
    assert "fuse-ctmri[distributed]" in result.output


def _files(folder: Path) -> list[str]:
    """Every finished file under ``folder``, relative (hidden temporaries and records, and the per-run
    reports under ``reports/``, named after each run's id, left out)."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith(".") and path.relative_to(folder).parts[0] != "reports"
    )


def _comparable(out_dir: Path) -> dict[str, Any]:
    """report.json without timings, the output folder and the Ray settings."""
    report = json.loads((out_dir / "report.json").read_text())
    report.pop("run_id")
    for pair in report["pairs"]:
        pair.pop("seconds")
        pair["outputs"] = [str(Path(o).relative_to(out_dir)) for o in pair["outputs"]]
    for key in TIMING_TOTALS:
        report["totals"].pop(key)
    for key in ("out", "ray"):
        report["settings"].pop(key, None)
    return report

"""The batch pipeline, in-process, with a small ONNX model on the CPU over every input layout."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from engine_models import build_scan_tree, fuse_directly, read_output, write_max_fusion_onnx

from fuse_runtime import writers
from fuse_runtime.engines import open_engine
from fuse_runtime.errors import FuseError
from fuse_runtime.io import read_scan
from fuse_runtime.metrics import METRIC_NAMES
from fuse_runtime.pairing import Pair, find_pairs
from fuse_runtime.pipeline import RunOptions, plan_jobs, run, safe_relative_name
from fuse_runtime.preprocess import PreprocessConfig

SIZE = 64
QUIET = RunOptions(progress=False)

#: Output of each input pair under OUT with --format auto, and the format it is in.
AUTO_OUTPUTS = {
    "dicom/case01": ("dicom/case01", "dicom"),
    "harvard/11": ("harvard/11.png", "png"),
    "harvard/12": ("harvard/12.png", "png"),
    "harvard/13": ("harvard/13.png", "png"),
    "nifti/case01": ("nifti/case01.nii.gz", "nifti"),
    **{f"png/phantom0{i}": (f"png/phantom0{i}.png", "png") for i in range(1, 5)},
}


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, harvard_test: Path) -> Path:
    return build_scan_tree(tmp_path_factory.mktemp("scans"), harvard_test)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    # CLAHE on and a letterbox size below the sources' 128/256 px: the whole preprocessing path runs.
    folder = tmp_path_factory.mktemp("model")
    path = write_max_fusion_onnx(folder / "model.onnx", SIZE, PreprocessConfig(image_size=SIZE))
    return open_engine(path, provider="cpu", threads=1)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_layout_is_fused_like_the_engine_applied_directly(engine, scans: Path, tmp_path: Path) -> None:
    report = run(engine, scans, tmp_path, QUIET)
    assert {r.name: r.status for r in report.pairs} == {name: "ok" for name in AUTO_OUTPUTS}
    pairs = {pair.name: pair for pair in find_pairs(scans).pairs}
    for result in report.pairs:
        relative, fmt = AUTO_OUTPUTS[result.name]
        assert result.outputs == [str(tmp_path / relative)]
        ct = read_scan(pairs[result.name].first, modality="CT")
        written = read_output(tmp_path / relative, fmt, ct)
        np.testing.assert_array_equal(written, fuse_directly(engine, pairs[result.name]))
        assert written.shape[:3] == ct.slices().shape
        assert result.slices == ct.num_slices and result.seconds > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["totals"]["pairs"] == 9 and saved["totals"]["failures"] == 0
    assert saved["totals"]["slices"] == 12 + 12 + 7 and saved["totals"]["pairs_per_second"] > 0
    assert saved["engine"] == engine.description and saved["provider"] == "cpu"
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name]


@pytest.mark.parametrize("fmt", ["png", "nifti", "dicom"])
def test_any_input_can_be_written_in_any_format(engine, scans: Path, tmp_path: Path, fmt: str) -> None:
    report = run(engine, scans, tmp_path, RunOptions(output_format=fmt, progress=False))
    pairs = {pair.name: pair for pair in find_pairs(scans).pairs}
    assert all(r.status == "ok" for r in report.pairs), [r.error for r in report.pairs]
    for result in report.pairs:
        output = Path(result.outputs[0])
        ct = read_scan(pairs[result.name].first, modality="CT")
        np.testing.assert_array_equal(read_output(output, fmt, ct), fuse_directly(engine, pairs[result.name]))
        flat = pairs[result.name].kind == "image"
        suffix = {"png": ".png", "dicom": ".dcm", "nifti": ".gz"}[fmt]
        assert output.suffix == suffix if (flat or fmt == "nifti") else output.is_dir()


def test_gray_writes_luminance(engine, scans: Path, tmp_path: Path) -> None:
    run(engine, scans / "harvard", tmp_path, RunOptions(gray=True, progress=False))
    pair = find_pairs(scans / "harvard").pairs[0]
    written = cv2.imread(str(tmp_path / "11.png"), cv2.IMREAD_UNCHANGED)
    assert written.ndim == 2
    np.testing.assert_array_equal(written, fuse_directly(engine, pair, gray=True)[0])


def test_fixed_batch_engine_pads_and_small_queues_change_nothing(engine, scans: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    run(engine, scans, reference, QUIET)
    fixed = open_engine(write_max_fusion_onnx(tmp_path / "m" / "fixed.onnx", SIZE, batch=5), provider="cpu")
    assert fixed.batch_range == (5, 5)
    other = tmp_path / "fixed"
    report = run(fixed, scans, other, RunOptions(batch_size=3, workers=3, queue_pairs=1, progress=False))
    assert any("batch size 3 is outside the engine's range 5..5; using 5" in n for n in report.notices)
    assert all(r.status == "ok" for r in report.pairs)
    nifti_ct = read_scan(scans / "nifti" / "case01" / "ct.nii.gz", modality="CT")  # read_output needs it for NIfTI
    for relative, fmt in AUTO_OUTPUTS.values():
        np.testing.assert_array_equal(
            read_output(other / relative, fmt, nifti_ct), read_output(reference / relative, fmt, nifti_ct)
        )


def test_rerun_skips_existing_outputs_unless_overwrite(engine, scans: Path, tmp_path: Path) -> None:
    run(engine, scans / "harvard", tmp_path, QUIET)
    output = tmp_path / "11.png"
    os.utime(output, (1, 1))
    again = run(engine, scans / "harvard", tmp_path, QUIET)
    assert [r.status for r in again.pairs] == ["skipped"] * 3
    assert "--overwrite" in again.pairs[0].error and output.stat().st_mtime == 1
    forced = run(engine, scans / "harvard", tmp_path, RunOptions(overwrite=True, progress=False))
    assert [r.status for r in forced.pairs] == ["ok"] * 3 and output.stat().st_mtime > 1


def test_leftover_partial_files_are_removed(engine, scans: Path, tmp_path: Path) -> None:
    """What a killed run left (its run id in the names) goes; a user's `.partial` name stays."""
    leftover = tmp_path / ".11.png.fuse-20250101T000000-deadbeef.x1y2.partial.png"
    staging = tmp_path / "dicom" / ".case01.fuse-20250101T000000-deadbeef.q.partial-dir"
    users = tmp_path / ".thesis.partial.tex"
    users.write_text("chapter 1")
    staging.mkdir(parents=True)
    leftover.write_bytes(b"half a png")
    (staging / "IM_00001.dcm").write_bytes(b"half a series")
    report = run(engine, scans, tmp_path, QUIET)
    assert any("removed 2 partial file(s)" in n for n in report.notices)
    assert not leftover.exists() and not staging.exists()
    assert users.read_text() == "chapter 1"
    assert (tmp_path / "dicom" / "case01" / "IM_00012.dcm").is_file()


def test_metrics_and_previews(engine, scans: Path, tmp_path: Path) -> None:
    report = run(engine, scans, tmp_path, RunOptions(metrics=True, preview=True, progress=False))
    for result in report.pairs:
        assert set(result.metrics) == set(METRIC_NAMES)
        assert all(value is None or np.isfinite(value) for value in result.metrics.values())
        preview = Path(result.outputs[1])
        assert preview.parent.is_relative_to(tmp_path / "preview")
        image = cv2.imread(str(preview))
        ct = read_scan(Path(result.inputs[0]), modality="CT")
        width = ct.pixels.shape[-1]
        assert image.shape == (writers.preview_header(width) + ct.pixels.shape[-2], 3 * width, 3)
    assert report.pairs[0].metrics["EN"] > 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("case01", "case01"),
        ("train/20005", "train/20005"),
        ("a b/c?d", "a_b/c_d"),
        ("../../etc/passwd", "etc/passwd"),
        (".hidden/x", "hidden/x"),
        ("Müller/T1", "M_ller/T1"),
        ("preview/11", "_preview/11"),
        ("preview", "preview"),
        ("..", "pair"),
        ("", "pair"),
    ],
)
def test_output_names_are_sanitised(name: str, expected: str) -> None:
    assert safe_relative_name(name) == expected


def test_names_that_sanitise_alike_keep_apart_whatever_other_pairs_exist(tmp_path: Path) -> None:
    pairs = [Pair(name, tmp_path / "a", tmp_path / "b", "image") for name in ("x y", "x_y", "x?y")]
    outputs = [job.output.name for job in plan_jobs(pairs, tmp_path / "out", QUIET)]
    assert outputs[1] == "x_y.png" and len(set(outputs)) == 3
    assert all(re.fullmatch(r"x_y-[0-9a-f]{8}\.png", name) for name in (outputs[0], outputs[2]))
    alone = [plan_jobs([pair], tmp_path / "out", QUIET)[0].output.name for pair in pairs]
    assert alone == outputs


def test_output_inside_another_pairs_output_folder_is_refused(tmp_path: Path) -> None:
    pairs = [
        Pair("case01", tmp_path / "a", tmp_path / "b", "dicom-series"),
        Pair("case01/sub/11", tmp_path / "c", tmp_path / "d", "image"),
        Pair("case02", tmp_path / "e", tmp_path / "f", "dicom-series"),
    ]
    jobs = plan_jobs(pairs, tmp_path / "out", QUIET)
    assert [job.result.status for job in jobs] == ["ok", "failed", "ok"]
    assert "overlap the output folder of pair 'case01'" in jobs[1].result.error


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"workers": 0}, "workers"),
        ({"queue_pairs": 0}, "queue_pairs"),
        ({"output_format": "jpeg"}, "output_format"),
    ],
)
def test_bad_options_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunOptions(**kwargs)


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda scans, tmp: scans / "fused", "inside the input folder"),
        (lambda scans, tmp: scans, "inside the input folder"),
    ],
)
def test_output_inside_the_input_is_refused(engine, scans: Path, tmp_path: Path, make_out, message: str) -> None:
    with pytest.raises(FuseError, match=message):
        run(engine, scans, make_out(scans, tmp_path), QUIET)
    assert not (scans / "fused").exists()


def test_missing_input_folder_is_refused(engine, tmp_path: Path) -> None:
    with pytest.raises(FuseError, match="input folder not found"):
        run(engine, tmp_path / "nowhere", tmp_path / "out", QUIET)


def test_input_inside_the_output_folder_is_never_touched(engine, scans: Path, tmp_path: Path) -> None:
    import shutil

    inputs = shutil.copytree(scans / "harvard", tmp_path / "in")
    hidden = inputs / "CT" / ".11.png.zz.partial.png"  # looks like a leftover, but it is in the input
    hidden.write_bytes(b"someone else's file")
    before = _files(inputs)
    report = run(engine, inputs, tmp_path, QUIET)
    assert [r.status for r in report.pairs] == ["ok"] * 3
    assert (tmp_path / "11.png").is_file() and _files(inputs) == before


def _other_grid_tree(root: Path, scans: Path) -> Path:
    """A DICOM case whose MR series has another field of view (cropped, shifted ImagePositionPatient)."""
    import shutil

    import pydicom

    case = root / "case02"
    shutil.copytree(scans / "dicom" / "case01" / "CT", case / "CT")
    (case / "MRI").mkdir(parents=True)
    for path in sorted((scans / "dicom" / "case01" / "MRI").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array[8:120, 4:110]
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 4 * 1.8,
                                   float(ds.ImagePositionPatient[1]) + 8 * 1.8, ds.ImagePositionPatient[2]]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.save_as(case / "MRI" / path.name)
    return root


def test_mri_on_another_grid_fuses_on_the_ct_grid_as_a_derived_series(engine, scans: Path, tmp_path: Path) -> None:
    import pydicom
    from dicom_checks import assert_dciodvfy_clean, assert_same_geometry, read_series

    tree = _other_grid_tree(tmp_path / "in", scans)
    report = run(engine, tree, tmp_path / "out", QUIET)
    (result,) = report.pairs
    assert result.status == "ok", result.error
    assert result.alignment == {"method": "world", "overlap": pytest.approx(112 * 106 / 128**2, abs=1e-6)}
    folder = tmp_path / "out" / "case02"
    assert_dciodvfy_clean(folder.glob("*.dcm"))
    assert_same_geometry(read_series(folder), read_series(tree / "case02" / "CT"))
    first = pydicom.dcmread(folder / "IM_00003.dcm")
    references = {item.ReferencedSOPClassUID.name for item in first.SourceImageSequence}
    assert references == {"CT Image Storage", "MR Image Storage"}
    assert len(first.ReferencedSeriesSequence) == 2
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["pairs"][0]["alignment"]["method"] == "world"


def test_register_rigid_writes_the_transform_and_the_metric(engine, scans: Path, tmp_path: Path) -> None:
    report = run(engine, scans / "nifti", tmp_path, RunOptions(register="rigid", progress=False))
    (result,) = report.pairs
    assert result.status == "ok", result.error
    alignment = result.alignment
    assert alignment["method"] == "rigid" and alignment["metric_after"] <= alignment["metric_before"]
    assert Path(alignment["transform_file"]) == tmp_path / "case01.tfm" and (tmp_path / "case01.tfm").is_file()
    assert str(tmp_path / "case01.tfm") in result.outputs


def test_same_grid_pairs_are_fused_as_before(engine, scans: Path, tmp_path: Path) -> None:
    report = run(engine, scans / "dicom", tmp_path, QUIET)
    assert report.pairs[0].alignment == {"method": "same-grid", "overlap": 1.0}


class _Overlapping:
    """Wraps an engine as a throughput engine of ``in_flight`` requests whose results are computed
    only when taken, and records how many batches were submitted and not yet taken."""

    def __init__(self, engine, in_flight: int) -> None:
        self.engine, self.in_flight, self.outstanding, self.most = engine, in_flight, 0, 0

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def submit(self, ct: np.ndarray, mri: np.ndarray):
        engine, ct, mri = self.engine, ct.copy(), mri.copy()
        self.outstanding += 1
        self.most = max(self.most, self.outstanding)
        owner = self

        class Pending:
            def result(self) -> np.ndarray:
                owner.outstanding -= 1
                return engine.infer(ct, mri)

        return Pending()


def test_a_throughput_engine_gets_batches_side_by_side_with_the_same_outputs(
    engine, scans: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    run(engine, scans, reference, QUIET)
    overlapping = _Overlapping(engine, in_flight=3)
    report = run(overlapping, scans, tmp_path / "async", RunOptions(batch_size=2, progress=False))
    assert all(r.status == "ok" for r in report.pairs)
    assert overlapping.most == 3 and overlapping.outstanding == 0
    pngs = {name: content for name, content in _files(reference).items() if name.endswith(".png")}
    assert pngs and {n: c for n, c in _files(tmp_path / "async").items() if n.endswith(".png")} == pngs

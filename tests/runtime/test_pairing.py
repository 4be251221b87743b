"""Pairing: layouts found under one root, problems reported by name, pairs loaded and checked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from fuse_runtime.errors import FuseError
from fuse_runtime.pairing import Pair, PairProblem, find_pairs, load_pair, patient_id, verify_pairs
from fuse_runtime.phantoms import write_phantoms

# --- the real data -------------------------------------------------------------------------------


@pytest.mark.parametrize(("folder", "count"), [("ct-mri-train", 149), ("ct-mri-test", 21)])
def test_harvard_folders_pair_completely(shared_data, folder, count):
    root = shared_data / "harvard" / folder
    report = find_pairs(root)
    assert report.problems == []
    assert len(report.pairs) == count
    for pair in report.pairs:
        assert pair.kind == "image" and pair.task == "ct-mri"
        assert pair.first == root / "CT" / f"{pair.name}.png"
        assert pair.second == root / "MRI" / f"{pair.name}.png"
    assert [pair.name for pair in report.pairs] == sorted(pair.name for pair in report.pairs)


def test_nested_tree_finds_every_dataset_and_reports_the_rest(shared_data):
    report = find_pairs(shared_data / "harvard")
    names = [pair.name for pair in report.pairs]
    assert len(names) == 149 + 21
    assert "ct-mri-train/28015" in names and "ct-mri-test/11" in names
    # PET/SPECT folders have an MRI/ folder but no CT/: one problem per folder, not per image.
    assert sorted(problem.name for problem in report.problems) == ["pet-mri-test", "spect-mri-test"]
    assert all("no CT folder" in problem.reason for problem in report.problems)


def test_vis_ir_tree(vis_ir):
    report = find_pairs(vis_ir, task="vis-ir")
    assert report.problems == []
    by_dataset = {"roadscene": 0, "tno": 0}
    for pair in report.pairs:
        by_dataset[pair.name.split("/")[0]] += 1
        assert pair.roles == ("vis", "ir")
        assert pair.first.parent.name == "vi" and pair.second.parent.name == "ir"
    assert by_dataset == {"roadscene": 50, "tno": 25}


def test_vis_ir_folders_are_not_ct_mri_pairs(vis_ir):
    with pytest.raises(FuseError, match="no CT/MRI pairs found"):
        find_pairs(vis_ir, task="ct-mri")


def test_harvard_pair_loads_as_ct_and_mr(harvard_test):
    pair = find_pairs(harvard_test).pairs[0]
    ct, mri = load_pair(pair)
    assert (ct.modality, mri.modality) == ("CT", "MR")
    assert ct.pixels.shape == mri.pixels.shape == (256, 256)  # the RGB CT is read as gray


def test_vis_ir_pairs_load_registered(vis_ir):
    report = verify_pairs(find_pairs(vis_ir / "tno", task="vis-ir"))
    assert report.problems == []
    assert len(report.pairs) == 25
    vis, ir = load_pair(report.pairs[0])
    assert (vis.modality, ir.modality) == ("VIS", "IR")


# --- a tree the test builds ---------------------------------------------------------------------


def _png(path: Path, size=(32, 32), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture()
def messy_tree(tmp_path) -> Path:
    """Folder names in other cases, an unpaired name each way, an unreadable file, a size mismatch."""
    root = tmp_path / "scans"
    for name in ("a", "b", "unreadable", "mismatch"):
        _png(root / "ct" / f"{name}.png")
    for name in ("a", "b", "mismatch", "only_mri"):
        _png(root / "MR" / f"{name}.png", size=(40, 32) if name == "mismatch" else (32, 32))
    _png(root / "ct" / "only_ct.png")
    (root / "MR" / "unreadable.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    (root / "ct" / "notes.txt").write_text("scanned on a Tuesday")
    (root / "ct" / ".hidden.png").write_bytes(b"ignored")
    return root


def test_unpaired_and_odd_files_are_reported_by_name(messy_tree):
    report = find_pairs(messy_tree)
    assert [pair.name for pair in report.pairs] == ["a", "b", "mismatch", "unreadable"]
    problems = {problem.name: problem for problem in report.problems}
    assert set(problems) == {"notes.txt", "only_ct", "only_mri"}
    assert problems["only_ct"].reason == "no MRI for ct/only_ct.png"
    assert problems["only_mri"].reason == "no CT for MR/only_mri.png"
    assert problems["only_ct"].paths == (messy_tree / "ct" / "only_ct.png",)
    assert "not a scan" in problems["notes.txt"].reason
    assert str(problems["only_ct"]) == "only_ct: no MRI for ct/only_ct.png"


def test_verify_moves_unreadable_and_mismatched_pairs_to_problems(messy_tree):
    report = verify_pairs(find_pairs(messy_tree))
    assert [pair.name for pair in report.pairs] == ["a", "b"]
    problems = {problem.name: problem for problem in report.problems}
    assert {"unreadable", "mismatch", "only_ct", "only_mri", "notes.txt"} == set(problems)
    unreadable = problems["unreadable"].reason
    assert "ct/unreadable.png" in unreadable and "MR/unreadable.png" in unreadable
    mismatch = problems["mismatch"].reason
    assert "shapes differ" in mismatch and "ct/mismatch.png" in mismatch and "MR/mismatch.png" in mismatch


@pytest.mark.parametrize(
    ("name", "match"),
    [("unreadable", "cannot load the pair"), ("mismatch", "not registered: shapes differ")],
)
def test_load_pair_raises_fuse_error_naming_both_files(messy_tree, name, match):
    pair = next(pair for pair in find_pairs(messy_tree).pairs if pair.name == name)
    with pytest.raises(FuseError, match=match) as caught:
        load_pair(pair)
    assert str(pair.first) in str(caught.value) and str(pair.second) in str(caught.value)
    assert PairProblem.from_error(pair, caught.value).paths == (pair.first, pair.second)


def test_volume_and_dicom_layouts(tmp_path):
    root = tmp_path / "study"
    phantoms = write_phantoms(tmp_path / "phantoms")
    # per-case NIfTI volumes, one as .nii (uncompressed) under mr.*
    shutil.copytree(phantoms / "nifti" / "case01", root / "volumes" / "case01")
    case02 = root / "volumes" / "case02"
    case02.mkdir()
    shutil.copy(phantoms / "nifti" / "case01" / "ct.nii.gz", case02 / "CT.nii.gz")
    nib.save(nib.load(phantoms / "nifti" / "case01" / "mri.nii.gz"), case02 / "mr.nii")
    # a case with a CT volume only
    (root / "volumes" / "case03").mkdir()
    shutil.copy(phantoms / "nifti" / "case01" / "ct.nii.gz", root / "volumes" / "case03" / "ct.nii.gz")
    # per-case DICOM series, files renamed without a suffix (found by the DICM marker)
    series = root / "dicom" / "patient7"
    shutil.copytree(phantoms / "dicom" / "case01", series)
    for path in (series / "MRI").glob("*.dcm"):
        path.rename(path.with_suffix(""))
    # paired folders holding DICOM series folders by name
    shutil.copytree(phantoms / "dicom" / "case01" / "CT", root / "by-name" / "CT" / "scan1")
    shutil.copytree(phantoms / "dicom" / "case01" / "MRI", root / "by-name" / "MRI" / "scan1")
    # paired single DICOM files
    shutil.copy(get_testdata_file("CT_small.dcm"), _parent(root / "files" / "CT") / "x.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), _parent(root / "files" / "MRI") / "x.dcm")

    report = find_pairs(root)

    kinds = {pair.name: pair.kind for pair in report.pairs}
    assert kinds == {
        "by-name/scan1": "dicom-series",
        "dicom/patient7": "dicom-series",
        "files/x": "dicom-file",
        "volumes/case01": "nifti",
        "volumes/case02": "nifti",
    }
    assert [(problem.name, problem.reason) for problem in report.problems] == [
        ("volumes/case03", "no MRI scan beside ct.nii.gz")
    ]
    pairs = {pair.name: pair for pair in report.pairs}
    assert pairs["dicom/patient7"].first == series / "CT"
    for name in ("by-name/scan1", "dicom/patient7", "volumes/case01", "volumes/case02"):
        ct, mri = load_pair(pairs[name])
        assert ct.is_hu and ct.pixels.max() > 500
        np.testing.assert_allclose(ct.affine, mri.affine, atol=1e-4)
    # CT_small (128x128) and MR_small (64x64) are different scans, far apart in patient space: refused, both named.
    checked = verify_pairs(report)
    assert "files/x" not in {pair.name for pair in checked.pairs}
    problem = next(problem for problem in checked.problems if problem.name == "files/x")
    assert "do not overlap" in problem.reason and "CT/x.dcm" in problem.reason and "MRI/x.dcm" in problem.reason


def _parent(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_case_at_the_root_is_named_after_the_root(tmp_path):
    write_phantoms(tmp_path / "phantoms")
    report = find_pairs(tmp_path / "phantoms" / "dicom" / "case01")
    assert [(pair.name, pair.kind) for pair in report.pairs] == [("case01", "dicom-series")]


def test_series_beside_separate_files_is_a_problem(tmp_path):
    phantoms = write_phantoms(tmp_path / "phantoms")
    root = tmp_path / "mixed"
    shutil.copytree(phantoms / "dicom" / "case01" / "CT", root / "CT")
    _png(root / "MRI" / "CT_001.png")
    _png(root / "MRI" / "CT_002.png")
    report = find_pairs(root)
    assert report.pairs == []
    assert len(report.problems) == 1
    assert "CT/ holds one DICOM series but MRI/ holds separate scans" in report.problems[0].reason


def test_duplicate_stems_are_a_problem(tmp_path):
    _png(tmp_path / "CT" / "a.png")
    _png(tmp_path / "CT" / "a.tif")
    _png(tmp_path / "CT" / "b.png")
    _png(tmp_path / "MRI" / "a.png")
    _png(tmp_path / "MRI" / "b.png")
    report = find_pairs(tmp_path)
    assert [pair.name for pair in report.pairs] == ["b"]  # which "a" was meant is unknown: neither is fused
    assert [problem.name for problem in report.problems] == ["a"]
    assert "several scans named 'a' (a.png, a.tif)" in report.problems[0].reason


# --- bad arguments -------------------------------------------------------------------------------


def test_bad_roots_raise_fuse_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.png").write_bytes(b"")
    for root, match in [
        (tmp_path / "missing", "not a folder"),
        (tmp_path / "file.png", "not a folder"),
        (tmp_path / "empty", "no CT/MRI pairs found"),
    ]:
        with pytest.raises(FuseError, match=match) as caught:
            find_pairs(root)
        assert caught.value.path == root


@pytest.mark.parametrize("task", ["ct-pet", "CT-MRI", "", "mri-ct"])
def test_unknown_task_raises_value_error(tmp_path, task):
    with pytest.raises(ValueError, match="task must be one of"):
        find_pairs(tmp_path, task=task)


def test_load_pair_of_missing_files_names_both(tmp_path):
    pair = Pair("gone", tmp_path / "CT" / "gone.png", tmp_path / "MRI" / "gone.png", "image")
    with pytest.raises(FuseError, match="cannot load the pair") as caught:
        load_pair(pair)
    assert "CT/gone.png" in str(caught.value) and "MRI/gone.png" in str(caught.value)


# --- patient ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("2006", "20"),
        ("28015", "280"),
        ("20005", "200"),
        ("410", "4"),
        ("ct-mri-train/28015", "ct-mri-train/280"),
        ("11", "11"),
        ("case01", "case01"),
        ("roadscene/FLIR_00211", "roadscene/FLIR_00211"),
        ("volumes/case01", "volumes/case01"),
    ],
)
def test_patient_id(name, patient):
    assert patient_id(name) == patient


def test_harvard_train_has_eight_patients(harvard_train):
    patients = {patient_id(pair.name) for pair in find_pairs(harvard_train).pairs}
    assert patients == {"20", "200", "280", "320", "330", "340", "370", "410"}


def test_pairing_and_phantoms_import_no_torch():
    code = "import sys, fuse_runtime.pairing, fuse_runtime.phantoms; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

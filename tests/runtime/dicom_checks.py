"""Checks every test that writes DICOM runs: dicom3tools' dciodvfy, and SimpleITK reading the series back."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def assert_dciodvfy_clean(paths: Iterable[Path]) -> None:
    """Every file passes ``dciodvfy`` (dicom3tools) with no error; skipped with the reason when it is absent."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools; .ci/run installs it)")
    paths = list(paths)
    assert paths, "no DICOM files to check"
    for path in paths:
        run = subprocess.run([binary, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"dciodvfy {path}:\n" + "\n".join(errors)


def read_series(folder: Path) -> sitk.Image:
    """The DICOM series in ``folder`` as one SimpleITK volume (GDCM's file order)."""
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    assert len(names) == len(list(folder.glob("*.dcm"))), "SimpleITK does not see one series"
    return sitk.ReadImage(names)


def assert_same_geometry(image: sitk.Image, reference: sitk.Image, atol: float = 1e-3) -> None:
    """Same size, spacing, origin and direction (mm, within ``atol``)."""
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=atol)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=atol)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)

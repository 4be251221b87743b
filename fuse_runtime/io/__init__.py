"""Read medical and ordinary images into one ``Scan`` (float32 pixels + geometry + source metadata).

``read_scan(path, modality=None)`` is the entry point; one module per format does the work:

* ``images`` — PNG / TIFF / JPEG, 8 or 16 bit: pixels ``[H, W]`` as stored, colour → BT.601 luma;
  spacing ``(1, 1)``; no affine.
* ``dicom`` — one DICOM file: pixels ``[H, W]`` after the Modality LUT (CT in HU); spacing
  ``(row, col)`` mm from PixelSpacing; no affine (orientation and position kept in metadata).
* ``dicom_series`` — a folder with one series: pixels ``[S, H, W]`` sorted along the slice normal;
  spacing ``(slice, row, col)`` mm; affine index → LPS mm.
* ``nifti`` — ``.nii`` / ``.nii.gz``: pixels ``[S, H, W]`` axial (slice 0 inferior, rows
  anterior→posterior, columns right→left); spacing ``(slice, row, col)`` mm; affine index → LPS mm.
  ``nifti.to_source_layout`` and ``nifti.write_like`` put a result back onto the source grid exactly.

Every affine maps the returned index order ``(slice, row, col)`` to DICOM patient coordinates (LPS,
millimetres), whatever the format, so scans of one patient from different formats compare directly.
"""

from fuse_runtime.io.read import ACCEPTED_FORMATS, read_scan

__all__ = ["ACCEPTED_FORMATS", "read_scan"]

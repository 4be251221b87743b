"""Read ordinary 2-D images (PNG, TIFF, JPEG; 8 or 16 bits) with OpenCV into a Scan.

Rules:

* Decoded with ``cv2.IMREAD_UNCHANGED``, so 16-bit PNG/TIFF values arrive exactly as stored (no
  scaling to 8 bits, no EXIF rotation). A multi-page TIFF gives its first page.
* A colour image whose channels are all equal (the Harvard test PNGs: gray stored as 3 channels) is
  taken as gray exactly. Any other colour image becomes its ITU-R BT.601 luma,
  ``0.299 R + 0.587 G + 0.114 B`` — the weights of OpenCV's ``COLOR_BGR2GRAY`` and of the fusion
  metrics — computed in float32 without rounding. An alpha channel is dropped.
* ``bit_depth`` is 8 or 16 from the stored integer type (None for float TIFFs); ``spacing`` is
  ``(1.0, 1.0)`` (these formats carry no physical spacing); ``affine`` is None.
* A PNG's chunks (CRCs, compressed data, the closing IEND) are checked before OpenCV sees it, so a
  truncated or damaged PNG gives one FuseError and no ``libpng error:`` line on stderr.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from fuse_runtime.errors import FuseError
from fuse_runtime.io.modality import UNKNOWN, normalise_modality
from fuse_runtime.scan import Scan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BITS = {np.dtype(np.uint8): 8, np.dtype(np.int8): 8, np.dtype(np.uint16): 16, np.dtype(np.int16): 16}


def read_image(path: str | Path, modality: str | None = None) -> Scan:
    """Read a PNG/TIFF/JPEG file as a 2-D Scan: pixels float32 ``[H, W]`` in the stored value range.

    ``modality`` names what the image shows (``"CT"``, ``"MR"``...); default ``"OT"`` (unknown).
    Raises FuseError naming the file when it is empty, not an image, truncated or has an
    unsupported layout.
    """
    path = Path(path)
    code = normalise_modality(modality, path) or UNKNOWN
    raw = _decode(path)
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    gray, colour = _to_gray(raw, path)
    return Scan(
        pixels=gray,
        modality=code,
        source=path,
        source_format="image",
        is_hu=False,
        bit_depth=_BITS.get(raw.dtype),
        spacing=(1.0, 1.0),
        affine=None,
        metadata={"stored_dtype": str(raw.dtype), "channels": channels, "colour": colour},
    )


def _decode(path: Path) -> np.ndarray:
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise FuseError(f"cannot read the file ({error.strerror}): check the path and its permissions", path) from None
    if buffer.size == 0:
        raise FuseError("the file is empty: re-export or re-copy the image", path)
    damage = png_damage(buffer.tobytes()) if buffer[:8].tobytes() == PNG_SIGNATURE else None
    if damage is not None:
        raise FuseError(f"cannot decode this PNG, it is damaged ({damage}): re-export or re-copy the image", path)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FuseError(
            "OpenCV cannot decode this file as a PNG, TIFF or JPEG image (not an image, or truncated): "
            "re-export or re-copy it",
            path,
        )
    if image.ndim not in (2, 3) or image.size == 0:
        raise FuseError(f"unsupported image layout {image.shape}: save it as a 2-D gray or colour image", path)
    return image


def _to_gray(image: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """Return (float32 ``[H, W]``, how it was made: ``gray``, ``equal-channels`` or ``bt601-luma``)."""
    if image.ndim == 2:
        return image.astype(np.float32), "gray"
    channels = image.shape[2]
    if channels == 1:
        return image[..., 0].astype(np.float32), "gray"
    if channels not in (3, 4):
        raise FuseError(f"unsupported number of channels ({channels}): save it as gray or colour", path)
    colour = image[..., :3]
    if (colour == colour[..., :1]).all():
        return colour[..., 0].astype(np.float32), "equal-channels"
    return cv2.cvtColor(colour.astype(np.float32), cv2.COLOR_BGR2GRAY), "bt601-luma"


def png_damage(data: bytes) -> str | None:
    """Why a PNG file (signature already checked) cannot be decoded whole, or None when its chunks are sound.

    Walks the chunks checking each CRC, inflates the image data and requires the closing IEND chunk.
    """
    position, inflater = 8, zlib.decompressobj()
    while position + 12 <= len(data):
        (length,), kind = struct.unpack(">I", data[position : position + 4]), data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            return f"truncated inside its {kind.decode('latin-1')} chunk"
        body = data[position + 8 : end - 4]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[end - 4 : end])[0]:
            return f"checksum error in its {kind.decode('latin-1')} chunk"
        if kind == b"IDAT":
            try:
                while body:  # inflated in 1 MiB pieces, each dropped: memory stays small
                    inflater.decompress(body, 1 << 20)
                    body = inflater.unconsumed_tail
            except zlib.error:
                return "its compressed image data is corrupt"
        if kind == b"IEND":
            return None if inflater.eof else "its compressed image data ends early"
        position = end
    return "truncated: no IEND chunk"

"""The modality names a Scan carries, and the aliases callers may use for them."""

from __future__ import annotations

from pathlib import Path

from fuse_runtime.errors import FuseError

#: Modality codes a Scan carries (DICOM codes where DICOM has one).
MODALITIES = ("CT", "MR", "PT", "NM", "VIS", "IR", "OT")

#: Other spellings accepted from callers and command lines, case-insensitively.
ALIASES = {"MRI": "MR", "PET": "PT", "SPECT": "NM", "VI": "VIS", "VISIBLE": "VIS", "INFRARED": "IR"}

#: Modality of a scan whose file says nothing and whose caller gave none.
UNKNOWN = "OT"


def normalise_modality(modality: str | None, path: str | Path) -> str | None:
    """Upper-case ``modality`` and resolve aliases (``"mri"`` → ``"MR"``); None stays None.

    Raises FuseError naming ``path`` for a name that is neither a code nor an alias.
    """
    if modality is None:
        return None
    code = str(modality).strip().upper()
    code = ALIASES.get(code, code)
    if code not in MODALITIES:
        accepted = ", ".join(MODALITIES + tuple(ALIASES))
        raise FuseError(f"unknown modality {modality!r}: use one of {accepted}", path)
    return code

"""fuse_runtime.errors.first_line: the one-line reason every FuseError quotes from a library's exception."""

from __future__ import annotations

from fuse_runtime.errors import first_line, one_line


def test_first_non_blank_line_of_a_long_message() -> None:
    error = RuntimeError("\n  Error(s) in loading state_dict for FusionNet:  \n\tMissing key(s): head.weight\n")
    assert first_line(error) == "Error(s) in loading state_dict for FusionNet:"
    assert first_line(error, with_type=True) == "RuntimeError: Error(s) in loading state_dict for FusionNet:"


def test_empty_message_gives_the_type_and_long_lines_are_cut() -> None:
    assert first_line(ValueError()) == "ValueError" and first_line(ValueError(""), with_type=True) == "ValueError"
    cut = first_line(OSError("x" * 500), limit=40)
    assert len(cut) == 40 and cut.endswith("...")


def test_one_line_keeps_the_whole_message_on_one_line() -> None:
    error = RuntimeError(
        "Exception thrown in SimpleITK Execute:\n  /src/x.cxx:12:\n\tsitk::ERROR: too many samples outside"
    )
    assert (
        one_line(error) == "Exception thrown in SimpleITK Execute: /src/x.cxx:12: sitk::ERROR: too many samples outside"
    )

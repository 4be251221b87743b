"""The command-line options shared by the diagnostics that study one model on a validation folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click


def model_diagnostic_options(command: Callable) -> Callable:
    """The ``--data``, ``--checkpoint``, ``--engine`` and ``--out`` options of the diagnostics that
    study one model on a validation folder (departure, regions)."""
    options = (
        click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                     help="Folder of registered CT/MRI pairs (CT/ and MRI/), e.g. from scripts/validation_folder.py."),
        click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="fuse-train checkpoint."),
        click.option("--engine", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Exported model (ONNX)."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Folder for the report."),
    )
    for option in reversed(options):
        command = option(command)
    return command

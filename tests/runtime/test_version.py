"""``--version`` on every command prints the installed fuse version and exits 0."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import fuse_runtime
from fuse_export.cli import main as export_main
from fuse_runtime.cli import main as run_main
from fuse_runtime.version import package_version
from fuse_train.cli import main as train_main

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, command", [("fuse-train", train_main), ("fuse-export", export_main),
                                           ("fuse-run", run_main)])
def test_every_command_prints_its_version(name: str, command) -> None:
    result = CliRunner().invoke(command, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{name} {package_version()}"
    assert "--version" in CliRunner().invoke(command, ["--help"]).output


def test_version_is_the_installed_distributions_else_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert declared and fuse_runtime.__version__ == declared.group(1)  # one version, said twice
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {"fuse_runtime": ["renamed-fuse"]})
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.8.7" if name == "renamed-fuse" else "")
    assert package_version() == "9.8.7"
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {})
    assert package_version() == fuse_runtime.__version__

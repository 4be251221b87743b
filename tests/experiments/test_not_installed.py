"""experiments/ is research, not product: pyproject's package list leaves it out of the install."""

from __future__ import annotations

from pathlib import Path

import tomllib
from setuptools import find_packages

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_install_holds_the_product_packages_only() -> None:
    settings = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    installed = set(find_packages(where=str(REPO_ROOT), include=settings["include"]))
    assert {"fuse_runtime", "fuse_train", "fuse_export", "benchmarks"} <= installed
    assert (REPO_ROOT / "experiments" / "__init__.py").is_file()
    assert not any(name.split(".")[0] in ("experiments", "tests", "scripts") for name in installed)

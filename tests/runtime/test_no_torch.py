"""fuse_runtime never loads PyTorch (and TensorRT only for a .plan), checked in fresh interpreters."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

from engine_models import write_max_fusion_onnx

import fuse_runtime.errors

# (fuse_runtime.errors, not fuse_runtime: outside the repository the editable install may resolve the
# package as a namespace package without __file__.)
PACKAGE_DIR = Path(fuse_runtime.errors.__file__).parent
REPO_ROOT = PACKAGE_DIR.parent
FORBIDDEN = ("torch", "torchvision", "fuse_train", "fuse_export", "benchmarks")


def _fresh(code: str) -> str:
    # From the repository root, so ``import fuse_runtime`` runs the package's real __init__.py.
    prologue = "import fuse_runtime\nassert fuse_runtime.__file__, 'fuse_runtime/__init__.py was not run'\n"
    result = subprocess.run(
        [sys.executable, "-c", prologue + code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_loads_no_torch() -> None:
    loaded = _fresh(
        "import sys, fuse_runtime.cli, fuse_runtime.engines, fuse_runtime.pipeline, fuse_runtime.writers\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} + ('tensorrt',)))"
    )
    assert loaded == "[]"


def test_every_runtime_module_and_a_whole_run_load_no_torch(tmp_path: Path, harvard_test: Path) -> None:
    model = write_max_fusion_onnx(tmp_path / "model.onnx")
    names = sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="fuse_runtime."))
    code = f"""
import importlib, sys
for name in {names!r}:
    importlib.import_module(name)
from fuse_runtime.engines import open_engine
from fuse_runtime.pipeline import RunOptions, run
with open_engine({str(model)!r}, provider="cpu") as engine:
    report = run(engine, {str(harvard_test)!r}, {str(tmp_path / "out")!r}, RunOptions(progress=False, metrics=True))
assert report.counts["ok"] == 21, report.counts
print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} + ('tensorrt',)))
"""
    assert _fresh(code) == "[]"


def test_no_runtime_source_imports_torch_or_the_training_packages() -> None:
    offenders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            else:
                continue
            offenders += [f"{path.name}: {m}" for m in modules if m.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_only_the_tensorrt_engine_imports_tensorrt() -> None:
    importers = {
        path.relative_to(PACKAGE_DIR).as_posix()
        for path in PACKAGE_DIR.rglob("*.py")
        if "import tensorrt" in path.read_text() or "from cuda" in path.read_text()
    }
    assert importers == {"engines/tensorrt_engine.py"}

"""Every TensorRT name fuse uses exists in the real Python API of TensorRT 10 and 11, checked without a GPU.

The binding wheels ``tensorrt-cu12-bindings`` (the newest 10.x and 11.x, ~1.3 MB each) are fetched
once with ``pip download`` into a cache folder ($FUSE_WHEEL_CACHE, default ~/.cache/fuse/wheels); the
test skips with the reason when they cannot be fetched. Their extension module cannot be imported
without libnvinfer, so its string table is read instead: pybind11 keeps every class, method, enum
value and keyword name as a NUL-terminated string (the linker may share a name's bytes as the tail of
a longer one, so a name counts as present when ``name\\0`` occurs). Names defined in Python
(``nptype``, ``__version__``) are looked up among the top-level definitions of its ``__init__.py``.

The names used are collected from the source with ``ast``: every attribute read from ``tensorrt``
and from objects made from it (builder, network, config, engine, context, ...), and every keyword
passed to their methods. A name read through ``getattr(obj, "NAME", default)`` is optional.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("fuse_export/tensorrt_build.py", "fuse_runtime/engines/tensorrt_engine.py", "fuse_runtime/engines/nvidia.py")
VERSIONS = {"10": "10.16.1.11", "11": "11.4.0.106"}
PACKAGE = "tensorrt-cu12-bindings"
#: Functions whose result is a TensorRT object when an argument is one (``_started(lambda: trt.Builder(...))``).
PASS_THROUGH = {"_started", "shared_logger"}


def _cache() -> Path:
    return Path(os.environ.get("FUSE_WHEEL_CACHE", Path.home() / ".cache" / "fuse" / "wheels"))


def _wheel(version: str) -> Path:
    """The binding wheel of ``version`` from the cache, downloaded once; skips when it cannot be had."""
    cache = _cache()
    pattern = f"tensorrt_cu12_bindings-{version}-cp*-manylinux*x86_64.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--dest", str(cache),
        f"{PACKAGE}=={version}",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot download {PACKAGE}=={version}: {error}")
    found = sorted(cache.glob(pattern))
    if result.returncode != 0 or not found:
        pytest.skip(f"cannot download {PACKAGE}=={version}: {result.stderr.strip()[-300:]}")
    return found[0]


class Api:
    """The names one binding wheel offers."""

    def __init__(self, wheel: Path) -> None:
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            (extension,) = [n for n in names if re.search(r"tensorrt_bindings/tensorrt[^/]*\.so$", n)]
            self.binary = archive.read(extension)
            init = archive.read("tensorrt_bindings/__init__.py").decode("utf-8", "replace")
        self.python_names = _defined(ast.parse(init))

    def has(self, name: str) -> bool:
        return name.encode() + b"\0" in self.binary or name in self.python_names


def _defined(module: ast.Module) -> set[str]:
    """Names a Python module defines at its top level (functions, classes, assignments)."""
    names = set()
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name))
    return names


def used_names() -> tuple[set[str], set[str]]:
    """(required, optional) TensorRT names the source uses."""
    required: set[str] = set()
    optional: set[str] = set()
    for source in SOURCES:
        tree = ast.parse((ROOT / source).read_text())
        tainted = {"trt", "tensorrt", "self._trt"}
        for node in ast.walk(tree):  # parameters typed as TensorRT objects
            if isinstance(node, ast.arg) and node.annotation is not None and "trt." in ast.unparse(node.annotation):
                tainted.add(node.arg)
                required.update(a.attr for a in ast.walk(node.annotation) if isinstance(a, ast.Attribute))
        returns: set[str] = set()
        for _ in range(6):  # to a fixpoint: assignments, returns, methods returning TensorRT objects
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        for name, value in _pairs(target, node.value):
                            if name and _is_trt(value, tainted, returns):
                                tainted.add(name)
                if isinstance(node, ast.FunctionDef):
                    if any(isinstance(r, ast.Return) and r.value is not None and _is_trt(r.value, tainted, returns)
                           for r in ast.walk(node)):
                        returns.add(node.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_trt(node.value, tainted, returns):
                required.add(node.attr)
            if isinstance(node, ast.Call) and _is_trt(node.func, tainted, returns):
                required.update(k.arg for k in node.keywords if k.arg)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                    and len(node.args) == 3 and isinstance(node.args[1], ast.Constant)
                    and _is_trt(node.args[0], tainted, returns)):
                optional.add(node.args[1].value)
    return required, optional


def _key(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def _pairs(target: ast.AST, value: ast.AST):
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
        for t, v in zip(target.elts, value.elts):
            yield from _pairs(t, v)
    else:
        yield _key(target), value


def _is_trt(node: ast.AST, tainted: set[str], returns: set[str]) -> bool:
    key = _key(node)
    if key is not None and key in tainted:
        return True
    if isinstance(node, ast.Attribute):
        return _is_trt(node.value, tainted, returns)
    if isinstance(node, ast.IfExp):
        return _is_trt(node.body, tainted, returns) or _is_trt(node.orelse, tainted, returns)
    if isinstance(node, ast.Lambda):
        return _is_trt(node.body, tainted, returns)
    if isinstance(node, ast.Call):
        func = node.func
        if _is_trt(func, tainted, returns):
            return True
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in returns and (isinstance(func, ast.Name) or _key(func.value) == "self"):
            return True
        return name in PASS_THROUGH and any(_is_trt(arg, tainted, returns) for arg in node.args)
    return False


@pytest.fixture(scope="module", params=sorted(VERSIONS), ids=lambda major: f"tensorrt-{VERSIONS[major]}")
def api(request) -> tuple[str, Api]:
    return request.param, Api(_wheel(VERSIONS[request.param]))


def test_the_collector_finds_the_calls_fuse_makes() -> None:
    required, optional = used_names()
    assert {
        "Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config", "clear_flag", "TF32",
        "create_timing_cache", "set_timing_cache", "ignore_mismatch", "build_serialized_network", "Runtime",
        "deserialize_cuda_engine", "create_execution_context", "execute_async_v3", "get_tensor_profile_shape",
        "set_input_shape", "nptype", "TensorIOMode", "Logger", "WARNING", "IBuilderConfig",
    } <= required
    assert "FP16" in optional and "STRONGLY_TYPED" in optional


def test_every_tensorrt_name_fuse_uses_exists(api) -> None:
    major, bindings = api
    required, _ = used_names()
    missing = sorted(name for name in required if not bindings.has(name))
    assert missing == [], f"TensorRT {VERSIONS[major]} lacks {missing}"


def test_strong_typing_exists_so_builder_flag_fp16_is_never_needed(api) -> None:
    major, bindings = api
    required, _ = used_names()
    assert bindings.has("STRONGLY_TYPED")
    assert "FP16" not in required, (
        "BuilderFlag.FP16 may only be read as the fallback of a TensorRT without strong typing"
    )
    assert bindings.has("FP16") == (major == "10"), "TensorRT 11 removed BuilderFlag.FP16; the check must see that"
    assert not bindings.has("execute_async_v2") and not bindings.has("get_binding_shape"), (
        "names TensorRT 10 removed must read as missing"
    )

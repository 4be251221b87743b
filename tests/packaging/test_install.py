"""The declared requirements: one ONNX Runtime flavour and one CUDA major per environment.

Each environment a user can ask for (the base install alone, and the base plus each extra, with the
extras' references to this distribution resolved) is read from pyproject.toml and checked without
installing anything: TensorRT's libraries are not on the package index this machine reaches, so a
``pip install --dry-run`` of a GPU extra cannot resolve here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[2]

#: Versions that exist on the package index, and the CUDA major each was built for: enough to tell
#: which CUDA majors a specifier admits (onnxruntime-gpu moved from CUDA 12 to 13 at 1.27).
KNOWN_VERSIONS: dict[str, dict[str, int]] = {
    "onnxruntime-gpu": {
        **{v: 12 for v in ("1.20.0", "1.21.0", "1.22.0", "1.23.2", "1.24.4", "1.25.1", "1.26.0")},
        **{v: 13 for v in ("1.27.0", "1.28.0", "1.30.0", "1.31.1")},
    },
    "cuda-python": {
        **{v: 12 for v in ("12.3.0", "12.6.0", "12.8.0", "12.9.10")},
        **{v: 13 for v in ("13.0.0", "13.2.0", "13.4.4")},
    },
}
#: Packages whose CUDA major cannot be told from the requirement (the bare ``tensorrt`` meta package
#: follows whatever CUDA its newest build targets).
AMBIGUOUS = {"tensorrt", "tensorrt-libs", "tensorrt-bindings"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _environment(project: dict, extras: tuple[str, ...]) -> list[Requirement]:
    """Requirements of the base install plus ``extras``, self-references expanded."""
    own = project["name"]
    optional = project.get("optional-dependencies", {})
    requirements, pending, seen = [Requirement(r) for r in project["dependencies"]], list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"extra [{extra}] is referenced but not declared"
        for text in optional[extra]:
            requirement = Requirement(text)
            if requirement.name == own:
                pending.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


def cuda_majors(requirement: Requirement) -> set[int] | None:
    """CUDA majors this requirement can bring in; empty when CUDA-free, None when it cannot be told."""
    name = requirement.name.lower()
    if name in AMBIGUOUS:
        return None
    suffix = re.search(r"-cu(\d+)$", name)
    if suffix:
        return {int(suffix.group(1))}
    if name in KNOWN_VERSIONS:
        return {
            major
            for version, major in KNOWN_VERSIONS[name].items()
            if requirement.specifier.contains(Version(version), prereleases=True)
        }
    return set()


def problems(requirements: list[Requirement]) -> list[str]:
    """What is wrong with one environment's requirements (empty when it installs cleanly)."""
    names = {r.name.lower() for r in requirements}
    found = []
    if {"onnxruntime", "onnxruntime-gpu"} <= names:
        found.append("both onnxruntime and onnxruntime-gpu (they install the same module)")
    majors: set[int] = set()
    for requirement in requirements:
        admitted = cuda_majors(requirement)
        if admitted is None:
            found.append(f"{requirement} does not say which CUDA major it is built for")
        else:
            majors |= admitted
    if len(majors) > 1:
        found.append(f"CUDA majors mixed: {sorted(majors)}")
    return found


def environments() -> list[tuple[str, ...]]:
    return [(), *((extra,) for extra in _project().get("optional-dependencies", {}))]


@pytest.mark.parametrize("extras", environments(), ids=lambda e: "+".join(e) or "base")
def test_one_onnxruntime_flavour_and_one_cuda_major(extras: tuple[str, ...]) -> None:
    assert problems(_environment(_project(), extras)) == []


def test_checker_catches_the_old_declarations() -> None:
    """The declarations issue 18 reported: base onnxruntime + [gpu] onnxruntime-gpu, cuda-python>=12."""
    old = {
        "name": "fuse",
        "dependencies": ["numpy>=1.26", "onnxruntime>=1.20"],
        "optional-dependencies": {"gpu": ["onnxruntime-gpu>=1.20", "tensorrt>=10.0,<12", "cuda-python>=12"]},
    }
    found = problems(_environment(old, ("gpu",)))
    assert any("both onnxruntime" in p for p in found)
    assert any(p.startswith("tensorrt") and "which CUDA major" in p for p in found)
    assert "CUDA majors mixed: [12, 13]" in found


def test_each_onnxruntime_flavour_and_gpu_extra_exists() -> None:
    project = _project()
    assert project["name"] != "fuse", "the name fuse is another project's on the package index"
    assert not any(Requirement(r).name.startswith("onnxruntime") for r in project["dependencies"])
    cpu = {r.name for r in _environment(project, ("cpu",))}
    dev = {r.name for r in _environment(project, ("dev",))}
    assert "onnxruntime" in cpu and "onnxruntime" in dev, "the README's test command needs ONNX Runtime"
    for extra, major in (("gpu-cu12", 12), ("gpu-cu13", 13)):
        requirements = _environment(project, (extra,))
        names = {r.name for r in requirements}
        assert {"onnxruntime-gpu", "cuda-python"} <= names and any(n.startswith("tensorrt") for n in names)
        assert any("cudnn" in n for n in names)
        assert set().union(*(cuda_majors(r) or set() for r in requirements)) == {major}


def test_python_and_pytorch_ranges() -> None:
    project = _project()
    from packaging.specifiers import SpecifierSet

    python = SpecifierSet(project["requires-python"])
    assert all(python.contains(v) for v in ("3.10", "3.11", "3.12")) and not python.contains("3.13")
    train = {Requirement(r).name: Requirement(r) for r in project["optional-dependencies"]["train"]}
    assert not any(s.operator == "==" for s in train["torch"].specifier), "an exact pin forces a torch swap"
    pinned = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line
    )
    assert train["torch"].specifier.contains(pinned["torch"])
    assert train["torchvision"].specifier.contains(pinned["torchvision"])
    for script in (".ci/run", "scripts/demo.sh", "scripts/release_model.sh"):
        assert "-c constraints.txt" in (ROOT / script).read_text(), script


#: Standard-library names that Python 3.10 lacks.
PY311_ONLY = {("typing", "Self"), ("enum", "StrEnum"), ("datetime", "UTC"), ("asyncio", "TaskGroup")}


def test_code_parses_as_python_310() -> None:
    """No 3.11-only syntax (``except*``) or unguarded 3.11-only imports in the packages."""
    offenders = []
    for package in ("fuse_runtime", "fuse_export", "fuse_train", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path), feature_version=(3, 10))
            for node in ast.walk(tree):
                if isinstance(node, ast.TryStar):
                    offenders.append(f"{path}:{node.lineno} except*")
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    for alias in node.names:
                        if (node.module, alias.name) in PY311_ONLY:
                            offenders.append(f"{path}:{node.lineno} from {node.module} import {alias.name}")
                if isinstance(node, ast.Import) and any(a.name == "tomllib" for a in node.names):
                    offenders.append(f"{path}:{node.lineno} import tomllib")
    assert offenders == []

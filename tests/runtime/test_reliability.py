"""Reliability table: bad inputs and hostile sequences, each with its command, exit code, message and
the output folder's state afterwards (issue 20).

Every case runs a real command on real files (Harvard test PNGs, the phantom DICOM series and
NIfTI volumes, pydicom's shipped files) and then checks the output folder: no temporary file left,
no file fuse did not make changed or deleted (the case lists what a run may change), inputs
untouched. Ends with kill -9 at two moments of a run on a DICOM series study, and a re-run giving
the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from engine_models import write_max_fusion_onnx
from pydicom.data import get_testdata_file

from fuse_runtime.cli import main as fuse_run
from fuse_runtime.outlock import LOCK_NAME, OutputLock
from fuse_runtime.phantoms import write_phantoms

FUSE_RUN = [sys.executable, "-m", "fuse_runtime.cli"]
#: What any fuse-run may (re)write in --out besides the outputs a case names.
RUN_FILES = re.compile(r"^(report\.json|reports/.*|.*\.fuse\.json|\.fuse-run\.lock)$")


@dataclass
class World:
    """One case's folders: the engine, the input tree, the output folder and anything else it made."""

    root: Path
    engine: Path
    inp: Path
    out: Path
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One row: ``setup`` builds the world (earlier runs included); ``args`` the command (``{in}``,
    ``{out}``, ``{engine}``, ``{root}`` filled in); the exit code and a stderr/stdout fragment;
    ``changes``: output paths (regex) the command may write or replace; ``check``: anything else."""

    name: str
    setup: Callable[[World], None]
    args: tuple[str, ...]
    code: int
    message: str
    changes: str = r"$^"
    check: Callable[[World, str], None] | None = None
    command: str = "fuse-run"
    subprocess: bool = False


# --- building blocks -----------------------------------------------------------------------------------


def _harvard(harvard_test: Path, name: str) -> tuple[Path, Path]:
    return harvard_test / "CT" / f"{name}.png", harvard_test / "MRI" / f"{name}.png"


def _pair(world: World, folder: str, stem: str, source: str, suffix: str = ".png") -> None:
    ct, mri = _harvard(world.extra["harvard"], source)  # type: ignore[arg-type]
    for role, path in (("CT", ct), ("MRI", mri)):
        target = world.inp / folder / role / f"{stem}{suffix if role == 'CT' else '.png'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".png" or role == "MRI":
            shutil.copy2(path, target)
        else:
            cv2.imwrite(str(target), cv2.imread(str(path), cv2.IMREAD_UNCHANGED))


def _run_here(world: World, *extra: str) -> dict:
    result = CliRunner().invoke(fuse_run, ["--engine", str(world.engine), "--in", str(world.inp), "--out",
                                           str(world.out), "--quiet", *extra], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.stderr
    return json.loads((world.out / "report.json").read_text())


def _status(world: World) -> dict[str, dict]:
    return {pair["name"]: pair for pair in json.loads((world.out / "report.json").read_text())["pairs"]}


def _fused_png(world: World, ct: Path, mri: Path) -> bytes:
    """What the test engine makes of one PNG pair, fused alone in a fresh folder."""
    alone = world.root / f"alone-{ct.stem}"
    shutil.rmtree(alone, ignore_errors=True)
    for role, path in (("CT", ct), ("MRI", mri)):
        (alone / "in" / role).mkdir(parents=True)
        shutil.copy2(path, alone / "in" / role / "p.png")
    CliRunner().invoke(fuse_run, ["--engine", str(world.engine), "--in", str(alone / "in"), "--out",
                                  str(alone / "out"), "--quiet"], catch_exceptions=False)
    return (alone / "out" / "p.png").read_bytes()


# --- the cases ---------------------------------------------------------------------------------------


def _setup_good(world: World) -> None:
    _pair(world, "", "11", "11")


def _setup_renamed_pair_added(world: World) -> None:
    """Item 1: a_b fused, then ``a b`` added on both sides (another image), the same --out."""
    _pair(world, "", "a_b", "11")
    _run_here(world)
    world.extra["a_b"] = (world.out / "a_b.png").read_bytes()
    _pair(world, "", "a b", "12")


def _check_renamed_pair_added(world: World, _: str) -> None:
    status = _status(world)
    assert status["a_b"]["status"] == "skipped" and status["a b"]["status"] == "ok"
    assert status["a b"]["outputs"][0] != status["a_b"]["outputs"][0]
    assert (world.out / "a_b.png").read_bytes() == world.extra["a_b"]
    expected = _fused_png(world, world.inp / "CT" / "a b.png", world.inp / "MRI" / "a b.png")
    assert Path(status["a b"]["outputs"][0]).read_bytes() == expected != world.extra["a_b"]


def _setup_ambiguous(world: World) -> None:
    """Item 2: CT/x.png and CT/x.tif beside MRI/x.png."""
    _pair(world, "", "x", "11")
    _pair(world, "", "x", "11", suffix=".tif")
    _pair(world, "", "good", "12")


def _check_ambiguous(world: World, text: str) -> None:
    pairs = json.loads((world.out / "report.json").read_text())["pairs"]
    assert [p["name"] for p in pairs].count("x") == 1 and not (world.out / "x.png").exists()
    assert text.count("failed: x:") == 1


def _setup_ambiguity_resolved(world: World) -> None:
    """Item 2: x fused from x.png, then CT/x.png replaced by CT/x.tif (another image) as the message said."""
    _pair(world, "", "x", "11")
    _run_here(world)
    world.extra["x"] = (world.out / "x.png").read_bytes()
    (world.inp / "CT" / "x.png").unlink()
    cv2.imwrite(str(world.inp / "CT" / "x.tif"), cv2.imread(str(_harvard(world.extra["harvard"], "13")[0])))  # type: ignore[arg-type]


def _check_ambiguity_resolved(world: World, text: str) -> None:
    assert "note: x: redone: its inputs changed" in text
    status = _status(world)["x"]
    assert status["status"] == "ok" and "inputs changed" in status["note"]
    assert (world.out / "x.png").read_bytes() != world.extra["x"]


def _setup_foreign_output(world: World) -> None:
    """Item 1: a file fuse did not make sits at a pair's output name."""
    _pair(world, "", "11", "11")
    world.out.mkdir(parents=True)
    (world.out / "11.png").write_bytes(b"the user's own picture")


def _check_redone_for_options(world: World, _: str) -> None:
    status = _status(world)["11"]
    assert status["status"] == "ok" and "options changed" in status["note"]
    assert cv2.imread(str(world.out / "11.png"), cv2.IMREAD_UNCHANGED).ndim == 2  # gray now


def _setup_users_partial_files(world: World) -> None:
    """Item 3: a user's hidden files with `.partial` in their names, in --out."""
    _pair(world, "", "11", "11")
    world.out.mkdir(parents=True)
    (world.out / ".thesis.partial.tex").write_text("chapter 1")
    (world.out / ".drafts.partial").mkdir()
    (world.out / ".drafts.partial" / "notes.txt").write_text("keep")
    (world.out / ".11.png.abcd.partial.png").write_text("an untagged name: not fuse-run's")


def _setup_locked(world: World) -> None:
    """Item 3: another fuse-run holds --out (this process, through the lock)."""
    _pair(world, "", "11", "11")
    world.out.mkdir(parents=True)
    world.extra["lock"] = OutputLock(world.out, "20250101T000000-0badf00d").acquire()


def _check_locked(world: World, text: str) -> None:
    world.extra.pop("lock").release()  # type: ignore[attr-defined]
    assert f"pid {os.getpid()}" in text and "20250101T000000-0badf00d" in text
    assert not (world.out / "11.png").exists()


def _setup_second_run(world: World) -> None:
    """Item 4: a first run with metrics, then the same command again."""
    _pair(world, "", "11", "11")
    world.extra["first"] = _run_here(world, "--metrics")


def _check_second_run(world: World, _: str) -> None:
    first = world.extra["first"]
    kept = json.loads((world.out / "reports" / f"{first['run_id']}.json").read_text())  # type: ignore[index]
    assert kept == first and kept["pairs"][0]["metrics"]
    latest = _status(world)["11"]
    assert latest["status"] == "skipped" and latest["metrics"] == kept["pairs"][0]["metrics"]
    assert latest["made_by"] == first["run_id"]  # type: ignore[index]


def _setup_old_report(world: World) -> None:
    """Item 4: a report.json from an earlier fuse (no run id) in --out."""
    _pair(world, "", "11", "11")
    world.out.mkdir(parents=True)
    (world.out / "report.json").write_text('{"pairs": [{"name": "from before"}]}\n')


def _check_old_report(world: World, _: str) -> None:
    kept = list((world.out / "reports").glob("earlier-*.json"))
    assert len(kept) == 1 and "from before" in kept[0].read_text()


def _setup_series(world: World) -> None:
    write_phantoms(world.root / "phantoms")
    shutil.copytree(world.root / "phantoms" / "dicom", world.inp, dirs_exist_ok=True)
    world.extra["umask"] = os.umask(0o022)


def _check_series_mode(world: World, _: str) -> None:
    os.umask(world.extra.pop("umask"))  # type: ignore[arg-type]
    folder = world.out / "case01"
    assert (folder / "IM_00001.dcm").is_file()
    assert folder.stat().st_mode & 0o777 == 0o755  # what mkdir gives under umask 022, not mkdtemp's 0700


def _setup_series_with_junk(world: World) -> None:
    """Item 8: one non-DICOM .dcm inside a CT series folder."""
    write_phantoms(world.root / "phantoms")
    shutil.copytree(world.root / "phantoms" / "dicom", world.inp, dirs_exist_ok=True)
    (world.inp / "case01" / "CT" / "CT_999.dcm").write_text("not DICOM at all")


def _setup_series_with_foreign_slice(world: World) -> None:
    """Item 8: one slice of another series inside a CT series folder."""
    write_phantoms(world.root / "phantoms")
    shutil.copytree(world.root / "phantoms" / "dicom", world.inp, dirs_exist_ok=True)
    shutil.copy2(get_testdata_file("CT_small.dcm"), world.inp / "case01" / "CT" / "CT_999.dcm")


def _setup_truncated_png(world: World) -> None:
    """Item 10: a truncated PNG (libpng would print to stderr) beside a good pair."""
    _pair(world, "", "11", "11")
    _pair(world, "", "cut", "12")
    data = (world.inp / "CT" / "cut.png").read_bytes()
    (world.inp / "CT" / "cut.png").write_bytes(data[: len(data) // 2])


def _check_no_libpng(_: World, text: str) -> None:
    assert "libpng" not in text and "WARN" not in text


def _check_notice_once(_: World, text: str) -> None:
    assert text.count("not available in this onnxruntime build") == 1, text


def _setup_hidden_case(world: World) -> None:
    """Item 10: a case folder whose name starts with a dot, beside a visible one."""
    write_phantoms(world.root / "phantoms")
    shutil.copytree(world.root / "phantoms" / "nifti" / "case01", world.inp / ".case02")
    shutil.copytree(world.root / "phantoms" / "nifti" / "case01", world.inp / "case01")


def _setup_backslash(world: World) -> None:
    """Item 10: a folder named ``a\\b`` holding CT/ + MRI/."""
    _pair(world, "a\\b", "11", "11")


def _check_backslash(world: World, _: str) -> None:
    outputs = [p.relative_to(world.out).as_posix() for p in world.out.rglob("*.png")]
    assert len(outputs) == 1 and re.fullmatch(r"a_b/11-[0-9a-f]{8}\.png", outputs[0]), outputs
    assert not (world.out / "a").exists()


def _setup_out_is_file(world: World) -> None:
    _pair(world, "", "11", "11")
    world.out.parent.mkdir(parents=True, exist_ok=True)
    world.out.write_text("a file, not a folder")


def _setup_train_out_under_file(world: World) -> None:
    (world.root / "afile").write_text("a file")


def _setup_bad_checkpoint(world: World) -> None:
    (world.root / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))


def _check_bad_checkpoint(_: World, text: str) -> None:
    assert "weights_only" not in text and "Traceback" not in text


def _setup_bad_inputs(world: World) -> None:
    """The bad inputs of test_cli_run (constant, not a scan, truncated DICOM, unpaired, shapes) + one good."""
    _pair(world, "slices", "good", "11")
    ct_dir, mri_dir = world.inp / "slices" / "CT", world.inp / "slices" / "MRI"
    cv2.imwrite(str(ct_dir / "constant.png"), np.full((256, 256), 100, np.uint8))
    shutil.copy2(_harvard(world.extra["harvard"], "12")[1], mri_dir / "constant.png")  # type: ignore[arg-type]
    (ct_dir / "notes.txt").write_text("not an image")
    (mri_dir / "notes.txt").write_text("not an image")
    shutil.copy2(get_testdata_file("CT_small.dcm"), ct_dir / "truncated.dcm")
    shutil.copy2(get_testdata_file("MR_truncated.dcm"), mri_dir / "truncated.dcm")
    shutil.copy2(_harvard(world.extra["harvard"], "13")[0], ct_dir / "unpaired.png")  # type: ignore[arg-type]


def _check_bad_inputs(world: World, text: str) -> None:
    status = _status(world)
    assert status["slices/good"]["status"] == "ok"
    assert {name for name, entry in status.items() if entry["status"] == "failed"} == {
        "slices/constant", "slices/notes.txt", "slices/truncated", "slices/unpaired"}


STANDARD = ("--engine", "{engine}", "--in", "{in}", "--out", "{out}", "--quiet")
CASES = [
    Case("1 renamed pair added to a resumed run", _setup_renamed_pair_added, STANDARD, 0, "fused 1 pair(s)",
         changes=r"a_b-[0-9a-f]{8}\.png", check=_check_renamed_pair_added),
    Case("2 ambiguous stem is not fused", _setup_ambiguous, STANDARD, 1,
         "several scans named 'x' (x.png, x.tif); keep one",
         changes=r"good\.png", check=_check_ambiguous),
    Case("2 stale output of a deleted input is redone", _setup_ambiguity_resolved, STANDARD, 0, "fused 1 pair(s)",
         changes=r"x\.png", check=_check_ambiguity_resolved),
    Case("1 a file fuse did not make is refused, not replaced", _setup_foreign_output, STANDARD, 1,
         "exists but no fuse-run record says what made it"),
    Case("1 changed options redo an output", lambda w: (_setup_good(w), _run_here(w)), (*STANDARD, "--gray"), 0,
         "fused 1 pair(s)", changes=r"11\.png", check=_check_redone_for_options),
    Case("3 user's .partial files survive", _setup_users_partial_files, STANDARD, 0, "fused 1 pair(s)",
         changes=r"11\.png"),
    Case("3 a second run on a locked --out refuses", _setup_locked, STANDARD, 2,
         "is writing to this output folder; wait for it to finish, pass --wait", check=_check_locked),
    Case("4 a second run keeps the first run's report", _setup_second_run, STANDARD, 0, "1 skipped",
         check=_check_second_run),
    Case("4 an older report.json is kept", _setup_old_report, STANDARD, 0, "fused 1 pair(s)",
         changes=r"11\.png", check=_check_old_report),
    Case("5 series folders get the umask", _setup_series, STANDARD, 0, "fused 1 pair(s)",
         changes=r"case01/.*", check=_check_series_mode),
    Case("7 fuse-train --out under a file", _setup_train_out_under_file,
         ("--data", "{harvard}", "--out", "{root}/afile/run", "--epochs", "1", "--no-progress"), 2,
         "afile is a file, not a folder", command="fuse-train"),
    Case("7 fuse-train --out in a read-only place", lambda w: None,
         ("--data", "{harvard}", "--out", "/sys/fuse-train-run", "--epochs", "1", "--no-progress"), 2,
         "cannot be created or written", command="fuse-train"),
    Case("8 a non-DICOM .dcm in a series folder", _setup_series_with_junk, STANDARD, 1,
         "CT_999.dcm (not a readable DICOM file); move that out of CT/"),
    Case("8 a slice of another series in a series folder", _setup_series_with_foreign_slice, STANDARD, 1,
         "CT_999.dcm (a slice of another series); move that out of CT/"),
    Case("9 random bytes as a checkpoint", _setup_bad_checkpoint,
         ("--checkpoint", "{root}/random.pt", "--out", "{root}/export", "--onnx-only"), 2,
         "not a PyTorch checkpoint", command="fuse-export", check=_check_bad_checkpoint),
    Case("10 a truncated PNG prints no libpng noise", _setup_truncated_png, STANDARD, 1, "cannot decode this PNG",
         changes=r"11\.png", check=_check_no_libpng, subprocess=True),
    Case("10 the provider fall-back notice is shown once", _setup_good, (*STANDARD, "--provider", "cuda"), 0,
         "running on cpu instead", changes=r"11\.png", check=_check_notice_once, subprocess=True),
    Case("10 a hidden case folder is reported", _setup_hidden_case, STANDARD, 1,
         ".case02/ is hidden (its name starts with a dot) and was skipped", changes=r"case01\.nii\.gz"),
    Case("10 a backslash in a folder name stays one component", _setup_backslash, STANDARD, 0, "fused 1 pair(s)",
         changes=r"a_b/11-[0-9a-f]{8}\.png", check=_check_backslash),
    Case("missing input folder", lambda w: None, ("--engine", "{engine}", "--in", "{root}/nowhere", "--out", "{out}"),
         2, "input folder not found"),
    Case("--out inside --in", _setup_good, ("--engine", "{engine}", "--in", "{in}", "--out", "{in}/out"), 2,
         "the output folder is inside the input folder"),
    Case("--out is a file", _setup_out_is_file, STANDARD, 2, "is a file"),
    Case("--out under a file", _setup_out_is_file, ("--engine", "{engine}", "--in", "{in}", "--out", "{out}/run"), 2,
         "the output folder cannot be written (Not a directory)"),
    Case("missing engine", _setup_good, ("--engine", "{root}/none.onnx", "--in", "{in}", "--out", "{out}"), 2,
         "none.onnx"),
    Case("bad inputs beside a good pair", _setup_bad_inputs, STANDARD, 1, "failed: slices/constant:",
         changes=r"slices/good\.png", check=_check_bad_inputs),
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_max_fusion_onnx(tmp_path_factory.mktemp("engine") / "model.onnx", manifest=True)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def _invoke(case: Case, args: list[str]) -> tuple[int, str]:
    if case.command == "fuse-run" and case.subprocess:
        done = subprocess.run([*FUSE_RUN, *args], capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout + done.stderr
    if case.command == "fuse-run":
        result = CliRunner().invoke(fuse_run, args)
    elif case.command == "fuse-train":
        from fuse_train.cli import main as fuse_train

        result = CliRunner().invoke(fuse_train, args)
    else:
        from fuse_export.cli import main as fuse_export

        result = CliRunner().invoke(fuse_export, args)
    text = result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += f"\nTraceback: {type(result.exception).__name__}: {result.exception}"
    return result.exit_code, text


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, engine: Path, tmp_path: Path, harvard_test: Path, harvard_train: Path,
                   capfd: pytest.CaptureFixture[str]) -> None:
    world = World(tmp_path, engine, tmp_path / "in", tmp_path / "out", {"harvard": harvard_test})
    world.inp.mkdir()
    case.setup(world)
    inputs, before = _snapshot(world.inp), _snapshot(world.out)
    capfd.readouterr()
    fields = {"engine": str(engine), "in": str(world.inp), "out": str(world.out), "root": str(tmp_path),
              "harvard": str(harvard_train)}
    code, text = _invoke(case, [arg.format(**fields) for arg in case.args])
    captured = capfd.readouterr()
    text += captured.out + captured.err
    assert code == case.code, text
    assert case.message in text, text
    if case.check is not None:
        case.check(world, text)
    after = _snapshot(world.out)
    may_change = re.compile(f"{RUN_FILES.pattern}|^({case.changes})$")
    for name, content in before.items():
        assert name in after, f"{name} was deleted"
        assert after[name] == content or may_change.match(name), f"{name} was overwritten"
    new = [name for name in after if name not in before and not may_change.match(name) and after[name] is not None]
    assert new == [], "files the case did not expect were written"
    assert not [name for name in after if ".partial" in name and name not in before], "a temporary file was left"
    assert _snapshot(world.inp) == inputs, "an input changed"


def test_wait_queues_behind_the_running_owner(engine: Path, tmp_path: Path, harvard_test: Path) -> None:
    world = World(tmp_path, engine, tmp_path / "in", tmp_path / "out", {"harvard": harvard_test})
    _pair(world, "", "11", "11")
    world.out.mkdir()
    lock = OutputLock(world.out, "20250101T000000-0badf00d").acquire()
    threading.Timer(1.0, lock.release).start()
    started = time.monotonic()
    result = CliRunner().invoke(fuse_run, ["--engine", str(engine), "--in", str(world.inp), "--out", str(world.out),
                                           "--quiet", "--wait"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert time.monotonic() - started >= 1.0
    assert "waited for fuse-run 20250101T000000-0badf00d" in result.stderr
    assert json.loads((world.out / LOCK_NAME).read_text())["pid"] == os.getpid()


# --- kill -9 at two moments, then resume: the same bytes as an uninterrupted run -----------------------------


def _study(root: Path, cases: int) -> Path:
    """A DICOM series study (the phantom CT + MR series) repeated as ``cases`` case folders."""
    write_phantoms(root / "phantoms")
    study = root / "study"
    for index in range(1, cases + 1):
        shutil.copytree(root / "phantoms" / "dicom" / "case01", study / f"case{index:02d}")
    return study


def _finished(out: Path) -> int:
    return sum(1 for p in out.glob("case*") if p.is_dir() and not p.name.startswith("."))


def _kill_when(command: list[str], out: Path, finished: int) -> None:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _finished(out) < finished and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "fuse-run finished before it could be killed"


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))
            if not any(part.startswith(".") for part in p.relative_to(out).parts)}


def test_kill_9_twice_then_resume_gives_identical_bytes(engine: Path, tmp_path: Path) -> None:
    study, cases = _study(tmp_path, 8), 8
    out = tmp_path / "killed"
    command = [*FUSE_RUN, "--engine", str(engine), "--in", str(study), "--format", "png", "--batch-size", "1",
               "--workers", "1", "--threads", "1", "--quiet"]
    _kill_when([*command, "--out", str(out)], out, 1)
    first_kill = _finished(out)
    _kill_when([*command, "--out", str(out)], out, first_kill + 2)
    assert _finished(out) < cases
    resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["ok"] + report["totals"]["skipped"] == cases and report["totals"]["skipped"] >= 1
    clean = tmp_path / "clean"
    assert subprocess.run([*command, "--out", str(clean)], capture_output=True).returncode == 0
    assert _files(out) == _files(clean) and len(_files(clean)) == cases * 12
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    assert len(list((out / "reports").glob("*.json"))) == 1  # the killed runs wrote no report

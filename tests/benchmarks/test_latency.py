"""benchmarks.latency (the package) and benchmarks.flops: a whole run at 64 px on real pairs, two ONNX files side by
side, counted FLOPs against a hand count, the statistics, bf16 detection, the CLI and bad arguments.

No timing is asserted: only that every row is there, measured or with its reason, and that the
derived figures are consistent with each other."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from benchmarks import latency
from benchmarks.flops import ONNX_METHOD, count_torch_flops
from benchmarks.latency.models import artifacts_of, openvino_precision
from benchmarks.latency.profile import summarise
from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.checkpoint import save_checkpoint
from fuse_train.config import TrainConfig
from fuse_train.model import FusionNet

SIZE = 64
PAIRS = ("11", "17", "25")
BATCHES = (1, 2)
MEASURED_ON_CPU = (
    "pytorch-eager", "onnxruntime-cpu", "openvino-cpu", "openvino-cpu-throughput", "fuse-run", "fuse-run-openvino",
    "fuse-run-openvino-latency",
)


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _rows(result: dict, backend: str) -> list[dict]:
    return [row for row in result["rows"] if row["backend"] == backend]


@pytest.fixture(scope="module")
def small_data(harvard_test: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real Harvard pairs copied into a temporary tree (never into the repository)."""
    root = tmp_path_factory.mktemp("data")
    for folder in ("CT", "MRI"):
        (root / folder).mkdir()
        for name in PAIRS:
            shutil.copy(harvard_test / folder / f"{name}.png", root / folder / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ct-mri FusionNet checkpoint whose preprocessing runs the model at 64 px."""
    torch.manual_seed(0)
    config = TrainConfig(crop_size=SIZE, imagenet=False, preprocess=PreprocessConfig(image_size=SIZE))
    path = tmp_path_factory.mktemp("run") / "best.pt"
    return save_checkpoint(path, FusionNet(imagenet=False), config, epoch=1, val_loss=1.0)


@pytest.fixture(scope="module")
def full_run(checkpoint: Path, small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Every backend from a checkpoint alone (ONNX exported for the run, kept in R/export), one
    thread each (two on this shared 2-core box only contend); torch.compile is given 1 s, which it
    cannot meet, so its rows must carry the timeout as their reason. No warm-up here (emulated bf16
    is slow); the CLI test below checks warm-up calls are not timed."""
    out = tmp_path_factory.mktemp("R")
    config = latency.LatencyConfig(batches=BATCHES, warmup=0, iters=2, threads=1, compile_timeout_s=1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the export in this process, too
    try:
        result = latency.run_latency(
            out, checkpoint=checkpoint, data=small_data, config=config, export_dir=out / "export", progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    return out, result


@pytest.fixture(scope="module")
def net() -> FusionNet:
    return FusionNet(imagenet=False)


# --- a whole run ----------------------------------------------------------------------------------


def test_json_and_markdown_are_written_with_a_row_or_reason_for_every_backend(full_run):
    out, result = full_run
    data = _strict_json(out / latency.JSON_NAME)
    assert data["image_size"] == SIZE and data["batches"] == list(BATCHES)
    assert {row["backend"] for row in data["rows"]} == set(latency.BACKENDS)
    for row in data["rows"]:
        assert row["status"] in ("ok", "skipped", "failed")
        if row["status"] != "ok":
            assert row["reason"], row
    text = (out / latency.MARKDOWN_NAME).read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(data["rows"])
    for row in data["rows"]:
        assert f"| {row['label']} |" in text
    assert "| onnxruntime-cpu model.onnx |" in text and "| fuse-run model.onnx |" in text
    assert "GFLOP" in text and "## Machine" in text and data["machine"]["cpu"] in text


@pytest.mark.parametrize("backend", MEASURED_ON_CPU)
def test_cpu_backends_are_measured_at_every_batch(full_run, backend):
    _, result = full_run
    rows = _rows(result, backend)
    assert [row["batch"] for row in rows] == list(BATCHES)
    for row in rows:
        assert row["status"] == "ok", row["reason"]
        assert row["slices_per_s"] > 0 and row["peak_rss_mib"] > 0 and row["device"] == "cpu"
        assert row["label"] == backend + ("" if backend.startswith("pytorch") else " model.onnx")
        if not backend.startswith("fuse-run"):
            assert row["iterations"] == 2 and row["warmup"] == 0
            assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
            requests = row["details"].get("requests", 1)  # a throughput call runs one batch per request
            assert requests >= 1 and (requests == 1 or backend == "openvino-cpu-throughput")
            assert row["slices_per_s"] == pytest.approx(row["batch"] * requests * 1e3 / row["mean_ms"])
            assert row["setup_rss_mib"] <= row["peak_rss_mib"]
            assert row["threads"] == result["threads"] == 1


def test_fuse_run_rows_come_from_its_report(full_run):
    _, result = full_run
    for row in _rows(result, "fuse-run"):
        details = row["details"]
        assert details["ok"] == len(PAIRS) and details["failures"] == 0 and details["slices"] == len(PAIRS)
        assert details["provider"] == "cpu" and row["model"] == "model.onnx"
        assert f"--batch-size {row['batch']}" in details["command"] and "--threads 1" in details["command"]
        assert row["slices_per_s"] == pytest.approx(details["slices"] / details["wall_seconds"], rel=1e-3)


def test_openvino_rows_say_what_they_computed_in(full_run):
    """bf16 exactly where this CPU computes it natively (the engine's own choice), f32 elsewhere;
    the fuse-run row ran OpenVINO, not ONNX Runtime."""
    _, result = full_run
    expected = "bf16" if result["bf16"]["native"] else "fp32"
    for row in _rows(result, "openvino-cpu") + _rows(result, "openvino-cpu-throughput"):
        assert row["precision"] == expected and "OpenVINO" in row["details"]["engine"]
        assert any("OpenVINO CPU" in notice for notice in row["details"]["notices"])
        mode = "latency" if row["backend"] == "openvino-cpu" else "throughput"
        assert f"..any, {mode}" in row["details"]["engine"]
    for row in _rows(result, "fuse-run-openvino") + _rows(result, "fuse-run-openvino-latency"):
        assert row["precision"] == expected and row["details"]["engine"].startswith("OpenVINO")
        assert "--backend openvino" in row["details"]["command"]
        latency_mode = row["backend"].endswith("-latency")
        assert ("--streams 1" in row["details"]["command"]) == latency_mode
        assert row["details"]["engine"].endswith("latency") == latency_mode
    for row in _rows(result, "fuse-run"):
        assert "--backend auto" in row["details"]["command"] and "ONNX Runtime" in row["details"]["engine"]


def test_the_openvino_latency_row_at_the_largest_batch_carries_its_profile(full_run):
    out, result = full_run
    rows = {row["batch"]: row for row in _rows(result, "openvino-cpu")}
    profile = rows[max(BATCHES)]["details"]["profile"]
    assert all("profile" not in row["details"] for batch, row in rows.items() if batch != max(BATCHES))
    assert profile["batch"] == max(BATCHES) and profile["ms_per_slice"] > 0 and profile["layers"] > 10
    assert sum(group["share"] for group in profile["groups"]) == pytest.approx(1.0)
    assert profile["groups"][0]["type"] in ("Convolution", "other")
    assert f"### Profile: openvino-cpu model.onnx, batch {max(BATCHES)}" in (out / latency.MARKDOWN_NAME).read_text()


def test_profile_summary_sums_by_operation_and_kernel():
    layers = [
        {"type": "Convolution", "exec_type": "brgconv_avx512_amx_I8", "ms": 6.0},
        {"type": "Convolution", "exec_type": "brgconv_avx512_amx_I8", "ms": 2.0},
        {"type": "Reorder", "exec_type": "ref_any_f32", "ms": 1.0},
        {"type": "Interpolate", "exec_type": "jit_avx512_f32", "ms": 1.0},
    ]
    summary = summarise(layers, batch=2, top=2)
    assert summary["ms_per_slice"] == 5.0 and summary["layers"] == 4
    assert [(g["type"], g["ms_per_slice"]) for g in summary["groups"]] == [
        ("Convolution", 4.0), ("Reorder", 0.5), ("other", 0.5)
    ]
    assert summary["int8_share"] == 0.8 and summary["reorder_share"] == 0.1 and summary["reference_share"] == 0.1
    with pytest.raises(ValueError, match="at least one layer"):
        summarise([], batch=1)


@pytest.mark.parametrize(
    ("file_precision", "description", "expected"),
    [
        ("fp32", "OpenVINO 2026.4.1 (cpu, bf16) model.onnx: 64x64, batch 1..any", "bf16"),
        ("int8", "OpenVINO 2026.4.1 (cpu, bf16) model.int8.onnx: 64x64, batch 1..any", "int8 + bf16"),
        ("fp32", "OpenVINO 2026.4.1 (cpu, f32) model.onnx: 64x64, batch 1..any", "fp32"),
        ("int8", "OpenVINO 2026.4.1 (cpu, f32) model.int8.onnx: 64x64, batch 1..any", "int8"),
    ],
)
def test_openvino_precision_labels(file_precision, description, expected):
    assert openvino_precision(file_precision, description) == expected


def test_bf16_autocast_is_labelled_and_limited_as_the_cpu_demands(full_run):
    _, result = full_run
    rows = {row["batch"]: row for row in _rows(result, "pytorch-autocast")}
    support = latency.cpu_bf16_support()
    assert result["bf16"]["native"] == support.native
    if support.native:
        assert all(row["status"] == "ok" and row["precision"] == "bf16 (native)" for row in rows.values())
    else:
        assert rows[1]["status"] == "ok" and rows[1]["precision"] == "bf16 (emulated)"
        assert rows[1]["iterations"] == 1 and rows[1]["details"]["autocast"].startswith("torch.autocast('cpu'")
        assert rows[2]["status"] == "skipped" and "--emulated-bf16-batch" in rows[2]["reason"]


def test_torch_compile_past_its_time_limit_is_recorded_not_raised(full_run):
    _, result = full_run
    rows = _rows(result, "pytorch-compile")
    assert [row["batch"] for row in rows] == list(BATCHES)
    for row in rows:
        assert row["status"] == "failed" and "within 1 s" in row["reason"] and "--compile-timeout" in row["reason"]


def test_gpu_backends_are_measured_or_say_why_not(full_run):
    _, result = full_run
    (cuda,) = _rows(result, "onnxruntime-cuda")
    (plan,) = _rows(result, "tensorrt")
    assert plan["status"] == "skipped" and "--engine" in plan["reason"]
    if not torch.cuda.is_available():
        assert cuda["status"] == "skipped" and ("CUDA" in cuda["reason"] or "GPU" in cuda["reason"])


def test_flops_are_counted_and_drive_gflops(full_run, net):
    _, result = full_run
    flops = result["flops"]
    hand = _hand_count(net, SIZE)
    assert flops["per_slice"] == hand > 0
    assert flops["onnx_per_slice"] == flops["per_slice"]  # the exported graph, counted independently
    for row in result["rows"]:
        if row["slices_per_s"] is not None:
            assert row["gflop_per_s"] == pytest.approx(flops["per_slice"] * row["slices_per_s"] / 1e9)
        else:
            assert row["gflop_per_s"] is None


def test_the_export_was_made_with_fuse_export_and_kept_where_asked(full_run):
    out, result = full_run
    assert result["export"]["parity_passed"] and result["export"]["kept"]
    assert (out / "export" / "model.onnx").is_file() and (out / "export" / "manifest.json").is_file()
    assert result["onnx"] == [str(out / "export" / "model.onnx")]


# --- FLOPs ----------------------------------------------------------------------------------------


def _hand_count(model: nn.Module, size: int) -> int:
    """2 FLOPs per multiply–add, from each layer's own shapes (forward hooks), no FlopCounterMode."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            kh, kw = module.kernel_size
            total += 2 * inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features

    shadow = copy.deepcopy(model).to("meta").eval()  # shapes only: no arithmetic needed
    for layer in shadow.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            layer.register_forward_hook(hook)
    with torch.no_grad():
        shadow(torch.zeros(1, 3, size, size, device="meta"), torch.zeros(1, 1, size, size, device="meta"))
    return total


@pytest.mark.parametrize("size", [64, 96])
def test_torch_flop_count_equals_the_hand_count(net, size):
    counted = count_torch_flops(net, size)
    assert counted.per_slice == _hand_count(net, size)
    assert counted.image_size == size and sum(counted.by_operator.values()) == counted.per_slice


def test_convolution_flops_scale_with_the_area_and_the_attention_matmuls_do_not(net):
    small, large = count_torch_flops(net, 64), count_torch_flops(net, 128)
    conv = "aten.convolution"
    assert large.by_operator[conv] == 4 * small.by_operator[conv]
    assert large.by_operator["aten.mm"] == small.by_operator["aten.mm"] > 0
    # The channel attention's two bias-free linears per fusion block, for CT and MRI: C·C/16 each way.
    channels = (64, 128, 256, 512)
    assert small.by_operator["aten.mm"] == sum(2 * 2 * 2 * c * (c // 16) for c in channels)
    # First layer by hand: CT conv1 is 7×7, 3→64, stride 2 → 64 × 32 × 32 outputs.
    assert small.by_operator[conv] > 2 * 64 * 32 * 32 * 3 * 49


def test_flop_count_leaves_the_model_as_it_was(net):
    net.train()
    weight = next(net.parameters())
    before = weight.detach().clone()
    count_torch_flops(net, 64)
    assert net.training and weight.device.type == "cpu"
    torch.testing.assert_close(weight.detach(), before, rtol=0, atol=0)
    net.eval()


@pytest.mark.parametrize("size", [0, 48, 100])
def test_flop_count_refuses_sizes_the_network_cannot_take(net, size):
    with pytest.raises(ValueError, match="multiple of 32"):
        count_torch_flops(net, size)


# --- statistics, inputs, bf16 detection -------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "batch", "expected"),
    [
        ([0.1], 1, {"p50_ms": 100.0, "p99_ms": 100.0, "mean_ms": 100.0, "slices_per_s": 10.0}),
        ([0.1, 0.2, 0.3, 0.4], 4, {"p50_ms": 250.0, "p95_ms": 385.0, "min_ms": 100.0, "slices_per_s": 16.0}),
        ([0.2, 0.2, 1.0], 2, {"p50_ms": 200.0, "mean_ms": 466.667, "slices_per_s": 2 / 0.466667}),
    ],
)
def test_latency_stats(seconds, batch, expected):
    stats = latency.latency_stats(seconds, batch)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-4)


def test_latency_stats_needs_a_timed_call():
    with pytest.raises(ValueError, match="no timed calls"):
        latency.latency_stats([], 1)


def test_batches_cycle_through_the_real_slices(small_data):
    ct, mri, names = latency.load_inputs(small_data, PreprocessConfig(image_size=SIZE), 8)
    assert names == sorted(PAIRS) and ct.shape == (3, 3, SIZE, SIZE) and mri.shape == (3, 1, SIZE, SIZE)
    assert 0 <= ct.min() and ct.max() <= 1 and ct.dtype == np.float32
    batch_ct, batch_mri = latency.batch_inputs(ct, mri, 5)
    assert batch_ct.shape == (5, 3, SIZE, SIZE) and batch_mri.shape == (5, 1, SIZE, SIZE)
    np.testing.assert_array_equal(batch_ct[3], ct[0])
    np.testing.assert_array_equal(batch_mri[4], mri[1])


def test_inputs_from_a_folder_without_pairs_raise(tmp_path):
    with pytest.raises(FuseError, match="no CT/MRI pairs found"):
        latency.load_inputs(tmp_path, PreprocessConfig(image_size=SIZE), 1)


def test_inputs_from_unreadable_pairs_raise_with_the_reason(tmp_path):
    for folder in ("CT", "MRI"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "1.png").write_bytes(b"not a png")
    with pytest.raises(FuseError, match="no usable CT/MRI pair .*1"):
        latency.load_inputs(tmp_path, PreprocessConfig(image_size=SIZE), 1)


@pytest.mark.parametrize(
    ("cpuinfo", "native", "words"),
    [
        ("flags\t\t: fpu sse4_2 avx avx2 fma\n", False, "widest SIMD: avx2"),
        ("flags\t\t: fpu avx2 avx512f avx512_bf16\n", True, "avx512_bf16"),
        ("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n", True, "amx_bf16"),
        ("Features\t: fp asimd bf16 i8mm\n", True, "bf16"),
        ("Features\t: fp asimd\n", False, "widest SIMD: asimd"),
        ("", False, "none found"),
    ],
)
def test_bf16_support_is_read_from_the_cpu_flags(tmp_path, cpuinfo, native, words):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    support = latency.cpu_bf16_support(path)
    assert support.native is native
    assert words in support.description


# --- configuration, CLI, bad arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batches": ()}, "batches"),
        ({"batches": (0, 2)}, "batches"),
        ({"image_size": 100}, "multiple of 32"),
        ({"warmup": -1}, "warmup"),
        ({"iters": 0}, "iters"),
        ({"threads": 0}, "threads"),
        ({"emulated_bf16_max_batch": 0}, "emulated_bf16_max_batch"),
        ({"emulated_bf16_iters": 0}, "emulated_bf16_iters"),
        ({"compile_timeout_s": 0}, "compile_timeout_s"),
        ({"timeout_s": -1.0}, "timeout_s"),
        ({"backends": ("pytorch-eager", "openvino")}, "backends"),
    ],
)
def test_bad_configuration_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        latency.LatencyConfig(**changes)


def test_configuration_sorts_and_deduplicates_batches():
    assert latency.LatencyConfig(batches=(8, 1, 4, 1)).batches == (1, 4, 8)


@pytest.mark.parametrize("text", ["", "0", "1,-2", "a,b", "1,,2", "1.5"])
def test_parse_batches_refuses(text):
    with pytest.raises(FuseError, match="--batch"):
        latency.parse_batches(text)


def test_parse_backends():
    assert latency.parse_backends("all") == latency.BACKENDS
    assert latency.parse_backends("fuse-run, onnxruntime-cpu") == ("fuse-run", "onnxruntime-cpu")
    with pytest.raises(FuseError, match="openvino"):
        latency.parse_backends("openvino")


def test_cli_help_explains_every_option():
    result = CliRunner().invoke(latency.main, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--checkpoint", "--onnx", "--engine", "--data", "--batch", "--image-size", "--warmup", "--iters",
        "--threads", "--backends", "--emulated-bf16-batch", "--emulated-bf16-iters", "--compile-timeout",
        "--timeout", "--export-dir", "--out", "--quiet",
    ):
        assert option in result.output


@pytest.mark.parametrize(
    ("arguments", "exit_code", "message"),
    [
        ([], 1, "nothing to measure"),
        (["--checkpoint", "missing.pt"], 1, "checkpoint not found"),
        (["--onnx", "missing.onnx"], 1, "onnx not found"),
        (["--engine", "{checkpoint}"], 1, "TensorRT plan"),
        (["--onnx", "{checkpoint}"], 1, "--onnx takes an ONNX file"),
        (["--onnx", "{onnx}", "--onnx", "missing.int8.onnx"], 1, "onnx not found"),
        (["--checkpoint", "{checkpoint}", "--data", "missing-folder"], 1, "data folder not found"),
        (["--checkpoint", "{checkpoint}", "--batch", "0"], 2, "--batch"),
        (["--checkpoint", "{checkpoint}", "--batch", "one"], 2, "--batch"),
        (["--checkpoint", "{checkpoint}", "--image-size", "100"], 2, "multiple of 32"),
        (["--checkpoint", "{checkpoint}", "--backends", "openvino"], 2, "openvino"),
        (["--checkpoint", "{checkpoint}", "--iters", "0"], 2, "--iters"),
        (["--checkpoint", "{checkpoint}", "--compile-timeout", "0"], 2, "--compile-timeout"),
        (["--onnx", "{onnx}", "--image-size", "128"], 1, "takes 64×64 px"),
    ],
)
def test_cli_bad_arguments_fail_without_traceback(
    full_run, checkpoint, small_data, tmp_path, arguments, exit_code, message
):
    onnx = full_run[0] / "export" / "model.onnx"
    arguments = [a.format(checkpoint=checkpoint, onnx=onnx) for a in arguments]
    if "--data" not in arguments:
        arguments += ["--data", str(small_data)]
    out = tmp_path / "R"
    result = CliRunner().invoke(latency.main, [*arguments, "--out", str(out)])
    assert result.exit_code == exit_code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_measures_every_onnx_file_on_its_own_rows(full_run, small_data, tmp_path):
    """Two ONNX files (the export and a hard link of it under another name, with no manifest beside
    it, so its settings come from the ONNX metadata): each gets its own ONNX Runtime and fuse-run rows,
    labelled with its file name; FLOPs are counted on the graph when there is no checkpoint."""
    export, first = full_run[0] / "export", full_run[1]
    second = tmp_path / "int8" / "model.int8.onnx"
    second.parent.mkdir()
    os.link(export / "model.onnx", second)
    out = tmp_path / "R"
    arguments = ["--onnx", str(export / "model.onnx"), "--onnx", str(second), "--data", str(small_data),
                 "--batch", "3", "--iters", "1", "--warmup", "2", "--threads", "1", "--quiet", "--out", str(out),
                 "--backends", "pytorch-eager,onnxruntime-cpu,fuse-run"]
    result = CliRunner().invoke(latency.main, arguments)
    assert result.exit_code == 0, result.output
    assert str(out / latency.MARKDOWN_NAME) in result.output
    data = _strict_json(out / latency.JSON_NAME)
    assert "python -m benchmarks.latency" in data["command"]
    assert data["threads"] == 1 and data["machine"]["threads"] == 1
    assert data["onnx"] == [str(export / "model.onnx"), str(second)]
    rows = {row["label"]: row for row in data["rows"]}
    assert rows["pytorch-eager"]["status"] == "skipped" and "--checkpoint" in rows["pytorch-eager"]["reason"]
    text = (out / latency.MARKDOWN_NAME).read_text()
    for name in ("model.onnx", "model.int8.onnx"):
        ort = rows[f"onnxruntime-cpu {name}"]
        assert ort["status"] == "ok" and ort["model"] == name and ort["batch"] == 3
        assert ort["warmup"] == 2 and ort["iterations"] == 1 and name in ort["details"]["engine"]
        assert ort["details"]["first_call_s"] > 0 and ort["p50_ms"] == ort["p99_ms"] == ort["mean_ms"]
        run = rows[f"fuse-run {name}"]
        assert run["status"] == "ok" and run["details"]["ok"] == len(PAIRS) and name in run["details"]["engine"]
        assert f"| onnxruntime-cpu {name} |" in text and f"| fuse-run {name} |" in text
    assert len(data["rows"]) == len(latency.BACKENDS) + 2
    others = set(latency.BACKENDS) - {"pytorch-eager", "onnxruntime-cpu", "fuse-run"}
    assert all(rows[name]["status"] == "skipped" and "not selected" in rows[name]["reason"] for name in others)
    assert data["flops"]["method"] == ONNX_METHOD
    assert data["flops"]["per_slice"] == first["flops"]["per_slice"]


def test_files_with_the_same_name_are_labelled_by_path(full_run, tmp_path):
    export = full_run[0] / "export"
    other = tmp_path / "other" / "model.onnx"
    other.parent.mkdir()
    os.link(export / "model.onnx", other)
    artifacts = artifacts_of([export / "model.onnx", other], None)
    assert [a.name for a in artifacts] == [str(export / "model.onnx"), str(other)]
    assert all(a.image_size == SIZE and a.precision == "fp32" for a in artifacts)


# --- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible (torch.cuda.is_available() is False)")
def test_pytorch_rows_on_cuda_report_device_memory(checkpoint, small_data, tmp_path):
    config = latency.LatencyConfig(batches=(1,), warmup=1, iters=1, backends=("pytorch-eager", "pytorch-autocast"))
    result = latency.run_latency(tmp_path / "R", checkpoint=checkpoint, data=small_data, config=config, progress=False)
    for backend, precision in (("pytorch-eager", "fp32"), ("pytorch-autocast", "fp16")):
        (row,) = _rows(result, backend)
        assert row["status"] == "ok", row["reason"]
        assert row["precision"] == precision and row["device"] != "cpu"
        assert row["peak_device_mib"] > 0 and row["device_memory_method"] == "torch.cuda.max_memory_allocated"

"""OpenVINO engine for ``model.onnx`` (or the INT8 ``model.int8.onnx``) on the CPU, bf16 where native.

OpenVINO reads the ONNX file written by fuse-export directly (no conversion step, no extra
artifact), including the QDQ INT8 graph, whose QuantizeLinear/DequantizeLinear pairs it fuses into
its own integer kernels. ``openvino`` is an optional extra (``pip install 'fuse-ctmri[openvino]'``) and is
imported only when this engine is opened.

Precision: OpenVINO's CPU plugin computes in bf16 when asked through ``INFERENCE_PRECISION_HINT``
(and by default on CPUs with AMX). fuse asks for bf16 only where the CPU computes it natively
(:func:`fuse_runtime.cpu_features.native_bf16`: AVX512-BF16, AMX-BF16 or Arm BF16, and OpenVINO
lists BF16 in the device's ``OPTIMIZATION_CAPABILITIES``); everywhere else it asks for f32 explicitly, so the output
matches ONNX Runtime's FP32 within float rounding. ``notices`` says which was chosen and why.
bf16 keeps an 8-bit mantissa: expect differences of the order of 1e-2 to FP32 where it is used.

Streams: ``streams=1`` (the default, for single pairs and the Python API) compiles with the latency
hint and one stream, so each ``infer`` call uses every thread. ``streams=0`` (what ``fuse-run`` asks
for on folders) compiles with the throughput hint and lets OpenVINO choose the streams; ``streams=N``
asks for N. Each stream owns ``threads / streams`` threads (``INFERENCE_NUM_THREADS`` is the total;
None: one per physical core), and the engine keeps OpenVINO's optimal number of asynchronous infer
requests (``OPTIMAL_NUMBER_OF_INFER_REQUESTS``, at least one per stream): ``submit`` starts a batch
on an idle request and returns at once, so a caller that keeps ``in_flight`` batches submitted runs
them side by side, one per stream, with no Python thread per request. Small convolutions scale
poorly over threads; streams run whole batches in parallel instead.


Batch: the graph's batch axis stays dynamic; OpenVINO compiles the model once and runs any N.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fuse_runtime.cpu_features import CPUINFO, native_bf16
from fuse_runtime.engines.base import (
    REEXPORT_HINT,
    UNBOUNDED_BATCH,
    Engine,
    Pending,
    check_signature,
    model_settings,
)
from fuse_runtime.errors import FuseError, first_line
from fuse_runtime.manifest import INPUT_FIRST, INPUT_SECOND, OUTPUT
from fuse_runtime.preprocess import PreprocessConfig

Precision = Literal["auto", "f32", "bf16"]
PRECISIONS = ("auto", "f32", "bf16")
DEVICE = "CPU"
INSTALL_HINT = "install it with pip install 'fuse-ctmri[openvino]', or use --backend onnxruntime"


class OpenVinoEngine(Engine):
    """Runs an exported ONNX model with OpenVINO on the CPU.

    threads: inference threads (None: OpenVINO's default, one per physical core).
    precision: ``auto`` (bf16 where native, else f32), ``f32``, or ``bf16`` (used only where native;
        elsewhere f32 with a notice, since OpenVINO would emulate it far slower than f32).
    cpuinfo: where the CPU flags are read (a path or the text itself; tests pass other CPUs' flags).
    streams: 1 (latency: one stream, every thread on each call), 0 (throughput: OpenVINO chooses the
        streams) or N >= 2 streams; see the module docstring.
    perf_count: collect OpenVINO's per-layer timings, for ``profile`` (slower; benchmarks only).
    """

    backend = "openvino"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        precision: Precision = "auto",
        cpuinfo: str | Path = CPUINFO,
        streams: int = 1,
        perf_count: bool = False,
    ) -> None:
        self.path = Path(path)
        self.notices = []
        self.provider = "cpu"
        if precision not in PRECISIONS:
            raise FuseError(f"unknown OpenVINO precision {precision!r}; use one of {', '.join(PRECISIONS)}", self.path)
        if threads is not None and threads < 1:
            raise FuseError(f"threads must be >= 1, got {threads}", self.path)
        if streams < 0:
            raise FuseError(f"streams must be 0 (OpenVINO chooses) or >= 1, got {streams}", self.path)
        self._ov = _import_openvino(self.path)
        core = self._ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as error:  # OpenVINO raises RuntimeError subclasses for bad files
            raise FuseError(
                f"OpenVINO cannot read the model ({first_line(error)}); {REEXPORT_HINT}", self.path
            ) from None
        self._check_signature(model)
        self.preprocess, self.image_size = self._read_preprocess(model)
        self.batch_range = self._batch_range(model)
        self.precision = self._choose_precision(core, precision, cpuinfo)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision}
        if streams == 1:
            config.update(PERFORMANCE_HINT="LATENCY", NUM_STREAMS=1)
        else:
            config["PERFORMANCE_HINT"] = "THROUGHPUT"
            if streams > 1:
                config["NUM_STREAMS"] = streams
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if perf_count:
            config["PERF_COUNT"] = True
        try:
            self._compiled = core.compile_model(model, DEVICE, config)
        except Exception as error:
            raise FuseError(f"OpenVINO cannot compile the model for the CPU ({first_line(error)})", self.path) from None
        self.streams = int(self._compiled.get_property("NUM_STREAMS"))
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        optimal = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.throughput = streams != 1
        self.in_flight = max(optimal, self.streams) if self.throughput else 1
        self._idle: queue.Queue[Any] | None = queue.Queue()
        for _ in range(self.in_flight):
            self._idle.put(self._compiled.create_infer_request())
        self._output = self._compiled.output(OUTPUT)

    @property
    def description(self) -> str:
        return (
            f"OpenVINO {_short_version(self._ov.__version__)} (cpu, {self.precision}) {self.path.name}: "
            f"{self.shape_text}, {self.mode}"
        )

    @property
    def mode(self) -> str:
        """``latency`` or ``throughput, S streams x T threads, R requests``."""
        if not self.throughput:
            return "latency"
        per_stream = max(1, self.threads // max(1, self.streams))
        return f"throughput, {self.streams} streams x {per_stream} threads, {self.in_flight} requests"

    def submit(self, ct: np.ndarray, mri: np.ndarray) -> Pending:
        """Start the batch on an idle infer request (waiting for one when all ``in_flight`` are busy)."""
        ct, mri = self.check_inputs(ct, mri)
        if self._idle is None:
            raise FuseError("the engine was closed; open it again with open_engine", self.path)
        request = self._idle.get()
        try:
            request.start_async({INPUT_FIRST: ct, INPUT_SECOND: mri})
        except BaseException:
            self._idle.put(request)
            raise
        return _Request(request, self._output, self._idle)

    def _run(self, ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
        return self.submit(ct, mri).result()

    def profile(self, ct: np.ndarray, mri: np.ndarray) -> list[dict[str, Any]]:
        """Run one batch and return OpenVINO's time per executed layer: ``name``, ``type`` (OpenVINO's
        operation), ``exec_type`` (the kernel, e.g. ``brgconv_avx512_amx_I8``) and ``ms``. Needs
        ``perf_count=True``."""
        ct, mri = self.check_inputs(ct, mri)
        if self._idle is None:
            raise FuseError("the engine was closed; open it again with open_engine", self.path)
        request = self._idle.get()
        try:
            request.infer({INPUT_FIRST: ct, INPUT_SECOND: mri})
            return [
                {"name": info.node_name, "type": info.node_type, "exec_type": info.exec_type,
                 "ms": info.real_time.total_seconds() * 1e3}
                for info in request.profiling_info
                if str(info.status).endswith("EXECUTED")
            ]
        finally:
            self._idle.put(request)

    def close(self) -> None:
        """Drop the compiled model and its requests; the engine cannot run afterwards."""
        self._idle = None
        self._compiled = None

    def _choose_precision(self, core: Any, requested: str, cpuinfo: str | Path) -> str:
        native, reason = native_bf16(cpuinfo)
        offered = "BF16" in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
        if native and not offered:
            version = _short_version(self._ov.__version__)
            native, reason = False, f"{reason}, but OpenVINO {version} does not offer bf16 on it"
        if requested == "f32":
            chosen, why = "f32", "f32 requested"
        elif native:
            chosen, why = "bf16", f"{reason}; outputs differ from fp32 by bf16 rounding (8-bit mantissa)"
        else:
            chosen, why = "f32", reason if requested == "auto" else f"bf16 requested but {reason}"
        self.notices.append(f"OpenVINO CPU, {chosen}: {why}")
        return chosen

    def _check_signature(self, model: Any) -> None:
        inputs = {}
        for port in model.inputs:
            shape = port.get_partial_shape()
            dims = None if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in shape)
            inputs.update({name: dims for name in port.get_names()})
        check_signature(self.path, inputs, {name for port in model.outputs for name in port.get_names()})

    def _read_preprocess(self, model: Any) -> tuple[PreprocessConfig, int]:
        """Preprocessing from manifest.json beside the model, else the ONNX metadata (which OpenVINO
        exposes as the model's ``framework`` runtime info); both must agree when both are there."""
        shape = _input_port(model, INPUT_FIRST).get_partial_shape()
        static_hw = tuple(shape[i].get_length() if shape[i].is_static else None for i in (2, 3))
        config, size, self.modalities = model_settings(self.path, _onnx_metadata(model), static_hw)
        return config, size

    def _batch_range(self, model: Any) -> tuple[int, int]:
        batch = _input_port(model, INPUT_FIRST).get_partial_shape()[0]
        if batch.is_static:
            return (batch.get_length(), batch.get_length())
        return (1, UNBOUNDED_BATCH)


class _Request:
    """A running infer request: ``result()`` waits for it, copies the output and frees the request."""

    def __init__(self, request: Any, output: Any, idle: queue.Queue[Any]) -> None:
        self._request, self._output, self._idle = request, output, idle

    def result(self) -> np.ndarray:
        try:
            self._request.wait()
            return np.array(self._request.get_tensor(self._output).data, dtype=np.float32, copy=True)
        finally:
            self._idle.put(self._request)


def _input_port(model: Any, name: str) -> Any:
    return next(port for port in model.inputs if name in port.get_names())


def _onnx_metadata(model: Any) -> dict[str, str]:
    """The ONNX ``metadata_props`` as OpenVINO keeps them (rt_info ``framework``)."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    framework = info["framework"]
    return {str(key): framework[key].astype(str) for key in framework.keys()}


def _import_openvino(path: Path) -> Any:
    try:
        import openvino
    except ImportError:
        raise FuseError(
            f"the OpenVINO backend needs the openvino package, which is not installed; {INSTALL_HINT}", path
        ) from None
    return openvino


def _short_version(version: str) -> str:
    """``"2026.4.1-22982-e213a14-releases/2026/4"`` → ``"2026.4.1"``."""
    return version.split("-", 1)[0]

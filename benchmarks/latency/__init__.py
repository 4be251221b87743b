"""Latency, throughput and memory of the fusion model per backend and batch size.

    python -m benchmarks.latency --checkpoint RUN/best.pt --batch 1,4,8 --out R
    python -m benchmarks.latency --onnx OUT/model.onnx --onnx OUT/model.int8.onnx [--engine OUT/model.plan] --out R

writes ``R/latency.json`` (every row with its timings, memory and details, the FLOP count, the
inputs, the machine) and ``R/latency.md`` (one table row per backend, model file and batch size).

Backends, each measured in a fresh process so its peak resident memory is its own:

* ``pytorch-eager``: the checkpoint's FusionNet, FP32 (CUDA when PyTorch sees a GPU, else CPU);
* ``pytorch-autocast``: the same under ``torch.autocast``: fp16 on CUDA, bf16 on the CPU. A CPU
  without native bf16 (AVX512-BF16 / AMX-BF16 / Arm BF16) emulates it, many times slower than FP32,
  so there it runs only batches up to ``emulated_bf16_max_batch``, with at most
  ``emulated_bf16_iters`` timed calls, and is labelled "emulated";
* ``pytorch-compile``: ``torch.compile`` (inductor); the first call compiles and is never timed; a
  failure, or a process that outlives ``compile_timeout_s``, becomes the row's reason;
* ``onnxruntime-cpu`` / ``onnxruntime-cuda``: ``fuse_runtime.engines`` on every ``--onnx`` file
  (one set of rows per file, labelled with its name); with only a checkpoint, ``model.onnx`` is
  exported from it with ``fuse_export.pipeline.run_export``;
* ``openvino-cpu``: the OpenVINO engine (``fuse-ctmri[openvino]``) on every ``--onnx`` file: bf16 where the
  CPU computes it natively (AVX512-BF16/AMX), else f32; an INT8 QDQ file runs OpenVINO's int8 kernels;
  latency mode (one stream, every thread per call), with its profile (time per layer type);
* ``openvino-cpu-throughput``: the same engine with the throughput hint (OpenVINO's streams, one
  asynchronous infer request per stream); one timed call runs one batch per request side by side;
* ``tensorrt``: ``fuse_runtime.engines`` on ``--engine model.plan``, GPU only;
* ``fuse-run`` / ``fuse-run-openvino`` / ``fuse-run-openvino-latency``: the serving CLI end to end
  (read → preprocess → infer → restore → write PNG) over every pair of ``--data``, once per model file
  and batch size, with its default backend, ``--backend openvino`` (its default: throughput streams)
  or ``--backend openvino --streams 1``; throughput from its ``report.json``.

A backend that cannot run here (no model for it, no GPU, a library missing) gets one row saying why.

Timing protocol: the inputs are real pairs from ``--data`` preprocessed with the model's own
settings (cycled when a batch is larger than the number of pairs). One call = host float32 arrays
in → host float32 fused array out, so GPU rows include both copies and the clock is read only after
the result is on the host. After ``warmup`` untimed calls, ``iters`` timed calls give p50/p95/p99
(linear interpolation) and the mean; slices/s = batch / mean latency; GFLOP/s = counted FLOPs per
slice (``benchmarks.flops``) × slices/s.

The ONNX Runtime and fuse-run processes never import PyTorch, so their memory is what a
PyTorch-free server uses.

Modules: ``backends`` (the one backend table), ``config`` (LatencyConfig, Row), ``run`` (run_latency),
``control`` (each backend in a fresh process, fuse-run end to end), ``worker`` (inside that process),
``models`` (model files, inputs, FLOPs, export), ``machine`` (CPU and memory probes), ``markdown``,
``cli``.
"""

from benchmarks.latency.backends import BACKENDS, TABLE, Backend
from benchmarks.latency.cli import main, parse_backends, parse_batches
from benchmarks.latency.config import LatencyConfig, Row
from benchmarks.latency.machine import Bf16Support, cpu_bf16_support
from benchmarks.latency.markdown import PROTOCOL, latency_markdown
from benchmarks.latency.models import load_inputs
from benchmarks.latency.run import JSON_NAME, MARKDOWN_NAME, run_latency
from benchmarks.latency.worker import batch_inputs, latency_stats

__all__ = [
    "BACKENDS",
    "JSON_NAME",
    "MARKDOWN_NAME",
    "PROTOCOL",
    "TABLE",
    "Backend",
    "Bf16Support",
    "LatencyConfig",
    "Row",
    "batch_inputs",
    "cpu_bf16_support",
    "latency_markdown",
    "latency_stats",
    "load_inputs",
    "main",
    "parse_backends",
    "parse_batches",
    "run_latency",
]

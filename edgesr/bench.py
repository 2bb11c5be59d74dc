"""`edgesr bench`: one MODEL, several backends, timed side by side.

`prepare_backend` turns a `ModelSource` (`edgesr.resolve.open_model`: checkpoint, .onnx, mobile
artifact or `edgesr convert` OUTDIR) into a timed runner for ``ort``, ``ort-int8``, ``openvino``,
``torch``, ``torch-cuda``, ``trt``, ``trt-rtx`` or a mobile runtime; `bench_prepared` times them
side by side. The timers and statistics live in `edgesr.timing`, what the numbers were taken on
in `edgesr.machine`, ONNX Runtime profiling in `edgesr.backends.ort_profile`, cached exports in
`edgesr.artifact_cache`; their names are re-exported here for existing callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .artifact_cache import (  # noqa: F401
    DEFAULT_INT8,
    cached_int8,
    cached_onnx_export,
    int8_available,
    int8_record,
    onnx_is_quantized,
)
from .backends.ort_profile import optimized_ops, profile_ort, summarize_ort_profile
from .backends.ort_runner import SessionRunner
from .backends.ort_session import ort_session
from .backends.torch_cuda import TORCH_PRECISIONS, TorchCudaRunner
from .machine import load_warning, machine_info
from .resolve import INT8_PROFILE_OF, INT8_ROLES, ModelSource, _unavailable, open_model  # noqa: F401
from .timing import (
    CV_WARN,
    CudaCalls,
    HostCalls,
    TimingPolicy,
    TimingStats,
    cuda_status,
    fp32_math,
    interleaved_order,
    megapixels_per_second,
    ratio_summary,
    stats_from_samples,
    time_callable,
    time_cuda_copies,
    time_cuda_events,
    time_interleaved,
)

# =========================================================================== workloads

# Output sizes of the standard workloads; the LR input is output // scale.
WORKLOADS = {"720p": (720, 1280), "1080p": (1080, 1920)}
BACKENDS = ("ort", "ort-int8", "openvino", "openvino-int8", "torch", "torch-cuda", "trt", "trt-rtx", "litert",
            "litert-int8", "ncnn", "ncnn-int8", "coreml")
GPU_BACKENDS = ("torch-cuda", "trt", "trt-rtx")


def workload_lr_size(workload: str, scale: int, size_multiple: int = 1) -> tuple[int, int]:
    """LR input size whose x`scale` output is the workload's (rounded down to the model's size
    multiple; e.g. x4 720p -> 180x320, x2 1080p -> 540x960, x3 720p -> 240x426)."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    oh, ow = WORKLOADS[workload]
    m = max(1, size_multiple)
    return max(m, oh // scale // m * m), max(m, ow // scale // m * m)


def standard_sizes(scale: int, size_multiple: int = 1) -> list[tuple[int, int]]:
    return [workload_lr_size(w, scale, size_multiple) for w in WORKLOADS]


# =========================================================================== model sources


# =========================================================================== runners

@dataclass
class Prepared:
    """One backend ready to time."""

    backend: str
    runner: Any  # .run(np.ndarray) -> np.ndarray
    artifact: str
    precision: str
    gpu: bool = False
    notes: list[str] = field(default_factory=list)
    close: Callable[[], None] | None = None


def prepare_backend(src: ModelSource, backend: str, *, threads: int | None = None, int8_profile: str = "cpu",
                    int8_config: Any = None, graph_opt: str | None = None, cuda_graph: bool = False,
                    engine_sizes: Sequence[tuple[int, int]] = (), spinning: bool | None = None) -> Prepared:
    """A runner for `backend`; raises BackendUnavailable (the reason) when it cannot run here.

    ORT backends use edgesr's session options (`ort_runner.session_options`); `spinning=False`
    stops idle intra-op threads from busy-waiting (None: ORT's default, spinning), which matters
    when several sessions are interleaved in one process: an idle session's spinning pool
    competes for the cores with the session being timed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend in GPU_BACKENDS:
        ok, why = cuda_status()
        if not ok:
            raise _unavailable(f"{backend}: {why}; GPU backends are skipped on this machine")
    if backend in ("openvino", "openvino-int8"):
        return _prepare_openvino(src, backend, threads, int8_config)
    from .backends.mobile import MOBILE_BACKENDS, prepare_mobile

    if backend in MOBILE_BACKENDS:
        runner, artifact, precision, notes = prepare_mobile(src, backend, threads, engine_sizes)
        return Prepared(backend, runner, _rel(Path(artifact)), precision, notes=notes)
    if src.kind in ("mobile", "openvino-ir"):
        raise _unavailable(f"{src.ref.name} is {'a mobile artifact' if src.kind == 'mobile' else 'an OpenVINO IR'}: "
                           f"time it with --backend {src.default_backend}")
    if backend in ("ort", "ort-int8"):
        if backend == "ort":
            p, notes, prec = src.fp32_onnx(), [], "fp32"
        else:
            p, how = src.int8_onnx(int8_profile, int8_config, backend)
            notes, prec = [how], "int8"
        from .errors import ExportError

        try:
            sess = ort_session(p, threads=threads, graph_opt=graph_opt or "all", spinning=spinning)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise ExportError(f"ONNX Runtime cannot load {p}: {str(e).splitlines()[0][:300]}") from None
        runner = SessionRunner(sess, f"ort:{prec}", path=p)
        if spinning is False:
            notes = notes + ["ORT intra-op spinning off (several ORT sessions interleaved)"]
        return Prepared(backend, runner, _rel(p), prec, notes=notes)
    if backend == "torch":
        from .backends.torch_runner import TorchRunner

        if threads:
            import torch

            torch.set_num_threads(threads)
        return Prepared("torch", TorchRunner(src.torch_module(), name="torch:cpu"), f"{src.ref.name} ({src.form} form)",
                        "fp32")
    if backend == "torch-cuda":
        return Prepared("torch-cuda", TorchCudaRunner(src.torch_module(), cuda_graph=cuda_graph),
                        f"{src.ref.name} ({src.form} form)", "fp32", gpu=True)
    # trt / trt-rtx
    flavour = "rtx" if backend == "trt-rtx" else "trt"
    from .backends.trt_flavour import load_flavour

    load_flavour(flavour)  # a missing TensorRT package is reported before any ONNX export or engine build
    engine = _engine_for(src, flavour, engine_sizes)
    from .backends.trt import TensorRTRunner

    runner = TensorRTRunner(engine, flavour=flavour, cuda_graph=cuda_graph)
    return Prepared(backend, runner, _rel(engine), runner.name.split(":")[-1], gpu=True, close=runner.close)


def _prepare_openvino(src: ModelSource, backend: str, threads: int | None, int8_config: Any) -> Prepared:
    """OpenVINO on the CPU: the bundle's IR (openvino_fp32 / openvino_int8), else the fp32 ONNX read
    by OpenVINO, or (openvino-int8 from a checkpoint/ONNX) the `openvino` profile's graph."""
    from .backends.openvino_runner import OpenVinoRunner, openvino_module

    openvino_module()  # BackendUnavailable with the install line
    if src.kind == "openvino-ir" and backend == "openvino-int8":
        raise _unavailable(f"{src.ref.name} is an OpenVINO IR: time it with --backend openvino (an INT8 IR "
                           "is timed as it is)")
    if backend == "openvino":
        p, notes = None, []
        if src.kind == "openvino-ir":
            p, notes = src.ref, [f"{src.ref.name} (OpenVINO IR as given)"]
        elif src.kind == "bundle" and "openvino_fp32" in {a.role for a in src.manifest.artifacts}:
            p = src.manifest.verified_path("openvino_fp32")  # (a hash mismatch is an error, not a fallback)
            notes = ["bundle artifact openvino_fp32"]
        if p is None:
            p = src.fp32_onnx()
            notes = [f"{Path(p).name} read by OpenVINO"]
        prec = "fp32"
        if src.kind == "openvino-ir":  # an IR with FakeQuantize / i8 constants is an INT8 model
            text = Path(p).read_text(errors="replace")
            prec = "int8" if ('type="FakeQuantize"' in text or 'element_type="i8"' in text) else "fp32"
    else:
        p, how = src.int8_onnx("openvino", int8_config, backend)
        notes, prec = [how], "int8"
    runner = OpenVinoRunner(p, name=f"openvino:{prec}", threads=threads)
    return Prepared(backend, runner, _rel(Path(p)), prec, notes=notes + ["OpenVINO CPU, f32 inference precision"])


def _engine_for(src: ModelSource, flavour: str, sizes: Sequence[tuple[int, int]]) -> Path:
    if src.kind == "bundle":
        for a in src.manifest.artifacts:
            is_rtx = "rtx" in a.backend.lower() or "rtx" in a.role.lower()
            if a.format == "engine" and is_rtx == (flavour == "rtx"):
                return src.manifest.verified_path(a)
        raise _unavailable(f"{src.ref} lists no {'TensorRT-RTX' if flavour == 'rtx' else 'TensorRT'} engine")
    from .backends.trt import ShapeProfile, build_engine

    hs = [s[0] for s in sizes] or [256]
    ws = [s[1] for s in sizes] or [256]
    prof = ShapeProfile(min_hw=(min(hs), min(ws)), opt_hw=(max(hs), max(ws)), max_hw=(max(hs), max(ws)),
                        size_multiple=max(1, src.spec.size_multiple))
    art = build_engine(src.fp32_onnx(), src.workdir, flavour=flavour, profile=prof)
    return art.path


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# =========================================================================== one model, several backends

@dataclass
class BenchResult:
    backend: str
    size: tuple[int, int]  # LR input H, W
    out: tuple[int, int]
    batch: int
    stats: TimingStats
    artifact: str = ""
    precision: str = ""
    interleaved_with: list[str] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)  # gpu_compute / h2d / d2h stats (GPU backends)
    notes: list[str] = field(default_factory=list)

    def to_dict(self, samples: bool = False) -> dict:
        d = {"backend": self.backend, "size": f"{self.size[0]}x{self.size[1]}",
             "output": f"{self.out[0]}x{self.out[1]}", "batch": self.batch, "precision": self.precision,
             "artifact": self.artifact, **self.stats.to_dict(samples),
             "mpix_per_s": round(megapixels_per_second(self.out, self.stats.median_ms, self.batch), 3)}
        if self.interleaved_with:
            d["interleaved_with"] = self.interleaved_with
        if self.gpu:
            d["gpu"] = {k: (v.to_dict(samples) if isinstance(v, TimingStats) else v) for k, v in self.gpu.items()}
        if self.stats.warning:
            d["warning"] = self.stats.warning
        if self.notes:
            d["notes"] = self.notes
        return d


def bench_prepared(prepared: Sequence[Prepared], sizes: Sequence[tuple[int, int]], spec, policy: TimingPolicy,
                   *, batch: int = 1, interleave: bool = True, seed: int = 0) -> list[BenchResult]:
    """Time every prepared backend at every LR size. CPU backends at one size run interleaved
    (one run, `time_interleaved`) unless interleave=False; GPU backends are timed one by one:
    host latency (numpy in -> numpy out, copies included), GPU compute (CUDA events, input
    already on the device) and H2D / D2H copies."""
    from .progress import progress

    # progress counts sizes, never runs: nothing is added inside the timed calls
    with progress(f"bench {', '.join(p.backend for p in prepared)}", len(sizes), "sizes") as bar:
        return _bench_sizes(prepared, sizes, spec, policy, batch, interleave, seed, bar)


def _bench_sizes(prepared, sizes, spec, policy: TimingPolicy, batch: int, interleave: bool, seed: int,
                 bar) -> list[BenchResult]:
    results: list[BenchResult] = []
    rng = np.random.default_rng(seed)
    for h, w in sizes:
        bar.set_postfix(f"{h}x{w}")
        x = rng.random((batch, spec.in_channels, h, w), dtype=np.float32)
        lo, hi = spec.value_range
        x = (lo + (hi - lo) * x).astype(np.float32)
        out_hw = (h * spec.scale, w * spec.scale)
        cpu = [p for p in prepared if not p.gpu]
        if cpu:
            fns: dict[str, Callable[[], object]] = {p.backend: partial(p.runner.run, x) for p in cpu}
            if interleave and len(cpu) > 1:
                stats = time_interleaved(fns, policy)
            else:
                stats = {k: time_callable(f, policy) for k, f in fns.items()}
            for p in cpu:
                results.append(BenchResult(p.backend, (h, w), out_hw, batch, stats[p.backend], p.artifact, p.precision,
                                           [q.backend for q in cpu if q is not p] if interleave else [], notes=p.notes))
        for p in (q for q in prepared if q.gpu):
            results.append(_bench_gpu(p, x, out_hw, batch, policy, spec.out_channels))
        bar.update()
    return results


def _bench_gpu(p: Prepared, x: np.ndarray, out_hw: tuple[int, int], batch: int, policy: TimingPolicy,
               out_channels: int) -> BenchResult:
    host = time_callable(lambda: p.runner.run(x), policy)
    gpu: dict[str, Any] = {}
    calls = None
    if isinstance(p.runner, TorchCudaRunner):
        calls = p.runner.calls
        stream = calls.current_stream(p.runner.device)
        gpu["compute"] = time_cuda_events(p.runner.device_launch(x), policy, stream=stream, event_factory=calls.event,
                                          synchronize=lambda: calls.synchronize(stream))
        gpu["mode"] = "cuda-graph" if p.runner.cuda_graph else "eager"
    else:  # TensorRTRunner: its own stream and events; iterations from the policy
        per_run = max(host.median_ms, 1e-3)
        iters = int(min(policy.max_runs, max(policy.min_runs, math.ceil(policy.min_seconds * 1e3 / per_run))))
        warm = max(policy.warmup_runs, int(policy.warmup_seconds * 1e3 / per_run))
        gpu["compute"] = stats_from_samples(p.runner.time_gpu(x, warmup=warm, iters=iters))
        gpu["mode"] = "cuda-graph" if getattr(p.runner, "cuda_graph", False) else "enqueue"
    copies = time_cuda_copies(x.shape, (batch, out_channels, *out_hw), policy, calls=calls)
    gpu |= copies
    return BenchResult(p.backend, tuple(x.shape[2:]), out_hw, batch, host, p.artifact, p.precision, gpu=gpu,
                       notes=p.notes + ["median_ms is host latency (numpy in -> numpy out, H2D + compute + D2H + "
                                        "sync); gpu.compute is GPU time from CUDA events"])


def speedups(results: Sequence[BenchResult], baseline: str | None = None) -> list[dict]:
    """Per size: every backend's speedup over `baseline` (default: the first backend listed)."""
    out = []
    by_size: dict[tuple, list[BenchResult]] = {}
    for r in results:
        by_size.setdefault(r.size, []).append(r)
    for size, rs in by_size.items():
        base = next((r for r in rs if r.backend == baseline), rs[0])  # (rs is never empty)
        for r in rs:
            if r is base:
                continue
            paired = (r.backend in base.interleaved_with)
            s = ratio_summary(base.stats, r.stats) if paired else {
                "ratio": round(base.stats.median_ms / r.stats.median_ms, 4)}
            out.append({"size": f"{size[0]}x{size[1]}", "baseline": base.backend, "backend": r.backend,
                        "interleaved": paired, **s})
    return out


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


__all__ = [
    "CV_WARN", "TimingPolicy", "TimingStats", "stats_from_samples", "time_callable", "time_interleaved",
    "interleaved_order", "ratio_summary", "megapixels_per_second", "time_cuda_events", "time_cuda_copies",
    "cuda_status", "CudaCalls", "HostCalls", "fp32_math", "TorchCudaRunner", "TORCH_PRECISIONS",
    "machine_info", "load_warning", "WORKLOADS", "BACKENDS", "GPU_BACKENDS",
    "workload_lr_size", "standard_sizes", "open_model", "ModelSource", "prepare_backend", "Prepared",
    "bench_prepared", "BenchResult", "speedups", "profile_ort", "summarize_ort_profile", "optimized_ops",
    "ort_session", "SessionRunner", "int8_available", "int8_record", "cached_onnx_export", "cached_int8",
]

"""Latency measurement in the spirit of trtexec, and the machine it was taken on.

Statistics (`stats_from_samples`)
    min / median / mean / p90 / p95 / p99 / max of the per-run times (percentiles by linear
    interpolation between the closest ranks, numpy's default), sample standard deviation
    (n - 1) and the coefficient of variation CV = std / mean. A CV above ``CV_WARN`` (10 %)
    marks the measurement *noisy*: other processes shared the CPU, or the clock changed.

Timers
    `time_callable`      warm up for ``warmup_seconds`` (at least ``warmup_runs`` calls), then
                         measure at least ``min_runs`` calls and ``min_seconds`` (at most
                         ``max_runs`` calls).
    `time_interleaved`   several callables side by side, one call each per round, the order
                         rotated every round (A B C, B C A, C A B, ...), so drifting machine
                         load hits every candidate alike and none is always first after a
                         switch. Ratios come from the same rounds (`ratio_summary`).
    `time_cuda_events`   GPU compute time from CUDA events recorded around each launch on a
                         stream, launched back to back in chunks (no host sync in between,
                         like trtexec), copies timed separately (`time_cuda_copies`).
    `CudaCalls`          the CUDA-only calls (device, events, streams, pinned memory, graph
                         capture), one thin method each; `HostCalls` stands in for them on the
                         CPU, so a dry run (benchmarks/gpu_check.py --dry-run) exercises the
                         torch-cuda runner and these timers in CI, which has no GPU.

Backends (`prepare_backend`, `bench_model`) turn a MODEL (checkpoint, .onnx, or `edgesr
convert` OUTDIR) into timed runners for ``ort``, ``ort-int8``, ``torch``, ``torch-cuda``,
``trt`` and ``trt-rtx``; `machine_info` records what the numbers were taken on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

CV_WARN = 0.10  # coefficient of variation above which a measurement is flagged noisy
Clock = Callable[[], float]


# =========================================================================== policy and statistics

@dataclass(frozen=True)
class TimingPolicy:
    """How long to warm up and measure.

    warmup_seconds  warm-up by time (the first calls pay allocation, graph planning, caches)
    warmup_runs     ... but at least this many warm-up calls
    min_runs        measure at least this many calls
    min_seconds     ... and at least this long (per candidate when interleaved)
    max_runs        never more calls than this
    """

    warmup_seconds: float = 0.5
    min_runs: int = 10
    min_seconds: float = 1.0
    max_runs: int = 1000
    warmup_runs: int = 1

    def __post_init__(self) -> None:
        if not (self.warmup_seconds >= 0 and self.min_seconds >= 0):
            raise ValueError(f"TimingPolicy: seconds must be >= 0 ({self})")
        if self.min_runs < 1 or self.max_runs < 1 or self.warmup_runs < 0:
            raise ValueError(f"TimingPolicy: min_runs/max_runs must be >= 1 and warmup_runs >= 0 ({self})")
        if self.max_runs < self.min_runs:
            raise ValueError(f"TimingPolicy: max_runs {self.max_runs} < min_runs {self.min_runs}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TimingStats:
    runs: int
    min_ms: float
    median_ms: float
    mean_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    cv: float  # coefficient of variation: sample std / mean
    std_ms: float = 0.0
    samples_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def noisy(self) -> bool:
        return self.cv > CV_WARN

    @property
    def warning(self) -> str | None:
        if not self.noisy:
            return None
        return (f"noisy: CV {self.cv:.0%} > {CV_WARN:.0%} over {self.runs} runs (median {self.median_ms:.2f} ms, "
                f"min {self.min_ms:.2f}, max {self.max_ms:.2f}); the machine was busy or its clock changed - "
                "compare medians from interleaved runs only")

    def to_dict(self, samples: bool = False) -> dict:
        d = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items() if k != "samples_ms"}
        d["noisy"] = self.noisy
        if samples:
            d["samples_ms"] = [round(s, 4) for s in self.samples_ms]
        return d


def stats_from_samples(samples_ms: Sequence[float] | np.ndarray) -> TimingStats:
    a = np.asarray(samples_ms, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("no timing samples")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("timing samples must be finite and >= 0")
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    p90, p95, p99 = (float(v) for v in np.percentile(a, [90, 95, 99]))
    return TimingStats(runs=int(a.size), min_ms=float(a.min()), median_ms=float(np.median(a)), mean_ms=mean,
                       p90_ms=p90, p95_ms=p95, p99_ms=p99, max_ms=float(a.max()),
                       cv=std / mean if mean > 0 else 0.0, std_ms=std, samples_ms=tuple(float(v) for v in a))


def megapixels_per_second(out_hw: tuple[int, int], median_ms: float, batch: int = 1) -> float:
    """Output megapixels produced per second at the median latency."""
    if median_ms <= 0:
        return float("inf")
    return batch * out_hw[0] * out_hw[1] / 1e6 / (median_ms / 1e3)


# =========================================================================== CPU timers

def _warm(fns: list[Callable[[], object]], policy: TimingPolicy, clock: Clock) -> None:
    """Round-robin warm-up: at least `warmup_runs` rounds and `warmup_seconds` in all."""
    end = clock() + policy.warmup_seconds
    rounds = 0
    while rounds < policy.warmup_runs or clock() < end:
        for fn in fns:
            fn()
        rounds += 1


def time_callable(fn: Callable[[], object], policy: TimingPolicy = TimingPolicy(),
                  clock: Clock = time.perf_counter) -> TimingStats:
    """Warm up (by time, at least `warmup_runs` calls), then run at least `min_runs` times and
    `min_seconds` long (at most `max_runs`)."""
    _warm([fn], policy, clock)
    samples: list[float] = []
    start = clock()
    while len(samples) < policy.max_runs and (len(samples) < policy.min_runs
                                              or clock() - start < policy.min_seconds):
        t0 = clock()
        fn()
        samples.append((clock() - t0) * 1e3)
    return stats_from_samples(samples)


def interleaved_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order candidates run in round `round_index`: rotated by one each round."""
    n = len(names)
    k = round_index % n if n else 0
    return list(names[k:]) + list(names[:k])


def time_interleaved(fns: dict[str, Callable[[], object]], policy: TimingPolicy = TimingPolicy(),
                     clock: Clock = time.perf_counter) -> dict[str, TimingStats]:
    """Time several callables side by side so machine noise hits all alike.

    Warm-up is round-robin too. Each round calls every candidate once, in an order rotated
    by one per round (`interleaved_order`). Rounds continue until `min_runs` rounds and
    `min_seconds` x (number of candidates) have passed (at most `max_runs` rounds); every
    candidate therefore has the same number of samples, sample i of each from round i.
    """
    if not fns:
        raise ValueError("nothing to time")
    names = list(fns)
    _warm([fns[n] for n in names], policy, clock)
    samples: dict[str, list[float]] = {k: [] for k in names}
    start = clock()
    rounds = 0
    while rounds < policy.max_runs and (rounds < policy.min_runs
                                        or clock() - start < policy.min_seconds * len(names)):
        for name in interleaved_order(names, rounds):
            t0 = clock()
            fns[name]()
            samples[name].append((clock() - t0) * 1e3)
        rounds += 1
    return {k: stats_from_samples(samples[k]) for k in names}


def ratio_summary(slow: TimingStats, fast: TimingStats) -> dict:
    """How many times faster `fast` is than `slow`.

    ``ratio``: median(slow) / median(fast). When both come from the same interleaved run
    (equal sample counts), also the per-round ratios slow_i / fast_i: their median and
    10th/90th percentiles (``paired_p10``..``paired_p90``) are the spread of the ratio.
    """
    out = {"ratio": slow.median_ms / fast.median_ms if fast.median_ms > 0 else float("inf")}
    a, b = np.asarray(slow.samples_ms), np.asarray(fast.samples_ms)
    if a.size and a.size == b.size and np.all(b > 0):
        r = a / b
        out |= {"paired_median": float(np.median(r)), "paired_p10": float(np.percentile(r, 10)),
                "paired_p90": float(np.percentile(r, 90)), "paired_min": float(r.min()),
                "paired_max": float(r.max()), "rounds": int(r.size)}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


# =========================================================================== CUDA timers

def cuda_status() -> tuple[bool, str]:
    """(available, reason): whether torch sees a CUDA GPU."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        return False, f"CUDA is not available (torch {torch.__version__}, {build}, sees no GPU)"
    return True, torch.cuda.get_device_name(0)


def time_cuda_events(launch: Callable[[], object], policy: TimingPolicy = TimingPolicy(), *,
                     stream=None, event_factory: Callable[[], Any] | None = None,
                     synchronize: Callable[[], None] | None = None, clock: Clock = time.perf_counter,
                     chunk: int = 10) -> TimingStats:
    """GPU time per launch from CUDA events (ms).

    Warm-up: launches until `warmup_seconds` have passed (at least `warmup_runs`), synchronized.
    Measurement: chunks of up to `chunk` launches enqueued back to back, each between a start
    and an end event recorded on `stream`; one synchronization per chunk; chunks continue
    until `min_runs` launches and `min_seconds` (at most `max_runs`). The events time what
    the GPU spent on each launch, excluding host work between launches when the queue is
    full. `event_factory`/`synchronize` default to torch.cuda's (injectable for tests).
    """
    if event_factory is None or synchronize is None:
        import torch

        stream = stream if stream is not None else torch.cuda.current_stream()
        event_factory = event_factory or (lambda: torch.cuda.Event(enable_timing=True))
        synchronize = synchronize or stream.synchronize
    end = clock() + policy.warmup_seconds
    n = 0
    while n < max(1, policy.warmup_runs) or clock() < end:
        launch()
        synchronize()
        n += 1
    samples: list[float] = []
    start = clock()
    while len(samples) < policy.max_runs and (len(samples) < policy.min_runs
                                              or clock() - start < policy.min_seconds):
        k = min(chunk, policy.max_runs - len(samples))
        events = [(event_factory(), event_factory()) for _ in range(k)]
        for ev_start, ev_end in events:
            _record(ev_start, stream)
            launch()
            _record(ev_end, stream)
        synchronize()
        samples.extend(float(s.elapsed_time(e)) for s, e in events)
    return stats_from_samples(samples)


def _record(event, stream) -> None:
    if stream is None:
        event.record()
    else:
        event.record(stream)


def time_cuda_copies(in_shape: Sequence[int], out_shape: Sequence[int], policy: TimingPolicy,
                     dtype: str = "float32", device: int = 0, calls: "CudaCalls | HostCalls | None" = None
                     ) -> dict[str, TimingStats]:
    """Host->device copy of an input and device->host copy of an output (pinned host
    memory, CUDA events on a private stream), the `H2D` / `D2H` rows of trtexec.
    `calls`: the CUDA calls to use (default `CudaCalls()`; `HostCalls()` for a CPU dry run)."""
    import torch

    calls = calls if calls is not None else CudaCalls()
    tdt = getattr(torch, dtype)
    dev = calls.device(device)
    stream = calls.new_stream(dev)
    h_in = calls.pinned(torch.empty(tuple(in_shape), dtype=tdt))
    d_in = torch.empty(tuple(in_shape), dtype=tdt, device=dev)
    d_out = torch.empty(tuple(out_shape), dtype=tdt, device=dev)
    h_out = calls.pinned(torch.empty(tuple(out_shape), dtype=tdt))

    def h2d():
        with calls.use_stream(stream):
            d_in.copy_(h_in, non_blocking=True)

    def d2h():
        with calls.use_stream(stream):
            h_out.copy_(d_out, non_blocking=True)

    def sync():
        calls.synchronize(stream)

    return {k: time_cuda_events(fn, policy, stream=stream, event_factory=calls.event, synchronize=sync)
            for k, fn in (("h2d", h2d), ("d2h", d2h))}


class CudaCalls:
    """Every CUDA-only call the torch-cuda runner and the CUDA timers make, one thin method each.

    `HostCalls` has the same methods for a CPU dry run (benchmarks/gpu_check.py --dry-run), so
    that everything around these calls runs in CI, where there is no GPU."""

    kind = "cuda"

    def device(self, index: int = 0):
        import torch

        return torch.device("cuda", index)

    def event(self):
        import torch

        return torch.cuda.Event(enable_timing=True)

    def new_stream(self, device):
        import torch

        return torch.cuda.Stream(device=device)

    def current_stream(self, device=None):
        import torch

        return torch.cuda.current_stream(device)

    def use_stream(self, stream):
        import torch

        return torch.cuda.stream(stream)

    def synchronize(self, stream=None) -> None:
        import torch

        (stream if stream is not None else torch.cuda.current_stream()).synchronize()

    def pinned(self, tensor):
        return tensor.pin_memory()

    def capture(self, fn: Callable[[], Any], device) -> tuple[Callable[[], Any], Any]:
        """(replay, static output) of a CUDA graph of `fn` (warmed up on a side stream first,
        as the torch docs prescribe). `fn` must read only static inputs."""
        import torch

        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = fn()
        return g.replay, static_out


class HostCalls:
    """CPU stand-ins for `CudaCalls` (a dry run on a machine without a GPU). CPU work is
    synchronous, so an 'event' reads the host clock when it is recorded and elapsed times are
    real; there are no streams or pinned buffers; a 'graph' replays the captured call into the
    same static output tensor (what a CUDA graph replay does, without the launch savings)."""

    kind = "cpu"

    class Event:
        def __init__(self) -> None:
            self.t: float | None = None

        def record(self, stream=None) -> None:
            self.t = time.perf_counter()

        def elapsed_time(self, end: "HostCalls.Event") -> float:
            if self.t is None or end.t is None:
                raise RuntimeError("event not recorded")
            return (end.t - self.t) * 1e3

    def device(self, index: int = 0):
        import torch

        return torch.device("cpu")

    def event(self) -> "HostCalls.Event":
        return HostCalls.Event()

    def new_stream(self, device):
        return None

    def current_stream(self, device=None):
        return None

    def use_stream(self, stream):
        import contextlib

        return contextlib.nullcontext()

    def synchronize(self, stream=None) -> None:
        return None

    def pinned(self, tensor):
        return tensor

    def capture(self, fn: Callable[[], Any], device) -> tuple[Callable[[], Any], Any]:
        import torch

        static_out = fn()

        def replay():
            with torch.no_grad():  # a CUDA graph replay records no autograd history either
                static_out.copy_(fn())

        return replay, static_out


def fp32_math(tf32: bool | None):
    """Context: fp32 convolutions and matmuls on the GPU in IEEE fp32 (tf32=False) or allowed
    to use TF32 (True); None leaves PyTorch's settings (by default cuDNN convs may use TF32,
    matmuls may not). Uses the `fp32_precision` API where torch has it (2.9+; mixing it with
    the legacy `allow_tf32` flags raises) and the legacy flags otherwise."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def ctx():
        if tf32 is None:
            yield
            return
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            mm = torch.backends.cuda.matmul
            saved = (conv.fp32_precision, mm.fp32_precision)
            conv.fp32_precision = mm.fp32_precision = "tf32" if tf32 else "ieee"
            try:
                yield
            finally:
                conv.fp32_precision, mm.fp32_precision = saved
        else:  # pragma: no cover - torch < 2.9
            saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
            try:
                yield
            finally:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    return ctx()


# =========================================================================== machine

def machine_info() -> dict:
    """CPU model, cores, caches, flags of interest, load, memory and library versions."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "machine": platform.machine(), "logical_cpus": os.cpu_count(),
                            "cpu_model": _cpu_model()}
    cpu = _cpuinfo_fields()
    if cpu:
        info["cpu_family_model"] = f"{cpu.get('vendor_id', '?')} family {cpu.get('cpu family', '?')} " \
                                   f"model {cpu.get('model', '?')} stepping {cpu.get('stepping', '?')}"
        if "cpu MHz" in cpu:
            info["cpu_mhz"] = float(cpu["cpu MHz"])
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    caches = _caches()
    if caches:
        info["caches"] = caches
    flags = _cpu_flags()
    if flags:
        info["cpu_flags"] = sorted(f for f in flags if f in {
            "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
            "sse4_2", "bmi2"})
        info["hypervisor"] = "hypervisor" in flags
    mem = _meminfo_gib()
    if mem:
        info["memory_gib"] = mem
    try:
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    for mod in ("torch", "onnx", "onnxruntime", "numpy", "onnxslim", "tensorrt", "tensorrt_rtx", "matplotlib"):
        info[f"{mod}_version"] = _version(mod)
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda_version"] = torch.version.cuda
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def load_warning(info: dict | None = None) -> str | None:
    """A sentence when the 1-minute load average says other work competed for the CPUs."""
    info = info or machine_info()
    load, cpus = info.get("loadavg"), info.get("usable_cpus") or info.get("logical_cpus")
    if not load or not cpus:
        return None
    if load[0] > cpus:
        return (f"machine busy: 1-minute load average {load[0]:.1f} on {cpus} CPUs (5-min {load[1]:.1f}; a "
                "benchmark's own threads count too); absolute latencies are inflated and noisy, interleaved "
                "ratios are the numbers to trust")
    return None


def _cpu_model() -> str:
    model = _cpuinfo_fields().get("model name")
    return model or platform.processor() or "unknown"


def _cpuinfo_fields() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if not line.strip():
                break  # first processor only
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def _cpu_flags() -> set[str]:
    return set(_cpuinfo_fields().get("flags", "").split())


def _caches() -> dict[str, str]:
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    out: dict[str, str] = {}
    try:
        for d in sorted(base.glob("index*")):
            level = (d / "level").read_text().strip()
            kind = (d / "type").read_text().strip()
            size = (d / "size").read_text().strip()
            name = f"L{level}" + ({"Data": "d", "Instruction": "i"}.get(kind, ""))
            out[name] = size
    except OSError:
        return {}
    return out


def _meminfo_gib() -> float | None:
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def _version(mod: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    names = {"onnxruntime": ["onnxruntime", "onnxruntime-gpu"], "tensorrt_rtx": ["tensorrt-rtx-cu13", "tensorrt_rtx"],
             "tensorrt": ["tensorrt", "tensorrt-cu12"]}.get(mod, [mod])
    for n in names:
        try:
            return version(n)
        except PackageNotFoundError:
            continue
    return None


# =========================================================================== workloads

# Output sizes of the standard workloads; the LR input is output // scale.
WORKLOADS = {"720p": (720, 1280), "1080p": (1080, 1920)}
BACKENDS = ("ort", "ort-int8", "openvino", "openvino-int8", "torch", "torch-cuda", "trt", "trt-rtx", "litert",
            "litert-int8", "ncnn", "ncnn-int8", "coreml")
GPU_BACKENDS = ("torch-cuda", "trt", "trt-rtx")


def parse_size(text: str) -> tuple[int, int]:
    """'180x320' -> (180, 320)."""
    try:
        h, w = (int(v) for v in text.lower().strip().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not HxW (e.g. 180x320)") from None
    if h < 1 or w < 1:
        raise ValueError(f"size {text!r} must be positive")
    return h, w


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

# Each INT8 backend runs the graph made for its runtime, never another runtime's: ORT running the
# TensorRT graph is slower than fp32 (no QLinearConv), OpenVINO's int8 kernels differ from ORT's.
INT8_ROLES = {"ort-int8": "onnx_int8_cpu", "openvino-int8": "openvino_int8"}
INT8_PROFILE_OF = {"ort-int8": "cpu", "openvino-int8": "openvino"}


def int8_available() -> tuple[bool, str]:
    """(importable, note): whether edgesr.quant (INT8) can be used in this build."""
    try:
        from .quant import QuantConfig, quantize_model  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a half-landed package may raise anything
        return False, f"INT8 not available: edgesr.quant cannot be imported ({type(e).__name__}: {e})"
    return True, "edgesr.quant"


@dataclass
class ModelSource:
    """What a MODEL argument points at, and lazily-made artifacts (cached in `workdir`)."""

    ref: Path
    kind: str  # "checkpoint" | "onnx" | "bundle" | "mobile" (a .tflite / .param / Core ML file)
    spec: Any  # edgesr.spec.Spec (deploy form unless form="training" was asked for)
    workdir: Path
    module: Any = None  # PyTorch module (checkpoint / bundle torch_deploy)
    onnx_path: Path | None = None
    manifest: Any = None
    form: str = "deploy"
    notes: list[str] = field(default_factory=list)
    default_backend: str = "ort"  # what `edgesr bench` times when no --backend is given
    _tmp: Any = None

    # ---- artifacts
    def fp32_onnx(self, static_hw: tuple[int, int] | None = None) -> Path:
        """The fp32 ONNX model: the given file, the bundle's onnx_fp32, or an export of the
        module (dynamic N/H/W; `static_hw` exports a fixed 1x C x H x W graph instead)."""
        if static_hw is None and self.onnx_path is not None:
            return self.onnx_path
        if self.kind == "bundle":
            self.onnx_path = self.manifest.verified_path("onnx_fp32")  # the bytes whose sha256 was checked
            return self.onnx_path
        if self.kind == "onnx":
            return self.onnx_path
        if self.module is None:
            raise _unavailable("no fp32 ONNX model and no PyTorch module to export one from")
        p = cached_onnx_export(self.module, self.spec, self.workdir, key_hint=str(self.ref), static_hw=static_hw)
        if static_hw is None:
            self.onnx_path = p
        return p

    def int8_onnx(self, profile: str = "cpu", config: Any = None, backend: str = "ort-int8") -> tuple[Path, str]:
        """(path, how it was obtained) of the INT8 graph made for `backend`'s runtime."""
        if self.kind == "bundle":
            role = INT8_ROLES[backend]
            try:
                art = self.manifest.artifact(role)
            except Exception:  # noqa: BLE001 - BundleError: role absent
                others = [a.role for a in self.manifest.artifacts if "int8" in a.role and not a.role.endswith("_weights")]
                raise _unavailable(
                    f"{self.ref} has no INT8 graph made for {backend} ({role})"
                    + (f"; its INT8 graphs ({', '.join(others)}) are made for other runtimes" if others else "")
                    + f"; convert with --int8{' --openvino' if backend == 'openvino-int8' else ''}") from None
            return self.manifest.verified_path(art), f"bundle artifact {role}"  # the bytes whose sha256 was checked
        if self.kind == "onnx" and onnx_is_quantized(self.fp32_onnx()):
            return self.fp32_onnx(), "the given ONNX file is already quantized"
        ok, note = int8_available()
        if not ok:
            raise _unavailable(note)
        path = cached_int8(self.fp32_onnx(), self.spec, self.workdir, profile=profile, config=config)
        return path, f"quantized here (edgesr.quant, profile {profile}; cached in {self.workdir})"

    def torch_module(self):
        if self.module is None:
            raise _unavailable(f"{self.ref.name} holds no PyTorch weights (an ONNX model): use --backend ort")
        return self.module

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _unavailable(msg: str):
    from .errors import BackendUnavailable

    return BackendUnavailable(msg)


def open_model(ref: str | Path, *, workdir: str | Path | None = None, scale: int | None = None,
               arch: str | None = None, form: str = "deploy", user: dict | None = None) -> ModelSource:
    """Resolve MODEL (checkpoint, .onnx/.ort, or convert OUTDIR). `workdir` caches exports
    and INT8 models across runs (default: a temporary folder removed by `close()`)."""
    from dataclasses import replace as dc_replace

    from .errors import CheckpointError, ScaleMismatch
    from .resolve import CHECKPOINT_SUFFIXES, ONNX_SUFFIXES

    path = Path(ref)
    if not path.exists():
        raise CheckpointError(f"model not found: {path}")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgesr-bench-")
        workdir = tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        from .bundle import read_manifest

        man = read_manifest(path)
        if scale is not None and man.spec.scale != scale:
            raise ScaleMismatch(f"--scale {scale} does not match {path} (x{man.spec.scale})")
        src = ModelSource(path, "bundle", man.spec, workdir, manifest=man, _tmp=tmp)
        try:
            art = man.artifact("torch_deploy")
            from .registry import load_model

            from .checkpoint import load_state_dict_bytes

            sd = load_state_dict_bytes(man.verified_bytes(art), art.file)
            src.module = load_model(sd, arch=man.spec.arch, scale=man.spec.scale).module.eval()
        except Exception as e:  # noqa: BLE001 - torch backend then reports unavailable
            src.notes.append(f"no PyTorch deploy weights usable: {e}")
        return src
    from .backends.mobile import file_backend, is_mobile_artifact, spec_beside

    if is_mobile_artifact(path):
        spec, _ = spec_beside(path, scale)
        src = ModelSource(path, "mobile", spec, workdir, _tmp=tmp)
        src.default_backend = file_backend(path)
        return src
    if path.suffix.lower() == ".xml":  # an OpenVINO IR: timed by OpenVINO (spec from a manifest beside it, or --scale)
        spec, _ = spec_beside(path, scale)
        src = ModelSource(path, "openvino-ir", spec, workdir, _tmp=tmp)
        src.default_backend = "openvino"
        return src
    if path.suffix.lower() in ONNX_SUFFIXES:
        from .resolve import _spec_from_onnx

        spec = _spec_from_onnx(path, scale)
        return ModelSource(path, "onnx", spec, workdir, onnx_path=path, _tmp=tmp)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"{path.name}: not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}), ONNX file "
                              f"({', '.join(ONNX_SUFFIXES)}) or convert OUTDIR")
    if user is not None:  # --model FILE.py:NAME: the user's code, conventions measured, deploy hooks verified
        from .resolve import user_deploy_model

        module, spec, _ = user_deploy_model(path, scale=scale, **user)
        return ModelSource(path, "checkpoint", spec, workdir, module=module.eval(), form="deploy", _tmp=tmp)
    from .registry import load_model
    from .reparam import reparameterize

    loaded = load_model(path, arch=arch, scale=scale)
    module, spec = loaded.module.eval(), loaded.spec
    if form == "deploy" and spec.form == "training":
        module, spec = reparameterize(module).eval(), dc_replace(spec, form="deploy")
    return ModelSource(path, "checkpoint", spec, workdir, module=module, form=spec.form, _tmp=tmp)


def onnx_is_quantized(path: Path) -> bool:
    import onnx

    m = onnx.load_model(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger")
               for n in m.graph.node)


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode() if not isinstance(p, bytes) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _module_digest(module) -> str:
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _code_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cached_onnx_export(module, spec, workdir: Path, key_hint: str = "",
                       static_hw: tuple[int, int] | None = None) -> Path:
    """ONNX export (edgesr.export.onnx.export_onnx, defaults: dynamic N/H/W, simplified, checked)
    cached by module structure + weights, spec, shape mode and the versions of edgesr's
    exporter, torch and onnx. `static_hw`: a fixed (1, C, H, W) graph instead."""
    from .export.onnx import export_onnx

    key = _digest(_module_digest(module), spec.to_dict(), _code_digest(Path(__file__).parent / "export"),
                  _version("torch"), _version("onnx"), _version("onnxslim"), static_hw)
    stem = Path(key_hint).stem or "model"
    shape = f".static{static_hw[0]}x{static_hw[1]}" if static_hw else ""
    out = Path(workdir) / f"{stem}.{spec.form}{shape}.{key}.onnx"
    if not out.is_file():
        if static_hw:
            export_onnx(module, spec, out, dynamic=False, sample_shape=(1, spec.in_channels, *static_hw))
        else:
            export_onnx(module, spec, out)
    return out


DEFAULT_INT8 = {"progress": False}  # otherwise QuantConfig's defaults = `edgesr convert --int8` (0.1 dB budget)


def cached_int8(fp32: Path, spec, workdir: Path, profile: str = "cpu", config: Any = None) -> Path:
    """INT8 QDQ model from edgesr.quant.quantize_model, cached by the fp32 file, the config and
    the quantizer's source code. The QuantResult is kept beside it as JSON."""
    from .fsutil import atomic_write_json, sha256_file
    from .quant import QuantConfig, quantize_model

    cfg = config if config is not None else QuantConfig(profile=profile, **DEFAULT_INT8)
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else asdict(cfg)
    key = _digest(sha256_file(fp32), cfg_dict, _code_digest(Path(__file__).parent / "quant"),
                  _version("onnxruntime"))
    out = Path(workdir) / f"{fp32.stem}.int8-{profile}.{key}.onnx"
    if not out.is_file():
        import logging

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime.quantization's "consider pre-processing" notices
        try:
            res = quantize_model(fp32, out, spec, cfg)
        finally:
            root.setLevel(level)
        d = res.to_dict() if hasattr(res, "to_dict") else {}
        d.pop("sensitivity", None)
        atomic_write_json(out.with_suffix(".json"), d)
    return out


def int8_record(path: Path) -> dict:
    """The QuantResult stored beside a cached INT8 model ({} if none)."""
    p = Path(path).with_suffix(".json")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


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


def ort_session(path: str | Path, *, threads: int | None = None, graph_opt: str = "all",
                disabled_optimizers: Sequence[str] = (), spinning: bool | None = None,
                profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with the settings the benchmarks vary."""
    import onnxruntime as ort

    from .backends.ort_runner import session_options

    so = session_options(threads, graph_opt)
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    kw = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"], **kw)


class SessionRunner:
    """Runner over a ready ort.InferenceSession (same conversion as OrtRunner.run)."""

    def __init__(self, session, name: str):
        self.session, self.name = session, name
        self.path: Path | None = None
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.input_type = session.get_inputs()[0].type

    def run(self, x: np.ndarray) -> np.ndarray:
        from .backends.ort_runner import run_session

        dtype = np.float16 if "float16" in self.input_type else np.float32
        y = run_session(self.session, [self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=dtype)},
                        what=self.name)[0]
        return y.astype(np.float32, copy=False)


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
        runner = SessionRunner(sess, f"ort:{prec}")
        runner.path = Path(p)
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


TORCH_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchCudaRunner:
    """PyTorch eager (or CUDA-graph replay) on the GPU; `run` is host numpy in/out.

    precision: "fp32" | "fp16" | "bf16" (weights and activations; input and output stay fp32
    on the host). channels_last: NHWC memory format for weights and input. tf32: see
    `fp32_math` (None: PyTorch's own settings). calls: `CudaCalls()` (default) or
    `HostCalls()` to run the same code on the CPU (dry run; device is then the CPU)."""

    def __init__(self, module, cuda_graph: bool = False, device: int = 0, *, precision: str = "fp32",
                 channels_last: bool = False, tf32: bool | None = None, calls: CudaCalls | HostCalls | None = None):
        import copy

        import torch

        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"precision {precision!r}: one of {', '.join(TORCH_PRECISIONS)}")
        self.torch = torch
        self.calls = calls if calls is not None else CudaCalls()
        self.device = self.calls.device(device)
        self.precision = precision
        self.dtype = getattr(torch, TORCH_PRECISIONS[precision])
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.tf32 = tf32
        # the caller's module stays where it is, in its dtype
        self.module = copy.deepcopy(module).eval().to(self.device, self.dtype, memory_format=self.memory_format)
        self.cuda_graph = cuda_graph
        self.name = "torch-cuda:graph" if cuda_graph else "torch-cuda:eager"
        if precision != "fp32":
            self.name += f":{precision}"
        elif tf32 is not None:
            self.name += ":tf32" if tf32 else ":ieee"
        if channels_last:
            self.name += ":channels-last"
        self._graphs: dict[tuple, tuple] = {}

    def to_device(self, x: np.ndarray):
        """Host NCHW float32 -> the runner's device, dtype and memory format."""
        t = self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return t.to(self.dtype).contiguous(memory_format=self.memory_format)

    def _graph(self, shape: tuple):
        """(replay, static input, static output) for one input shape, captured once."""
        torch = self.torch
        if shape not in self._graphs:
            static_in = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(
                memory_format=self.memory_format)

            def forward():
                return self.module(static_in)

            with torch.no_grad(), fp32_math(self.tf32):
                replay, static_out = self.calls.capture(forward, self.device)
            self._graphs[shape] = (replay, static_in, static_out)
        return self._graphs[shape]

    def device_launch(self, x: np.ndarray) -> Callable[[], object]:
        """A launch function with the input already on the GPU (what GPU compute time times)."""
        torch = self.torch
        if self.cuda_graph:
            replay, static_in, _ = self._graph(tuple(x.shape))
            static_in.copy_(self.to_device(x))
            return replay
        xd = self.to_device(x)

        def launch():
            with torch.inference_mode(), fp32_math(self.tf32):
                return self.module(xd)

        return launch

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        if self.cuda_graph:
            replay, static_in, static_out = self._graph(tuple(x.shape))
            static_in.copy_(self.to_device(x))
            replay()
            return static_out.float().cpu().numpy()
        with torch.inference_mode(), fp32_math(self.tf32):
            return self.module(self.to_device(x)).float().cpu().numpy()


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
            fns = {p.backend: (lambda r=p.runner: r.run(x)) for p in cpu}
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
        base = next((r for r in rs if r.backend == baseline), rs[0]) if rs else None
        for r in rs:
            if r is base:
                continue
            paired = (r.backend in base.interleaved_with)
            s = ratio_summary(base.stats, r.stats) if paired else {
                "ratio": round(base.stats.median_ms / r.stats.median_ms, 4)}
            out.append({"size": f"{size[0]}x{size[1]}", "baseline": base.backend, "backend": r.backend,
                        "interleaved": paired, **s})
    return out


# =========================================================================== ORT profiling

def profile_ort(path: str | Path, x: np.ndarray, *, runs: int = 3, threads: int | None = None,
                graph_opt: str = "all", disabled_optimizers: Sequence[str] = ()) -> dict:
    """Per-operator time from ONNX Runtime's profiler (`so.enable_profiling`): `runs`
    inferences after one warm-up; node events grouped by op type (fused nodes keep ORT's
    names, e.g. FusedConv, QLinearConv). Returns totals per op, share of node time and the
    slowest nodes."""
    with tempfile.TemporaryDirectory(prefix="edgesr-prof-") as tmp:
        sess = ort_session(path, threads=threads, graph_opt=graph_opt, disabled_optimizers=disabled_optimizers,
                           profile_prefix=str(Path(tmp) / "ort"))
        r = SessionRunner(sess, "profile")
        r.run(x)  # warm-up (still profiled: dropped below by run index)
        t0 = time.perf_counter()
        for _ in range(runs):
            r.run(x)
        wall_ms = (time.perf_counter() - t0) * 1e3 / runs
        prof = sess.end_profiling()
        events = json.loads(Path(prof).read_text())
    return summarize_ort_profile(events, runs=runs) | {"wall_ms_per_run": round(wall_ms, 3),
                                                        "graph_opt": graph_opt, "threads": threads,
                                                        "disabled_optimizers": list(disabled_optimizers)}


def summarize_ort_profile(events: list[dict], runs: int) -> dict:
    """Aggregate ORT profile events: node 'kernel_time' events of the last `runs` model runs."""
    model_runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    keep_after = None
    if len(model_runs) > runs:
        keep_after = sorted(e["ts"] for e in model_runs)[-runs]
    by_op: dict[str, float] = {}
    by_node: dict[str, tuple[str, float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if keep_after is not None and e.get("ts", 0) < keep_after:
            continue
        op = (e.get("args") or {}).get("op_name", "?")
        dur = float(e.get("dur", 0)) / 1e3  # us -> ms
        by_op[op] = by_op.get(op, 0.0) + dur
        node = e["name"][: -len("_kernel_time")]
        prev = by_node.get(node, (op, 0.0))
        by_node[node] = (op, prev[1] + dur)
    total = sum(by_op.values()) or 1.0
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])
    nodes = sorted(by_node.items(), key=lambda kv: -kv[1][1])[:8]
    run_ms = [float(e["dur"]) / 1e3 for e in model_runs][-runs:]
    return {"runs": runs, "model_run_ms": [round(v, 3) for v in run_ms],
            "node_ms_per_run": round(total / max(1, runs), 3),
            "ops": [{"op": k, "ms_per_run": round(v / max(1, runs), 3), "share": round(v / total, 4)} for k, v in ops],
            "top_nodes": [{"node": k, "op": op, "ms_per_run": round(v / max(1, runs), 3)} for k, (op, v) in nodes]}


def optimized_ops(path: str | Path, *, graph_opt: str = "all", disabled_optimizers: Sequence[str] = ()) -> dict:
    """Operator counts of the graph ONNX Runtime actually runs (optimized_model_filepath)."""
    import onnx

    from .backends.ort_runner import session_options

    with tempfile.TemporaryDirectory(prefix="edgesr-opt-") as tmp:
        so = session_options(1, graph_opt)
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        import onnxruntime as ort

        kw = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
        ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"], **kw)
        m = onnx.load(str(Path(tmp) / "opt.onnx"))
    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


__all__ = [
    "CV_WARN", "TimingPolicy", "TimingStats", "stats_from_samples", "time_callable", "time_interleaved",
    "interleaved_order", "ratio_summary", "megapixels_per_second", "time_cuda_events", "time_cuda_copies",
    "cuda_status", "CudaCalls", "HostCalls", "fp32_math", "TorchCudaRunner", "TORCH_PRECISIONS",
    "machine_info", "load_warning", "WORKLOADS", "BACKENDS", "GPU_BACKENDS", "parse_size",
    "workload_lr_size", "standard_sizes", "open_model", "ModelSource", "prepare_backend", "Prepared",
    "bench_prepared", "BenchResult", "speedups", "profile_ort", "summarize_ort_profile", "optimized_ops",
    "ort_session", "SessionRunner", "int8_available", "int8_record", "cached_onnx_export", "cached_int8",
]

"""Latency measurement in the spirit of trtexec: timing policy, statistics and timers.

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
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


CV_WARN = 0.10  # coefficient of variation above which a measurement is flagged noisy


Clock = Callable[[], float]


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

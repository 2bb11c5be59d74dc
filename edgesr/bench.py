"""Timing statistics in the spirit of trtexec, and the machine they were taken on."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class TimingPolicy:
    warmup_seconds: float = 0.5
    min_runs: int = 10
    min_seconds: float = 1.0
    max_runs: int = 1000


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
    cv: float  # coefficient of variation (std / mean)

    @property
    def noisy(self) -> bool:
        return self.cv > 0.10

    def to_dict(self) -> dict:
        d = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}
        d["noisy"] = self.noisy
        return d


def stats_from_samples(samples_ms: list[float] | np.ndarray) -> TimingStats:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timing samples")
    mean = float(a.mean())
    return TimingStats(runs=int(a.size), min_ms=float(a.min()), median_ms=float(np.median(a)), mean_ms=mean,
                       p90_ms=float(np.percentile(a, 90)), p95_ms=float(np.percentile(a, 95)),
                       p99_ms=float(np.percentile(a, 99)), max_ms=float(a.max()),
                       cv=float(a.std() / mean) if mean > 0 else 0.0)


def time_callable(fn: Callable[[], object], policy: TimingPolicy = TimingPolicy()) -> TimingStats:
    """Warm up for a while, then run at least `min_runs` times and `min_seconds` long."""
    end = time.perf_counter() + policy.warmup_seconds
    fn()
    while time.perf_counter() < end:
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < policy.max_runs and (len(samples) < policy.min_runs
                                              or time.perf_counter() - start < policy.min_seconds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return stats_from_samples(samples)


def time_interleaved(fns: dict[str, Callable[[], object]], policy: TimingPolicy = TimingPolicy()
                     ) -> dict[str, TimingStats]:
    """Time several callables side by side: round-robin so machine noise hits all alike."""
    for fn in fns.values():
        end = time.perf_counter() + policy.warmup_seconds / max(1, len(fns))
        fn()
        while time.perf_counter() < end:
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < policy.max_runs and (rounds < policy.min_runs
                                        or time.perf_counter() - start < policy.min_seconds * len(fns)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {k: stats_from_samples(v) for k, v in samples.items()}


def machine_info() -> dict:
    """CPU model, cores, flags of interest and library versions."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "machine": platform.machine(), "logical_cpus": os.cpu_count(), "cpu_model": _cpu_model()}
    flags = _cpu_flags()
    if flags:
        info["cpu_flags"] = sorted(f for f in flags if f in {
            "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
            "sse4_2", "bmi2"})
    for mod in ("torch", "onnx", "onnxruntime", "numpy", "onnxslim", "tensorrt", "tensorrt_rtx"):
        info[f"{mod}_version"] = _version(mod)
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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

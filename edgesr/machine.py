"""What a measurement was taken on: CPU model, cores, caches, flags, load, memory, library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


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
        info[f"{mod}_version"] = package_version(mod)
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


def int8_dot_product() -> dict:
    """How this CPU multiplies u8 x s8 for INT8 kernels: VNNI instructions (exact int32 sums) or,
    without them, AVX2 ``vpmaddubsw`` (pairs of products summed in a saturating int16, which is why
    the ``cpu`` INT8 profile keeps weights 7-bit). INT8 speed and quality claims hold for this kind."""
    flags = _cpu_flags()
    vnni = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in flags]
    return {"cpu_model": _cpu_model(), "vnni": vnni,
            "u8s8_path": "VNNI (int32 sums)" if vnni else
            "AVX2 vpmaddubsw (saturating int16 pair sums)" if "avx2" in flags else "unknown"}


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


def package_version(mod: str) -> str | None:
    """The installed version of a module's distribution (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    names = {"onnxruntime": ["onnxruntime", "onnxruntime-gpu"], "tensorrt_rtx": ["tensorrt-rtx-cu13", "tensorrt_rtx"],
             "tensorrt": ["tensorrt", "tensorrt-cu12"]}.get(mod, [mod])
    for n in names:
        try:
            return version(n)
        except PackageNotFoundError:
            continue
    return None


_version = package_version  # the name bench.py and bundle.py used

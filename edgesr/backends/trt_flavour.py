"""Which TensorRT: NVIDIA TensorRT (`tensorrt`, 10.x / 11.x) or TensorRT for RTX (`tensorrt_rtx`).

Both expose the same builder / parser / runtime classes (`Builder`, `OnnxParser`,
`IBuilderConfig`, `Runtime`, `ICudaEngine`, `IExecutionContext`), so one code path
builds and runs engines for either. A :class:`Flavour` records which module was
imported, its version, and the handful of capabilities where they differ. Capabilities
are read from the imported module (``hasattr``), not from version tables, so a release
that adds or drops an API is handled by what it actually exposes.

Differences found by reading the installed modules and their documentation:

- TensorRT-RTX builds ahead-of-time on a machine without a GPU; its engines are JIT
  specialised on the target GPU at run time. TensorRT needs the target GPU to build.
- TensorRT-RTX targets GPUs by compute capability
  (``IBuilderConfig.num_compute_capabilities`` + ``set_compute_capability``); with none set
  it builds a portable engine for its default set (Ampere and later). TensorRT targets the
  GPU it builds on.
- TensorRT-RTX networks are always strongly typed (``create_network(0)`` already reports
  ``STRONGLY_TYPED``) and it has no FP16/INT8 builder flags; TensorRT 11 removed them too.
  TensorRT 10 still has them (weakly typed networks only).
- The timing cache API exists in TensorRT-RTX but is a no-op (deprecated in 1.2); its
  run-time analogue is the runtime cache (``IRuntimeConfig.create_runtime_cache``).
- TensorRT-RTX has built-in CUDA graphs (``IRuntimeConfig.cuda_graph_strategy``); with
  TensorRT the caller captures ``execute_async_v3`` on a stream.
"""

from __future__ import annotations

import importlib
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator

from edgesr.errors import BackendUnavailable, EngineBuildError

log = logging.getLogger("edgesr.trt")

# name -> (module, extra, pip package)
FLAVOURS: dict[str, tuple[str, str, str]] = {
    "rtx": ("tensorrt_rtx", "trt-rtx", "tensorrt-rtx-cu13"),
    "trt": ("tensorrt", "trt", "tensorrt"),
}
_ALIASES = {
    "rtx": "rtx",
    "trt-rtx": "rtx",
    "tensorrt-rtx": "rtx",
    "tensorrt_rtx": "rtx",
    "trt": "trt",
    "tensorrt": "trt",
}


def normalize_flavour(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise EngineBuildError(
            f"unknown TensorRT flavour {name!r}; use 'rtx' (TensorRT for RTX) or 'trt' (TensorRT)"
        )
    return _ALIASES[key]


@dataclass(frozen=True)
class Flavour:
    """One importable TensorRT flavour and what its Python API offers."""

    name: str  # "rtx" | "trt"
    module_name: str
    extra: str
    module: ModuleType
    version: str

    @property
    def trt(self) -> ModuleType:
        return self.module

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    @property
    def label(self) -> str:
        return "TensorRT-RTX" if self.name == "rtx" else "TensorRT"

    @property
    def builds_without_gpu(self) -> bool:
        return self.name == "rtx"

    @property
    def supports_compute_capabilities(self) -> bool:
        cfg = getattr(self.module, "IBuilderConfig", None)
        return (
            hasattr(cfg, "set_compute_capability")
            and hasattr(cfg, "num_compute_capabilities")
            and hasattr(self.module, "ComputeCapability")
        )

    @property
    def compute_capability_names(self) -> list[str]:
        if not self.supports_compute_capabilities:
            return []
        return [n for n in self.module.ComputeCapability.__members__ if n.startswith("SM")]

    @property
    def supports_precision_flags(self) -> bool:
        """TensorRT 10 only: FP16/INT8 builder flags on a weakly typed network."""
        flags = getattr(self.module, "BuilderFlag", None)
        return self.name == "trt" and flags is not None and hasattr(flags, "FP16")

    @property
    def supports_timing_cache(self) -> bool:
        # Present but a no-op in TensorRT-RTX (deprecated there in 1.2).
        return self.name == "trt" and hasattr(self.module.IBuilderConfig, "create_timing_cache")

    @property
    def supports_runtime_cache(self) -> bool:
        rc = getattr(self.module, "IRuntimeConfig", None)
        return rc is not None and hasattr(rc, "create_runtime_cache")

    @property
    def supports_builtin_cuda_graphs(self) -> bool:
        rc = getattr(self.module, "IRuntimeConfig", None)
        return (
            rc is not None
            and hasattr(rc, "cuda_graph_strategy")
            and hasattr(self.module, "CudaGraphStrategy")
        )

    def onnx_parser_version(self) -> str | None:
        fn = getattr(self.module, "get_nv_onnx_parser_version", None)
        if fn is None:
            return None
        try:
            return str(fn())
        except Exception:  # informational only
            return None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module_name,
            "version": self.version,
            "onnx_parser_version": self.onnx_parser_version(),
        }


_cache: dict[str, Flavour] = {}
_cache_lock = threading.Lock()


def load_flavour(name: str = "rtx") -> Flavour:
    """Import the flavour's module lazily; a missing one raises BackendUnavailable."""
    key = normalize_flavour(name)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        module_name, extra, package = FLAVOURS[key]
        label = "TensorRT-RTX" if key == "rtx" else "TensorRT"
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:  # not installed, or its shared libraries fail to load
            raise BackendUnavailable(
                f"{label} is not available ({module_name}: {e}); "
                f"install it with: pip install 'edgesr[{extra}]' (package {package})"
            ) from e
        except OSError as e:
            raise BackendUnavailable(
                f"{label} is installed but its libraries failed to load ({e}); "
                f"reinstall with: pip install --force-reinstall 'edgesr[{extra}]'"
            ) from e
        version = str(getattr(module, "__version__", "0"))
        flav = Flavour(key, module_name, extra, module, version)
        _cache[key] = flav
        return flav


# --------------------------------------------------------------------------- logger
# TensorRT keeps the first logger a process hands to a Builder/Runtime and warns on
# any other, so each flavour gets ONE logger; builds push a capture list onto it.


class _Capture:
    def __init__(self) -> None:
        self.records: list[tuple[int, str]] = []

    def errors(self) -> list[str]:
        return [m for sev, m in self.records if sev <= 1]  # INTERNAL_ERROR=0, ERROR=1

    def warnings(self) -> list[str]:
        return [m for sev, m in self.records if sev == 2]


_loggers: dict[str, Any] = {}


def get_logger(flavour: Flavour) -> Any:
    """The process-wide capturing ILogger of this flavour (forwards to `logging`)."""
    with _cache_lock:
        if flavour.name in _loggers:
            return _loggers[flavour.name]
        trt = flavour.module
        base: Any = trt.ILogger  # the flavour's own ILogger class, known at run time only

        class _CapturingLogger(base):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self._local = threading.local()

            def _stack(self) -> list[_Capture]:
                st = getattr(self._local, "stack", None)
                if st is None:
                    st = self._local.stack = []
                return st

            def log(self, severity: Any, msg: str) -> None:  # called from TensorRT
                sev = int(severity)
                if sev >= 4 and not log.isEnabledFor(logging.DEBUG):
                    return  # VERBOSE: skip the Python work unless someone listens
                stack = self._stack()
                if sev <= 2 and stack:
                    # Collected for the exception / artifact that the caller raises or returns.
                    for cap in stack:
                        cap.records.append((sev, str(msg)))
                    log.debug("[%s] %s", flavour.label, msg)
                    return
                level = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}
                log.log(level.get(sev, logging.DEBUG), "[%s] %s", flavour.label, msg)

            @contextmanager
            def capture(self) -> Iterator[_Capture]:
                cap = _Capture()
                st = self._stack()
                st.append(cap)
                try:
                    yield cap
                finally:
                    st.remove(cap)

        logger = _CapturingLogger()
        _loggers[flavour.name] = logger
        return logger


# --------------------------------------------------------------------------- dtypes
_DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "FP8": "float8_e4m3",
    "INT4": "int4",
    "FP4": "float4_e2m1",
    "E8M0": "float8_e8m0",
}


def dtype_name(trt_dtype: Any) -> str:
    """numpy-style name of a tensorrt(.rtx).DataType ("float32", "float16", ...)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    return _DTYPE_NAMES.get(name, name.lower())


# --------------------------------------------------------------------------- GPU info


def gpu_info(device: int = 0) -> dict[str, Any] | None:
    """Name and compute capability of a CUDA device, or None when none can be seen.

    Tries torch (a core dependency; a CPU build simply reports no device), then
    cuda-python when it is installed.
    """
    try:
        import torch

        if torch.cuda.is_available() and device < torch.cuda.device_count():
            major, minor = torch.cuda.get_device_capability(device)
            return {
                "name": torch.cuda.get_device_name(device),
                "compute_capability": f"{major}.{minor}",
            }
    except Exception:  # a broken CUDA install must not break CPU-only builds
        pass
    for modname in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            cudart = importlib.import_module(modname)
        except Exception:
            continue
        try:
            err, props = cudart.cudaGetDeviceProperties(device)
            if int(err) != 0:
                return None
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
        except Exception:
            return None
    return None

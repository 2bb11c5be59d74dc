"""TensorRT and TensorRT-RTX engines: build anywhere, run on the GPU.

Public API (nothing here imports tensorrt / tensorrt_rtx until it is used):

    from edgesr.backends.trt import build_engine, ShapeProfile, BuildOptions, TensorRTRunner

    art = build_engine("model.onnx", "out/", flavour="rtx",            # or "trt"
                       profile=ShapeProfile(opt_hw=(270, 480), size_multiple=1),
                       options=BuildOptions(compute_capabilities=("8.6", "8.9", "12.0")))
    art.path            # out/model.trt-rtx.engine
    art.sidecar_path    # out/model.trt-rtx.engine.json (key, profile, precision, I/O, versions)
    art.cache_hit       # True when an identical engine was already there
    art.build_seconds, art.precision, art.flavour_version

    with TensorRTRunner(art.path) as r:                             # needs a CUDA GPU
        out = r.run({"input": x})                                   # dict[str, np.ndarray]
        ms = r.time_gpu({"input": x})

    r = open_runner("out/model.trt-rtx.engine")    # parity / bench helper: one-line
                                                    # BackendUnavailable without a CUDA GPU

    inspect_onnx("model_int8.onnx").precision                       # "fp32" / "fp16" / "int8" ...
    load_flavour("rtx").version                                     # BackendUnavailable if missing
"""

from __future__ import annotations

from edgesr.backends.engine_cache import cache_key, lookup, read_sidecar, sidecar_path
from edgesr.backends.trt_build import (
    BuildOptions,
    EngineArtifact,
    ShapeProfile,
    build_engine,
    engine_cache_key,
    read_engine_metadata,
)
from edgesr.backends.trt_flavour import Flavour, gpu_info, load_flavour
from edgesr.backends.trt_onnx import OnnxInfo, TensorInfo, check_onnx_for_tensorrt, inspect_onnx
from edgesr.backends.trt_runner import EngineShapeError, TensorRTRunner, open_runner

__all__ = [
    "BuildOptions",
    "EngineArtifact",
    "EngineShapeError",
    "Flavour",
    "OnnxInfo",
    "ShapeProfile",
    "TensorInfo",
    "TensorRTRunner",
    "build_engine",
    "cache_key",
    "engine_cache_key",
    "check_onnx_for_tensorrt",
    "gpu_info",
    "inspect_onnx",
    "load_flavour",
    "lookup",
    "open_runner",
    "read_engine_metadata",
    "read_sidecar",
    "sidecar_path",
]

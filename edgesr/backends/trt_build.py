"""Build TensorRT / TensorRT-RTX engines from ONNX, with an engine cache and sidecars.

    art = build_engine("model_int8.onnx", "out/", flavour="rtx",
                       profile=ShapeProfile(min_hw=(16, 16), opt_hw=(256, 256), max_hw=(1088, 1920)))
    art.path, art.sidecar_path, art.cache_hit, art.build_seconds, art.precision

Precision is not a builder setting: it comes from the ONNX (fp32, fp16 tensors, INT8
Q/DQ), is detected from the graph and recorded. Only TensorRT 10 still accepts FP16/INT8
builder flags (`BuildOptions.precision_flags`), on a weakly typed network.

Over 500 lines on purpose: one engine build (options, profile, cache key, sidecar, builder calls)
for both TensorRT flavours; the parts that stand alone are trt_flavour, trt_onnx, engine_cache.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from edgesr.backends import engine_cache
from edgesr.backends.trt_flavour import Flavour, dtype_name, get_logger, gpu_info, load_flavour
from edgesr.backends.trt_onnx import OnnxInfo, check_onnx_for_tensorrt, inspect_onnx
from edgesr.errors import EngineBuildError
from edgesr.fsutil import atomic_write_bytes

# --------------------------------------------------------------------------- profile


def _pair(v: Any, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    try:
        h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        raise EngineBuildError(f"ShapeProfile.{what} must be (H, W) integers, got {v!r}") from None
    if h < 1 or w < 1:
        raise EngineBuildError(f"ShapeProfile.{what} must be positive, got {(h, w)}")
    return h, w


@dataclass(frozen=True)
class ShapeProfile:
    """Optimization profile for the single NCHW image input (LR sizes, not HR).

    H/W are rounded to `size_multiple` (min up, max down, opt to the nearest and clamped).
    Dimensions the ONNX fixes (e.g. a static batch or static H/W) override the profile.
    """

    min_hw: tuple[int, int] = (16, 16)
    opt_hw: tuple[int, int] = (256, 256)
    max_hw: tuple[int, int] = (1088, 1920)
    batch: tuple[int, int, int] = (1, 1, 1)  # min, opt, max
    size_multiple: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_hw", _pair(self.min_hw, "min_hw"))
        object.__setattr__(self, "opt_hw", _pair(self.opt_hw, "opt_hw"))
        object.__setattr__(self, "max_hw", _pair(self.max_hw, "max_hw"))
        given: Any = self.batch  # callers also pass one int for a fixed batch
        if isinstance(given, int):
            given = (given, given, given)
        try:
            b = tuple(int(x) for x in given)
        except (TypeError, ValueError):
            raise EngineBuildError(f"ShapeProfile.batch must be (min, opt, max), got {self.batch!r}") from None
        if len(b) != 3 or not (1 <= b[0] <= b[1] <= b[2]):
            raise EngineBuildError(f"ShapeProfile.batch must be 1 <= min <= opt <= max, got {b}")
        object.__setattr__(self, "batch", b)
        if int(self.size_multiple) < 1:
            raise EngineBuildError(f"ShapeProfile.size_multiple must be >= 1, got {self.size_multiple}")
        object.__setattr__(self, "size_multiple", int(self.size_multiple))

    @classmethod
    def from_spec(cls, spec: Any, **overrides: Any) -> "ShapeProfile":
        """Defaults honouring a `Spec`'s size_multiple and min_size."""
        m = max(1, int(getattr(spec, "size_multiple", 1)))
        lo = max(16, int(getattr(spec, "min_size", 1)))
        kw: dict[str, Any] = {"size_multiple": m, "min_hw": (lo, lo)}
        kw.update(overrides)
        return cls(**kw)

    def resolved(self) -> "ShapeProfile":
        """Rounded to size_multiple and checked min <= opt <= max."""
        m = self.size_multiple
        mn = (int(math.ceil(self.min_hw[0] / m) * m), int(math.ceil(self.min_hw[1] / m) * m))
        mx = (int(self.max_hw[0] // m * m), int(self.max_hw[1] // m * m))
        for axis, lo, hi in zip("HW", mn, mx):
            if hi < lo or hi < 1:
                raise EngineBuildError(
                    f"ShapeProfile {axis}: no multiple of {m} lies in "
                    f"[{self.min_hw['HW'.index(axis)]}, {self.max_hw['HW'.index(axis)]}] "
                    f"(min rounds up to {lo}, max rounds down to {hi})"
                )
        oh, ow = (min(max(int(round(v / m) * m), lo), hi) for v, lo, hi in zip(self.opt_hw, mn, mx))
        return replace(self, min_hw=mn, opt_hw=(oh, ow), max_hw=mx)

    def shapes(self, dims: Sequence[int | str | None]) -> dict[str, tuple[int, ...]]:
        """min/opt/max NCHW shapes for an input whose ONNX dims are `dims` (fixed dims win)."""
        r = self.resolved()
        if len(dims) != 4:
            raise EngineBuildError(
                f"expected a 4-D NCHW image input, got {len(dims)}-D dims {list(dims)}"
            )
        c = dims[1]
        if not isinstance(c, int) or c < 1:
            raise EngineBuildError(
                f"the channel dimension of the input is dynamic ({c!r}); export with fixed channels"
            )
        out: dict[str, tuple[int, ...]] = {}
        for i, key in enumerate(("min", "opt", "max")):
            want = (r.batch[i], c, (r.min_hw, r.opt_hw, r.max_hw)[i][0], (r.min_hw, r.opt_hw, r.max_hw)[i][1])
            out[key] = tuple(d if isinstance(d, int) and d > 0 else w for d, w in zip(dims, want))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- options


def _norm_cc(cc: str | float | int, flav: Flavour) -> str:
    s = str(cc).strip().upper().replace("_", "")
    if s in ("CURRENT", "NATIVE"):
        return "CURRENT"
    m = re.fullmatch(r"(?:SM)?(\d+)(?:\.(\d+))?", s)
    if not m:
        raise EngineBuildError(f"cannot read compute capability {cc!r}; use e.g. '8.6', '12.0' or 'sm89'")
    major, minor = m.group(1), m.group(2)
    name = f"SM{major}{minor}" if minor is not None else f"SM{major}"
    names = flav.compute_capability_names
    if name not in names:
        raise EngineBuildError(
            f"{flav.label} {flav.version} cannot target compute capability {cc!r}; "
            f"it knows {', '.join(names) or 'none'} (and 'current' on a machine with that GPU)"
        )
    return name


_PRECISION_FLAGS = {"fp16": "FP16", "int8": "INT8", "bf16": "BF16", "fp8": "FP8", "tf32": "TF32"}


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings. All but `max_threads` are part of the engine-cache key."""

    optimization_level: int | None = None  # 0..5; None keeps the library default (3)
    workspace_bytes: int | None = None
    # TensorRT-RTX only: e.g. ("8.6", "8.9", "12.0"), ("7.5",) for Turing, or ("current",).
    # None builds its portable default set (Ampere and later) and needs no GPU.
    compute_capabilities: tuple[str, ...] | None = None
    # "ampere_plus" / "same_compute_capability" (HardwareCompatibilityLevel); None = off.
    hardware_compatibility: str | None = None
    # TensorRT 10 only (weakly typed network): e.g. ("fp16", "int8").
    precision_flags: tuple[str, ...] = ()
    max_threads: int | None = None  # builder CPU threads; not part of the key

    def key_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("max_threads")
        return d


# --------------------------------------------------------------------------- artifact


@dataclass(frozen=True)
class EngineArtifact:
    path: Path
    sidecar_path: Path
    cache_hit: bool
    build_seconds: float  # spent building in this call; 0.0 on a cache hit
    cache_key: str
    flavour: str
    flavour_version: str
    precision: str
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)  # the sidecar
    warnings: tuple[str, ...] = field(repr=False, default=())  # builder warnings (fresh builds)


def read_engine_metadata(engine_path: str | os.PathLike) -> dict[str, Any]:
    meta = engine_cache.read_sidecar(engine_path)
    if meta is None:
        raise EngineBuildError(
            f"no readable sidecar {engine_cache.sidecar_path(engine_path)} for engine {engine_path}; rebuild it"
        )
    return meta


# --------------------------------------------------------------------------- build


def build_engine(
    onnx_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    flavour: str = "rtx",
    profile: ShapeProfile | None = None,
    options: BuildOptions | None = None,
    timing_cache: str | os.PathLike | None = None,
    engine_name: str | None = None,
    force: bool = False,
    check: bool = True,
    device: int = 0,
) -> EngineArtifact:
    """Build (or reuse from cache) an engine for `onnx_path` into `out_dir`.

    flavour: "rtx" (TensorRT for RTX: builds on any machine, runs on RTX-class GPUs) or
      "trt" (TensorRT 10/11: builds on, and for, the local GPU `device`).
    profile: required when the ONNX input has dynamic dims; `ShapeProfile()` gives
      defaults (16x16 .. 1088x1920, opt 256x256, batch 1).
    timing_cache: file to load/save the builder timing cache (TensorRT only; TensorRT-RTX
      has no effective timing cache, so it is recorded as unused).
    engine_name: file name inside out_dir (default "<onnx stem>.<trt-rtx|trt>.engine").
      An existing engine there is reused when its sidecar key matches, rebuilt otherwise.
    check: refuse known-bad QDQ graphs (int32 biases, asymmetric zero points) before parsing.
    """
    options = options or BuildOptions()
    onnx_path = Path(onnx_path)
    flav, info, image_input, shapes, target, key_components, key = _plan(
        onnx_path, flavour, profile, options, device, check
    )
    suffix = "trt-rtx" if flav.name == "rtx" else "trt"
    engine_path = Path(out_dir) / (engine_name or f"{onnx_path.stem}.{suffix}.engine")

    if not force:
        meta = engine_cache.lookup(engine_path, key)
        if meta is not None:
            return _artifact(engine_path, meta, cache_hit=True, build_seconds=0.0)

    data, io, timing, warnings, seconds, strongly_typed = _build(
        flav, info, options, image_input, shapes, timing_cache, device, target
    )
    sidecar: dict[str, Any] = {
        "cache_key": key,
        "key_components": key_components,
        "flavour": flav.describe(),
        "precision": _effective_precision(info, options),
        "onnx": info.to_dict(),
        "target": target,
        "profile": (
            {"input": image_input, **{k: list(v) for k, v in shapes.items()}, "requested": profile.to_dict()}
            if shapes and profile is not None
            else None
        ),
        "builder": {**asdict(options), "strongly_typed": strongly_typed},
        "io": io,
        "timing_cache": timing,
        "build_seconds": round(seconds, 4),
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgesr_version": _edgesr_version(),
    }
    engine_cache.store(engine_path, data, sidecar)
    meta = engine_cache.read_sidecar(engine_path) or sidecar
    return _artifact(engine_path, meta, cache_hit=False, build_seconds=seconds, warnings=warnings)


def engine_cache_key(
    onnx_path: str | os.PathLike,
    *,
    flavour: str = "rtx",
    profile: ShapeProfile | None = None,
    options: BuildOptions | None = None,
    device: int = 0,
    check: bool = True,
) -> str:
    """The cache key `build_engine` would give this build, without building (same checks)."""
    return _plan(Path(onnx_path), flavour, profile, options or BuildOptions(), device, check)[-1]


def _plan(onnx_path: Path, flavour: str, profile: ShapeProfile | None, options: BuildOptions, device: int,
          check: bool) -> tuple[Flavour, OnnxInfo, str | None, dict[str, tuple[int, ...]], dict[str, Any],
                                dict[str, Any], str]:
    """Everything decided before building: flavour, ONNX reading, shapes, target and the cache key."""
    flav = load_flavour(flavour)
    info = inspect_onnx(onnx_path)
    if check:
        check_onnx_for_tensorrt(info)
    _validate_options(flav, options)

    image_input, shapes = _resolve_shapes(info, profile)
    target = _target(flav, options, device)
    key_components = {
        "onnx_sha256": info.sha256,
        "profile": {"input": image_input, **{k: list(v) for k, v in shapes.items()}} if shapes else None,
        "precision": info.precision,
        "flavour": {"name": flav.name, "version": flav.version},
        "target": target,
        "builder": _builder_key(flav, options),
    }
    return flav, info, image_input, shapes, target, key_components, engine_cache.cache_key(key_components)


def _artifact(path: Path, meta: dict[str, Any], *, cache_hit: bool, build_seconds: float,
              warnings: Sequence[str] = ()) -> EngineArtifact:
    fl = meta.get("flavour") or {}
    return EngineArtifact(
        path=path,
        sidecar_path=engine_cache.sidecar_path(path),
        cache_hit=cache_hit,
        build_seconds=build_seconds,
        cache_key=meta["cache_key"],
        flavour=fl.get("name", ""),
        flavour_version=fl.get("version", ""),
        precision=meta.get("precision", ""),
        metadata=meta,
        warnings=tuple(warnings),
    )


def _edgesr_version() -> str:
    try:
        from edgesr import __version__

        return __version__
    except Exception:  # pragma: no cover
        return "unknown"


def _effective_precision(info: OnnxInfo, o: BuildOptions) -> str:
    """The ONNX's precision, plus TensorRT 10 builder flags when any were asked for."""
    if not o.precision_flags:
        return info.precision
    return f"{info.precision}+builder:{','.join(sorted({str(p).lower() for p in o.precision_flags}))}"


def _builder_key(flav: Flavour, o: BuildOptions) -> dict[str, Any]:
    """Options in canonical form: equivalent spellings and orders give the same key."""
    d = o.key_dict()
    if o.compute_capabilities is not None:
        d["compute_capabilities"] = sorted({_norm_cc(c, flav) for c in o.compute_capabilities})
    d["precision_flags"] = sorted({str(p).lower() for p in o.precision_flags})
    if o.hardware_compatibility is not None:
        d["hardware_compatibility"] = str(o.hardware_compatibility).lower()
    return d


def _validate_options(flav: Flavour, o: BuildOptions) -> None:
    if o.optimization_level is not None and not (0 <= int(o.optimization_level) <= 5):
        raise EngineBuildError(f"optimization_level must be 0..5, got {o.optimization_level}")
    if o.workspace_bytes is not None and int(o.workspace_bytes) <= 0:
        raise EngineBuildError(f"workspace_bytes must be positive, got {o.workspace_bytes}")
    if o.compute_capabilities is not None:
        if not flav.supports_compute_capabilities:
            raise EngineBuildError(
                f"{flav.label} {flav.version} builds for the GPU it runs on; compute_capabilities "
                "targets are a TensorRT-RTX option (flavour='rtx')"
            )
        if isinstance(o.compute_capabilities, str) or not o.compute_capabilities:
            raise EngineBuildError(
                f"compute_capabilities must be a non-empty sequence like ('8.6', '12.0'), got {o.compute_capabilities!r}"
            )
        ccs = [_norm_cc(c, flav) for c in o.compute_capabilities]
        if "CURRENT" in ccs and len(ccs) > 1:
            raise EngineBuildError("compute capability 'current' cannot be combined with other targets")
    if o.hardware_compatibility is not None:
        levels = getattr(flav.trt, "HardwareCompatibilityLevel", None)
        name = str(o.hardware_compatibility).upper()
        if levels is None or name not in levels.__members__:
            have = list(levels.__members__) if levels is not None else []
            raise EngineBuildError(
                f"hardware_compatibility {o.hardware_compatibility!r} not offered by {flav.label} {flav.version} "
                f"(has: {', '.join(h.lower() for h in have) or 'none'})"
            )
    if o.precision_flags:
        if not flav.supports_precision_flags:
            raise EngineBuildError(
                f"{flav.label} {flav.version} has no FP16/INT8 builder flags: precision comes from the ONNX "
                "(export fp16 tensors, or INT8 Q/DQ nodes). Drop precision_flags."
            )
        for p in o.precision_flags:
            flag = _PRECISION_FLAGS.get(str(p).lower())
            if flag is None or not hasattr(flav.trt.BuilderFlag, flag):
                raise EngineBuildError(
                    f"unknown precision flag {p!r} for {flav.label} {flav.version}; use {sorted(_PRECISION_FLAGS)}"
                )


def _resolve_shapes(info: OnnxInfo, profile: ShapeProfile | None) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    """(image input name, min/opt/max shapes) — ({} when every input is static)."""
    dynamic = [t for t in info.inputs if t.dynamic]
    if not dynamic:
        return (info.inputs[0].name if len(info.inputs) == 1 else None), {}
    if len(info.inputs) != 1:
        raise EngineBuildError(
            f"{info.path.name} has {len(info.inputs)} inputs ({', '.join(t.name for t in info.inputs)}) "
            "with dynamic dims; edgesr builds profiles for one NCHW image input only"
        )
    inp = info.inputs[0]
    if profile is None:
        raise EngineBuildError(
            f"input '{inp.name}' of {info.path.name} has dynamic dims {list(inp.shape)} but no ShapeProfile "
            "was given; pass profile=ShapeProfile() for the defaults (min 16x16, opt 256x256, max 1088x1920) "
            "or set min_hw/opt_hw/max_hw"
        )
    return inp.name, profile.shapes(inp.shape)


def _target(flav: Flavour, o: BuildOptions, device: int) -> dict[str, Any]:
    if flav.name == "rtx":
        if o.compute_capabilities is None:
            return {"compute_capabilities": "default"}
        ccs = sorted({_norm_cc(c, flav) for c in o.compute_capabilities})
        if ccs == ["CURRENT"]:
            gpu = gpu_info(device)
            if gpu is None:
                raise EngineBuildError(
                    "compute capability 'current' needs a visible GPU; name the targets instead, "
                    "e.g. compute_capabilities=('8.6', '8.9', '12.0')"
                )
            return {"compute_capabilities": ["CURRENT"], "gpu": gpu["name"],
                    "compute_capability": gpu["compute_capability"]}
        return {"compute_capabilities": ccs}
    gpu = gpu_info(device)
    if gpu is None:
        raise EngineBuildError(
            f"{flav.label} builds engines on the GPU they will run on, and no CUDA GPU is visible "
            f"(device {device}); build with flavour='rtx' on a CPU-only machine"
        )
    return {"gpu": gpu["name"], "compute_capability": gpu["compute_capability"]}


def _clean_lines(text: str, flav: Flavour) -> list[str]:
    out: list[str] = []
    for line in str(text).splitlines():
        line = line.strip()
        if not line or line in out:
            continue
        # AOT builds on a machine without a GPU driver log this for every error; it is noise.
        if flav.builds_without_gpu and "cudaError 35" in line:
            continue
        out.append(line)
    return out


def _parser_errors(parser: Any, flav: Flavour, info: OnnxInfo) -> str:
    items: list[str] = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node_index = e.node() if hasattr(e, "node") else -1
        name = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        code = str(e.code()).rsplit(".", 1)[-1] if hasattr(e, "code") else ""
        desc = " | ".join(_clean_lines(e.desc(), flav))[:600]
        where = f"node '{name}'" if name else (f"node #{node_index}" if node_index >= 0 else "model")
        if op:
            where += f" (op {op}"
            where += f", #{node_index})" if node_index >= 0 else ")"
        hint = ""
        low = desc.lower()
        if op and any(s in low for s in ("plugin not found", "no importer", "unsupported")):
            qual = next((c.split(" ")[0] for c in info.custom_domain_ops if c.endswith(f"({name})")), op)
            hint = f"unsupported op {qual}, no TensorRT importer or plugin: "
        items.append(f"{where}: {hint}{desc} [{code}]")
    n = len(items)
    return (
        f"{flav.label} {flav.version} could not parse {info.path.name} "
        f"({n} error{'s' if n != 1 else ''}): " + "; ".join(items)
    )


def _io_from_network(network: Any, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    def one(t: Any) -> dict[str, Any]:
        d = {"name": t.name, "dtype": dtype_name(t.dtype), "shape": [int(x) for x in t.shape]}
        if shapes and t.is_network_input:
            d["profile"] = {k: list(v) for k, v in shapes.items()}
        return d

    return {
        "source": "network",
        "inputs": [one(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [one(network.get_output(i)) for i in range(network.num_outputs)],
    }


def _io_from_engine(flav: Flavour, data: bytes, logger: Any) -> dict[str, Any] | None:
    """I/O as the deserialized engine reports it; needs a GPU that can load the engine."""
    trt = flav.trt
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(data)
    except Exception:
        return None
    if engine is None:
        return None
    ins, outs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        d: dict[str, Any] = {
            "name": name,
            "dtype": dtype_name(engine.get_tensor_dtype(name)),
            "shape": [int(x) for x in engine.get_tensor_shape(name)],
        }
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            if engine.num_optimization_profiles > 0 and -1 in d["shape"]:
                mn, opt, mx = engine.get_tensor_profile_shape(name, 0)
                d["profile"] = {"min": list(mn), "opt": list(opt), "max": list(mx)}
            ins.append(d)
        else:
            outs.append(d)
    return {"source": "engine", "inputs": ins, "outputs": outs}


def _build(
    flav: Flavour,
    info: OnnxInfo,
    o: BuildOptions,
    image_input: str | None,
    shapes: dict[str, tuple[int, ...]],
    timing_cache: str | os.PathLike | None,
    device: int,
    target: dict[str, Any],
) -> tuple[bytes, dict[str, Any], dict[str, Any] | None, list[str], float, bool | None]:
    trt = flav.trt
    logger = get_logger(flav)
    if flav.name == "trt":
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_device(device)
        except Exception:
            pass
    with logger.capture() as cap:
        try:
            builder = trt.Builder(logger)
        except Exception as e:  # e.g. CUDA initialisation failure
            raise EngineBuildError(f"{flav.label} {flav.version}: cannot create a builder: {e}") from e
        if builder is None:
            raise EngineBuildError(
                f"{flav.label} {flav.version}: cannot create a builder: " + " | ".join(cap.errors())
            )
        if o.max_threads is not None and hasattr(builder, "max_threads"):
            builder.max_threads = int(o.max_threads)

        flags = 0
        st_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if st_flag is not None and flav.name == "trt" and not o.precision_flags:
            flags |= 1 << int(st_flag)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        ok = parser.parse(info.path.read_bytes(), str(info.path))
        if not ok or parser.num_errors:
            raise EngineBuildError(_parser_errors(parser, flav, info))
        strongly_typed = bool(network.get_flag(st_flag)) if st_flag is not None else None

        # The network's view must agree with the ONNX reading the profile was made from.
        net_inputs = [network.get_input(i) for i in range(network.num_inputs)]
        dyn = [t for t in net_inputs if any(int(d) < 0 for d in t.shape)]
        if dyn and not shapes:
            t = dyn[0]
            raise EngineBuildError(
                f"input '{t.name}' has dynamic dims {[int(d) for d in t.shape]} but no ShapeProfile was given; "
                "pass profile=ShapeProfile()"
            )

        config = builder.create_builder_config()
        if o.optimization_level is not None:
            config.builder_optimization_level = int(o.optimization_level)
        if o.workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(o.workspace_bytes))
        if o.hardware_compatibility is not None:
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.__members__[
                str(o.hardware_compatibility).upper()
            ]
        if o.compute_capabilities is not None:
            ccs = sorted({_norm_cc(c, flav) for c in o.compute_capabilities})
            config.num_compute_capabilities = len(ccs)
            for i, cc in enumerate(ccs):
                if not config.set_compute_capability(trt.ComputeCapability.__members__[cc], i):
                    raise EngineBuildError(f"{flav.label} rejected compute capability {cc}: " + " | ".join(cap.errors()))
        for p in o.precision_flags:
            config.set_flag(getattr(trt.BuilderFlag, _PRECISION_FLAGS[str(p).lower()]))

        if shapes:
            prof = builder.create_optimization_profile()
            prof.set_shape(image_input, shapes["min"], shapes["opt"], shapes["max"])
            if config.add_optimization_profile(prof) < 0:
                raise EngineBuildError(
                    f"{flav.label} rejected the optimization profile for '{image_input}' "
                    f"(min {shapes['min']}, opt {shapes['opt']}, max {shapes['max']}): " + " | ".join(cap.errors())
                )

        timing: dict[str, Any] | None = None
        tcache = None
        if timing_cache is not None:
            tc_path = Path(timing_cache)
            if not flav.supports_timing_cache:
                timing = {"path": str(tc_path), "used": False,
                          "reason": f"timing cache is a no-op in {flav.label}"}
            else:
                loaded = False
                blob = b""
                if tc_path.is_file():
                    blob = tc_path.read_bytes()
                tcache = config.create_timing_cache(blob)
                if blob and tcache is not None and config.set_timing_cache(tcache, False):
                    loaded = True
                else:  # missing, or recorded on another device/version: start a fresh one
                    tcache = config.create_timing_cache(b"")
                    config.set_timing_cache(tcache, False)
                timing = {"path": str(tc_path), "used": True, "loaded": loaded}

        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
        if serialized is None:
            msgs = [ln for m in cap.errors() for ln in _clean_lines(m, flav)]
            raise EngineBuildError(
                f"{flav.label} {flav.version} failed to build {info.path.name}: "
                + (" | ".join(dict.fromkeys(msgs)) or "no error message was logged")
            )
        data = bytes(memoryview(serialized))
        if timing is not None and timing.get("used"):
            ser = config.get_timing_cache().serialize()
            atomic_write_bytes(timing["path"], bytes(memoryview(ser)))
            timing["saved"] = True

        io = None
        if "gpu" in target or gpu_info(device) is not None:
            io = _io_from_engine(flav, data, logger)
        if io is None:
            io = _io_from_network(network, shapes)
        warnings = list(dict.fromkeys(cap.warnings()))
    return data, io, timing, warnings, seconds, strongly_typed

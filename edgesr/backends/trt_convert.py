"""The engine step of `edgesr convert --trt-rtx / --trt`.

For every ONNX a conversion wrote (model.onnx fp32, model_fp16.onnx, model_int8.onnx of the
``trt`` INT8 profile) an engine is built with :func:`edgesr.backends.trt.build_engine` into
the engine cache, then copied with its sidecar into ``OUTDIR/engines/``:

    cache:   <cache dir>/<first 32 hex digits of the cache key>/model_int8.trt-rtx.engine(.json)
    bundle:  OUTDIR/engines/model_int8.trt-rtx.engine(.json)

The cache key (see :mod:`edgesr.backends.engine_cache`) covers the ONNX content, the
optimization profile, precision, flavour + version, build target and builder options, so a
second conversion of the same checkpoint with the same options reuses the engine (cache
hit, build_seconds 0). Running needs an NVIDIA GPU: without one the report says
"run: not verified — no GPU"; with one the engines join the parity comparison (PyTorch
deploy form as reference) and the latency table (CUDA-event GPU times).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgesr.backends import engine_cache
from edgesr.backends.trt_build import (
    BuildOptions,
    EngineArtifact,
    ShapeProfile,
    _norm_cc,
    build_engine,
    engine_cache_key,
)
from edgesr.backends.trt_flavour import gpu_info, load_flavour, normalize_flavour
from edgesr.backends.trt_runner import open_runner
from edgesr.errors import BackendUnavailable, EdgesrError, EngineBuildError
from edgesr.fsutil import atomic_write_bytes, sha256_file

NOT_VERIFIED = "not verified — no GPU"
ENGINE_DIR = "engines"
_FORMATS = {"rtx": ("tensorrt-rtx-engine", "tensorrt-rtx"), "trt": ("tensorrt-engine", "tensorrt")}


@dataclass(frozen=True)
class EngineRequest:
    """What `edgesr convert --trt-rtx/--trt --trt-*` asked for."""

    flavours: tuple[str, ...] = ("rtx",)  # "rtx" and/or "trt"
    min_hw: tuple[int, int] | None = None  # LR sizes; None: ShapeProfile.from_spec defaults
    opt_hw: tuple[int, int] | None = None  # None: the latency workload's LR size
    max_hw: tuple[int, int] | None = None
    optimization_level: int | None = None
    compute_capabilities: tuple[str, ...] | None = None  # TensorRT-RTX targets, e.g. ("8.6", "12.0")
    cache_dir: Path | None = None  # None: default_cache_dir()
    max_threads: int | None = None  # builder CPU threads (not part of the cache key)

    def __post_init__(self) -> None:
        fl = tuple(dict.fromkeys(normalize_flavour(f) for f in self.flavours))
        if not fl:
            raise EngineBuildError("no TensorRT flavour requested (use --trt-rtx and/or --trt)")
        object.__setattr__(self, "flavours", fl)
        if self.compute_capabilities is not None:
            object.__setattr__(self, "compute_capabilities", tuple(self.compute_capabilities))

    def options(self, flavour: str) -> BuildOptions:
        return BuildOptions(
            optimization_level=self.optimization_level,
            compute_capabilities=self.compute_capabilities if flavour == "rtx" else None,
            max_threads=self.max_threads,
        )

    def cache(self) -> Path:
        return (Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()).expanduser().absolute()


def default_cache_dir() -> Path:
    """Per-user engine cache: $EDGESR_ENGINE_CACHE, else <user cache dir>/edgesr/engines."""
    env = os.environ.get("EDGESR_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgesr" / "engines"


def check_request(req: EngineRequest) -> None:
    """Fail before minutes of conversion: packages importable, GPU present for TensorRT,
    compute capabilities known to the installed TensorRT-RTX, optimization level 0..5."""
    if req.optimization_level is not None and not 0 <= int(req.optimization_level) <= 5:
        raise EngineBuildError(f"--trt-opt-level must be 0..5, got {req.optimization_level}")
    if req.compute_capabilities is not None and "rtx" not in req.flavours:
        raise EngineBuildError("--trt-cc targets TensorRT-RTX engines; add --trt-rtx (TensorRT builds for "
                               "the GPU it runs on)")
    for name in req.flavours:
        flav = load_flavour(name)  # BackendUnavailable names the extra to install
        if name == "trt" and gpu_info() is None:
            raise EngineBuildError("--trt builds TensorRT engines on the GPU they will run on, and no CUDA GPU "
                                   "is visible; use --trt-rtx to build ahead of time on this machine")
        if name == "rtx" and req.compute_capabilities is not None:
            if not req.compute_capabilities:
                raise EngineBuildError("--trt-cc needs at least one compute capability, e.g. 8.6,8.9,12.0")
            for cc in req.compute_capabilities:
                _norm_cc(cc, flav)
    if req.min_hw and req.max_hw and (req.min_hw[0] > req.max_hw[0] or req.min_hw[1] > req.max_hw[1]):
        raise EngineBuildError(f"--trt-min {req.min_hw[0]}x{req.min_hw[1]} exceeds --trt-max "
                               f"{req.max_hw[0]}x{req.max_hw[1]}")


def profile_for(spec: Any, req: EngineRequest, workload_lr_hw: tuple[int, int] | None = None) -> ShapeProfile:
    """ShapeProfile.from_spec(spec) with the request's sizes; opt defaults to the latency
    workload's LR size (e.g. 180x320 for 720p output at x4), max to 1088x1920."""
    kw: dict[str, Any] = {}
    if req.min_hw is not None:
        kw["min_hw"] = req.min_hw
    if req.max_hw is not None:
        kw["max_hw"] = req.max_hw
    if req.opt_hw is not None:
        kw["opt_hw"] = req.opt_hw
    elif workload_lr_hw is not None:
        kw["opt_hw"] = workload_lr_hw
    prof = ShapeProfile.from_spec(spec, **kw)
    if req.opt_hw is None:  # a default opt must not break a user's min/max: clamp it in
        r = prof.resolved()
        kw["opt_hw"] = tuple(min(max(o, lo), hi) for o, lo, hi in zip(r.opt_hw, r.min_hw, r.max_hw))
        prof = ShapeProfile.from_spec(spec, **kw)
    prof.resolved()  # raises EngineBuildError naming the axis when min/max leave no valid size
    return prof


@dataclass
class EngineStepResult:
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # manifest entries (engine + sidecar)
    report: dict[str, Any] = field(default_factory=dict)  # report["engines"]
    built: list[EngineArtifact] = field(default_factory=list)


def _role_part(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(s).lower()).strip("_") or "unknown"


def _shape_range(meta: dict[str, Any], size_multiple: int) -> dict[str, Any] | None:
    prof = meta.get("profile") or None
    if not prof:
        return None
    mn, opt, mx = prof["min"], prof["opt"], prof["max"]
    dim = lambda i, mult: {"min": int(mn[i]), "max": int(mx[i]), "opt": int(opt[i]),  # noqa: E731
                           **({"multiple": mult} if mult > 1 else {})}
    return {"batch": dim(0, 1), "height": dim(2, size_multiple), "width": dim(3, size_multiple)}


def _copy(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, src.read_bytes())


def build_for_bundle(
    sources: Sequence[tuple[Path, str]],
    bundle_dir: Path,
    spec: Any,
    req: EngineRequest,
    *,
    workload_lr_hw: tuple[int, int] | None = None,
    log: Callable[[str], None] | None = None,
) -> EngineStepResult:
    """Build (or take from the cache) one engine per (onnx, label) and flavour; copy each with
    its sidecar into ``bundle_dir/engines/``. Returns manifest entries and the report section.
    An engine that cannot be built raises EngineBuildError naming the ONNX."""
    log = log or (lambda m: None)
    cache = req.cache()
    prof = profile_for(spec, req, workload_lr_hw)
    out_dir = Path(bundle_dir) / ENGINE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    res = EngineStepResult()
    builds: list[dict[str, Any]] = []
    for flavour in req.flavours:
        options = req.options(flavour)
        fmt, backend = _FORMATS[flavour]
        for onnx_path, label in sources:
            onnx_path = Path(onnx_path)
            try:
                key = engine_cache_key(onnx_path, flavour=flavour, profile=prof, options=options)
                art = build_engine(onnx_path, cache / key[:32], flavour=flavour, profile=prof, options=options)
            except EngineBuildError as e:
                raise EngineBuildError(f"engine for {onnx_path.name} ({label}): {e}") from None
            dst = out_dir / art.path.name
            _copy(art.path, dst)
            _copy(art.sidecar_path, engine_cache.sidecar_path(dst))
            if engine_cache.lookup(dst, art.cache_key) is None:  # the copy must verify like the original
                raise EngineBuildError(f"copying {art.path} to {dst} did not reproduce the engine (hash mismatch)")
            meta = art.metadata
            role = f"engine_{_role_part(art.precision)}_{flavour}"
            rel = f"{ENGINE_DIR}/{dst.name}"
            side_rel = f"{ENGINE_DIR}/{engine_cache.sidecar_path(dst).name}"
            entry: dict[str, Any] = {
                "role": role, "file": rel, "sha256": meta["engine"]["sha256"], "bytes": dst.stat().st_size,
                "format": fmt, "precision": art.precision, "backend": backend,
                "sidecar": side_rel, "source": onnx_path.name, "flavour_version": art.flavour_version,
                "cache_key": art.cache_key, "target": meta.get("target"),
            }
            sr = _shape_range(meta, int(getattr(spec, "size_multiple", 1) or 1))
            if sr is not None:
                entry["shape_range"] = sr
            side = engine_cache.sidecar_path(dst)
            res.artifacts += [entry, {
                "role": f"{role}_sidecar", "file": side_rel, "sha256": sha256_file(side), "bytes": side.stat().st_size,
                "format": "json", "precision": art.precision, "backend": backend, "describes": rel,
            }]
            res.built.append(art)
            builds.append({
                "role": role, "file": rel, "sidecar": side_rel, "source": onnx_path.name, "label": label,
                "flavour": art.flavour, "flavour_version": art.flavour_version, "precision": art.precision,
                "cache_hit": art.cache_hit, "build_seconds": round(art.build_seconds, 3),
                "originally_built_seconds": meta.get("build_seconds"), "built_at": meta.get("built_at"),
                "bytes": dst.stat().st_size, "onnx_bytes": onnx_path.stat().st_size, "cache_key": art.cache_key,
                "cache_path": str(art.path), "target": meta.get("target"),
                "profile": {k: (meta.get("profile") or {}).get(k) for k in ("input", "min", "opt", "max")},
                "io": meta.get("io"), "warnings": list(art.warnings)[:5], "run": NOT_VERIFIED,
            })
            log(f"{role}: {'cache hit' if art.cache_hit else f'built in {art.build_seconds:.1f} s'}, "
                f"{dst.stat().st_size / 2**20:.2f} MiB")
    r = prof.resolved()
    res.report = {
        "flavours": list(req.flavours),
        "cache_dir": str(cache),
        "profile": {"min_hw": list(r.min_hw), "opt_hw": list(r.opt_hw), "max_hw": list(r.max_hw),
                    "batch": list(r.batch), "size_multiple": r.size_multiple},
        "options": {"optimization_level": req.optimization_level,
                    "compute_capabilities": list(req.compute_capabilities) if req.compute_capabilities else "default"},
        "gpu": gpu_info(),
        "run": NOT_VERIFIED,
        "builds": builds,
    }
    return res


def verify_on_gpu(
    res: EngineStepResult,
    bundle_dir: Path,
    reference: Any,
    inputs: Sequence[np.ndarray],
    scale: int,
    *,
    bench_lr_hw: tuple[int, int] | None = None,
    warmup: int = 10,
    iters: int = 50,
) -> dict[str, Any] | None:
    """With a CUDA GPU: parity of every engine against `reference` on the `inputs` that fit the
    engines' profile, and GPU latency at `bench_lr_hw`. Returns {"parity": ParityReport dict,
    "latency": [rows]}; None (report keeps "not verified") when no GPU / runtime is usable."""
    from edgesr.parity import Sample, check_parity
    from edgesr.timing import stats_from_samples

    gpu = res.report.get("gpu")
    if gpu is None:
        return None
    prof = res.report["profile"]
    (hmin, wmin), (hmax, wmax) = prof["min_hw"], prof["max_hw"]
    fits = [x for x in inputs if hmin <= x.shape[2] <= hmax and wmin <= x.shape[3] <= wmax]
    runners = []
    try:
        for b in res.report["builds"]:
            prefix = "trt-rtx" if b["flavour"] == "rtx" else "trt"
            runners.append(open_runner(Path(bundle_dir) / b["file"], name=f"{prefix}:{b['precision']}"))
    except BackendUnavailable as e:
        for r in runners:
            r.close()
        why = f"not verified — {e}"
        res.report["run"] = why
        for b in res.report["builds"]:
            b["run"] = why
        return None
    out: dict[str, Any] = {"device": gpu, "inputs": [list(x.shape) for x in fits], "skipped_inputs":
                           [list(x.shape) for x in inputs if not any(x is f for f in fits)]}
    try:
        if fits:
            samples = [Sample(f"input{i}_{x.shape[2]}x{x.shape[3]}", x) for i, x in enumerate(fits)]
            rep = check_parity([reference, *runners], samples, scale=scale, localize=False)
            out["parity"] = rep.to_dict()
        else:
            out["parity"] = None
        rows = []
        if bench_lr_hw is not None:
            h, w = bench_lr_hw
            x = np.random.default_rng(0).random((1, inputs[0].shape[1], h, w), dtype=np.float32)
            for b, r in zip(res.report["builds"], runners):
                if not (hmin <= h <= hmax and wmin <= w <= wmax):
                    continue
                st = stats_from_samples(r.time_gpu(x, warmup=warmup, iters=iters))
                mpx = h * scale * w * scale / 1e6
                rows.append({"backend": f"{r.name} (GPU)", "size": f"{h}x{w}", "output": f"{h * scale}x{w * scale}",
                             **st.to_dict(), "mpix_per_s": round(mpx / (st.median_ms / 1e3), 2),
                             "device": gpu.get("name"), "timer": "cuda-events"})
                b["latency_ms_median"] = st.to_dict()["median_ms"]
        out["latency"] = rows
    except EdgesrError as e:
        out["error"] = str(e)
    finally:
        for r in runners:
            r.close()
    comps = {c["test"]: c for c in ((out.get("parity") or {}).get("comparisons") or [])}
    for b, r in zip(res.report["builds"], runners):
        c = comps.get(r.name)
        b["run"] = ({"parity_ok": c["ok"], "max_abs": c.get("max_abs"), "psnr": c.get("psnr")} if c is not None
                    else out.get("error", "ran; no input fits the profile for parity"))
    res.report["run"] = out
    return out

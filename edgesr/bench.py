"""`edgesr bench`: one MODEL, several backends, timed side by side.

Backends (`prepare_backend`, `bench_prepared`) turn a MODEL (checkpoint, .onnx, or `edgesr
convert` OUTDIR) into timed runners for ``ort``, ``ort-int8``, ``openvino``, ``torch``,
``torch-cuda``, ``trt``, ``trt-rtx`` and the mobile runtimes. The timers and statistics live in
`edgesr.timing`, what the numbers were taken on in `edgesr.machine`, ONNX Runtime profiling in
`edgesr.backends.ort_profile`; their names are re-exported here for existing callers.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .backends.ort_profile import optimized_ops, profile_ort, summarize_ort_profile
from .backends.ort_runner import SessionRunner
from .backends.ort_session import ort_session
from .backends.torch_cuda import TORCH_PRECISIONS, TorchCudaRunner
from .machine import load_warning, machine_info
from .machine import package_version as _version
from .resolve import INT8_ROLES
from .timing import (CV_WARN, CudaCalls, HostCalls, TimingPolicy, TimingStats, cuda_status, fp32_math,
                     interleaved_order, megapixels_per_second, ratio_summary, stats_from_samples, time_callable,
                     time_cuda_copies, time_cuda_events, time_interleaved)


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
    if src.kind == "mobile":
        raise _unavailable(f"{src.ref.name} is a mobile artifact: time it with --backend {src.default_backend}")
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
    if backend == "openvino":
        p, notes = None, []
        if src.kind == "bundle" and "openvino_fp32" in {a.role for a in src.manifest.artifacts}:
            p = src.manifest.verified_path("openvino_fp32")  # (a hash mismatch is an error, not a fallback)
            notes = ["bundle artifact openvino_fp32"]
        if p is None:
            p = src.fp32_onnx()
            notes = [f"{Path(p).name} read by OpenVINO"]
        prec = "fp32"
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
    results: list[BenchResult] = []
    rng = np.random.default_rng(seed)
    for h, w in sizes:
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

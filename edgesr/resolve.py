"""The one seam that turns a MODEL reference into something runnable.

A MODEL argument is a checkpoint (.pth/.pt/.ckpt/.safetensors; a registry family, or weights for the
user's code with --model FILE.py:NAME), an ONNX / ORT file, an OpenVINO IR, a TensorRT engine, a
mobile artifact (.tflite, ncnn .param; Core ML: "no runtime on this machine"), or an OUTDIR written
by `edgesr convert` (holding manifest.json). Two views of the same resolution:

* `resolve_model` / `resolve_user_model` / `runner_for`: a Runner now (eval, upscale, parity);
* `open_model`: a `ModelSource` whose artifacts (fp32 ONNX, INT8 graph for a runtime, engines) are
  made on demand and cached (bench), via `edgesr.artifact_cache`.

Over 500 lines on purpose: it is the one seam that turns every kind of MODEL reference into a runner
or a model source; keeping every kind in one place is the point.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifact_cache import cached_int8, cached_onnx_export, int8_available, onnx_is_quantized
from .errors import CheckpointError, ScaleMismatch, one_line, quoted
from .spec import Spec

if TYPE_CHECKING:
    from .usermodel import LoadedUserModel

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".sft")
ONNX_SUFFIXES = (".onnx", ".ort")
BACKENDS = ("torch", "ort", "openvino", "ort-int8", "openvino-int8", "litert", "litert-int8", "ncnn", "ncnn-int8",
            "coreml")
# Each INT8 backend runs the graph made for its runtime, never another runtime's: ORT running the
# TensorRT graph is slower than fp32 (no QLinearConv), OpenVINO's int8 kernels differ from ORT's.
INT8_ROLES = {"ort-int8": "onnx_int8_cpu", "openvino-int8": "openvino_int8"}
INT8_PROFILE_OF = {"ort-int8": "cpu", "openvino-int8": "openvino"}


@dataclass
class ResolvedModel:
    runner: Any  # a Runner (edgesr.backends.base)
    spec: Spec
    kind: str  # "checkpoint" | "onnx" | "bundle"
    path: Path
    onnx: bytes | Path | None = None  # the ONNX graph behind the runner, when there is one (tiling analysis)
    tiling: dict | None = None  # a bundle manifest's "tiling" (with the measurement made at convert time)

    def __post_init__(self) -> None:
        # The runner carries the model's spec (the Runner contract): parity, upscale and eval read it there.
        if getattr(self.runner, "spec", None) is None:
            self.runner.spec = self.spec


def resolve_model(ref: str | Path, backend: str = "torch", scale: int | None = None, arch: str | None = None,
                  form: str = "deploy", threads: int | None = None, input_range: float | None = None) -> ResolvedModel:
    """`input_range` (--input-range): the range a registry checkpoint's weights expect, when it is not
    its family's; the module is wrapped to take [0, 1] (before export, for the ort backend too)."""
    path = Path(ref)
    if not path.exists():
        raise CheckpointError(f"model not found: {path}")
    if input_range is not None and (path.is_dir() or path.suffix.lower() in ONNX_SUFFIXES):
        raise CheckpointError(f"--input-range applies to a checkpoint; {path.name} is a "
                              f"{'bundle' if path.is_dir() else 'ONNX model'}, which already takes [0, 1] input")
    from .backends.mobile import MOBILE_BACKENDS, is_mobile_artifact

    if is_mobile_artifact(path) or (path.is_dir() and backend in MOBILE_BACKENDS):
        if input_range is not None:
            raise CheckpointError(f"--input-range applies to a checkpoint; {path.name} is a mobile model, which "
                                  "already takes [0, 1] input")
        return _from_mobile(path, backend, scale, threads)
    if backend in MOBILE_BACKENDS:
        raise CheckpointError(f"--backend {backend} runs a mobile artifact: pass the .tflite / .param file or a "
                              f"convert OUTDIR that holds one, not {path.name}")
    if backend not in ("torch", "ort"):
        if input_range is not None:
            raise CheckpointError(f"--input-range with --backend {backend}: convert the checkpoint with "
                                  "--input-range first and evaluate its OUTDIR")
        return _openvino_or_int8(path, backend, scale, arch, form, threads)
    if path.is_dir():
        return _from_bundle(path, backend, scale, threads)
    if path.suffix.lower() in ONNX_SUFFIXES:
        return _from_onnx(path, backend, scale, threads)
    return _from_checkpoint(path, backend, scale, arch, form, threads, input_range)


def _from_checkpoint(path: Path, backend: str, scale, arch, form: str, threads,
                     input_range: float | None = None) -> ResolvedModel:
    from .backends.torch_runner import TorchRunner
    from .registry import load_model
    from .reparam import reparameterize

    loaded = load_model(path, arch=arch, scale=scale)
    module, spec = loaded.module, loaded.spec
    if form == "deploy" and spec.form == "training":
        from dataclasses import replace

        module, spec = reparameterize(module), replace(spec, form="deploy")
    if input_range is not None:
        from .conventions import Convention, make_adapter, native_range_of

        module = make_adapter(module, Convention(input_range), native_range_of(module))
    if backend == "torch":
        return ResolvedModel(TorchRunner(module, name=f"torch:{spec.form}"), spec, "checkpoint", path)
    from .backends.ort_runner import OrtRunner
    from .export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="edgesr-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(module, spec, onnx_path, source_checkpoint=path)
        onnx_bytes = onnx_path.read_bytes()
        runner = OrtRunner(onnx_bytes, name="ort:fp32", threads=threads)
    return ResolvedModel(runner, spec, "checkpoint", path, onnx=onnx_bytes)


def _from_onnx(path: Path, backend: str, scale, threads) -> ResolvedModel:
    from .backends.ort_runner import OrtRunner

    if backend != "ort":
        raise CheckpointError(f"{path.name} is an ONNX model: use --backend ort")
    spec = _spec_from_onnx(path, scale)
    runner, spec = _boxes_if_fixed(OrtRunner(path, name=f"ort:{path.name}", threads=threads), spec, None)
    return ResolvedModel(runner, spec, "onnx", path, onnx=path if path.suffix.lower() == ".onnx" else None)


def _boxes_if_fixed(runner, spec: Spec, manifest) -> tuple[Any, Spec]:
    """An ONNX graph exported at one fixed H x W (user code whose dynamic export failed: the
    manifest says so) runs larger images as boxes of its size, as a fixed-size mobile file does
    (:class:`edgesr.backends.mobile.FixedBoxRunner`), and its spec's min_size is the box (callers
    pad smaller images up to it); a dynamic graph is returned as it is."""
    meta = runner.input_metadata()
    dims: tuple = tuple(meta[0].shape) if meta else ()
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[2:]):
        return runner, spec
    from dataclasses import replace

    from .backends.mobile import FixedBoxRunner, box_overlap
    from .tiling import declared_tiling

    runner.input_hw = (int(dims[2]), int(dims[3]))  # what FixedBoxRunner reads off a fixed-size runner
    measured = ((manifest.data.get("tiling") or {}).get("measured") or {}) if manifest is not None else {}
    if str(measured.get("method", "")).startswith("not measured"):
        # convert could not measure a fixed-size graph's tiling (its record's overlap 0 is no
        # measurement): boxes overlap by what the spec declares, as much as the box leaves a core
        overlap = min(declared_tiling(spec)[1], (min(runner.input_hw) - 1) // 2)
    else:
        overlap = box_overlap(spec, manifest)
    return (FixedBoxRunner(runner, spec.scale, overlap), replace(spec, min_size=max(spec.min_size, *runner.input_hw)))


def _spec_from_onnx(path: Path, scale: int | None) -> Spec:
    meta: dict[str, str] = {}
    if path.suffix.lower() == ".onnx":
        from .export.onnx import read_metadata

        meta = read_metadata(path)
    if "spec" in meta:
        spec = _spec_from_metadata(meta["spec"], path)
        if scale is not None and spec.scale != scale:
            raise ScaleMismatch(f"--scale {scale} does not match {quoted(path.name)} (x{spec.scale} in its metadata)")
        return spec
    if scale is None:
        raise ScaleMismatch(f"{quoted(path.name)} carries no edgesr metadata: pass --scale")
    return Spec(arch="unknown", scale=scale)


def _spec_from_metadata(text: str, path: Path) -> Spec:
    """The `spec` metadata entry of an ONNX file: bounded JSON, every field checked."""
    from .errors import ExportError
    from .limits import load_json_bounded
    from .spec import spec_from_untrusted

    where = f"{quoted(path.name)} metadata"
    try:
        return spec_from_untrusted(load_json_bounded(text, "its 'spec'"), where)
    except ValueError as e:
        msg = str(e) if str(e).startswith(where) else f"{where}: 'spec' is not valid JSON ({one_line(e)})"
        raise ExportError(msg) from None


def _from_bundle(path: Path, backend: str, scale, threads) -> ResolvedModel:
    """A bundle's model, loaded from the very bytes whose sha256 was checked (no second open)."""
    from .bundle import read_manifest

    manifest = read_manifest(path)  # validates the schema and every artifact's sha256
    art = manifest.artifact("onnx_fp32" if backend == "ort" else "torch_deploy")
    data = manifest.verified_bytes(art)
    spec = manifest.spec
    if scale is not None and spec.scale != scale:
        raise ScaleMismatch(f"--scale {scale} does not match {quoted(path)} (x{spec.scale} in its manifest)")
    if backend == "ort":
        from .backends.ort_runner import OrtRunner

        runner, spec = _boxes_if_fixed(OrtRunner(data, name=f"ort:{art.file}", threads=threads), spec, manifest)
        resolved = ResolvedModel(runner, spec, "bundle", path)
    else:
        from .backends.torch_runner import TorchRunner
        from .checkpoint import load_state_dict_bytes
        from .registry import load_model

        loaded = load_model(load_state_dict_bytes(data, art.file), arch=spec.arch, scale=spec.scale)
        resolved = ResolvedModel(TorchRunner(loaded.module, name=f"torch:{loaded.spec.form}"), loaded.spec, "bundle",
                                 path)
    # the graph for tiling analysis and the measurement made at convert time, from verified bytes only
    if backend == "ort":
        resolved.onnx = data
    _bundle_tiling(resolved, manifest, same_runtime=True)
    return resolved


def load_user_code(weights: str | Path, user: dict[str, Any], *, scale: int | None = None, quick: bool = False,
                   check_plausible: bool = True) -> LoadedUserModel:
    """The user's code + weights, built, loaded and measured (`edgesr.usermodel.load_user_model`):
    the one way `--model FILE.py:NAME` (convert, eval, parity, bench, upscale) and a zoo entry become a
    model. `user`: the --model options as `edgesr.cli.model_args.user_options` gives them (ref, kwargs,
    strict, key, extra_paths, input_range); `quick`: the CI-sized convention search."""
    from .usermodel import load_user_model

    return load_user_model(weights, user["ref"], user.get("kwargs"), strict=user.get("strict", True),
                           key=user.get("key"), extra_paths=tuple(Path(p) for p in user.get("extra_paths", ())),
                           input_range=user.get("input_range"), scale=scale, check_plausible=check_plausible,
                           quick=quick)


def user_deploy_model(weights: str | Path, ref, kwargs: dict | None = None, *, strict: bool = True,
                      key: str | None = None, extra_paths: tuple = (), input_range: float | None = None,
                      scale: int | None = None):
    """--model FILE.py:NAME + weights -> (deploy module in edgesr's [0, 1] RGB convention, Spec, LoadedUserModel).
    Conventions are measured (the output must beat bicubic); author deploy hooks kept only when exact."""
    from dataclasses import replace

    from .probe_inputs import verification_inputs
    from .reparam.author_hooks import deploy_form

    um = load_user_code(weights, {"ref": ref, "kwargs": kwargs, "strict": strict, "key": key,
                                  "extra_paths": extra_paths, "input_range": input_range}, scale=scale)
    spec = replace(um.spec, form="deploy")
    deploy, _ = deploy_form(um.module, verification_inputs(spec))
    return deploy, spec, um


def resolve_user_model(weights: str | Path, ref, kwargs: dict | None = None, *, backend: str = "torch",
                       threads: int | None = None, scale: int | None = None, **user) -> ResolvedModel:
    """A runnable model from the user's code + weights (torch, or ONNX Runtime on its export)."""
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    module, spec, _ = user_deploy_model(path, ref, kwargs, scale=scale, **user)
    if backend == "torch":
        from .backends.torch_runner import TorchRunner

        return ResolvedModel(TorchRunner(module, name="torch:user"), spec, "user", path)
    from .backends.ort_runner import OrtRunner
    from .export.diagnose import export_user_model

    with tempfile.TemporaryDirectory(prefix="edgesr-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_user_model(module, spec, onnx_path, source_checkpoint=path)
        runner = OrtRunner(onnx_path.read_bytes(), name="ort:fp32", threads=threads)
    return ResolvedModel(runner, spec, "user", path)


def _openvino_or_int8(path: Path, backend: str, scale, arch, form: str, threads) -> ResolvedModel:
    """openvino: a bundle's OpenVINO IR (or its fp32 ONNX), an .onnx / .xml file, or a checkpoint
    exported to ONNX, run by OpenVINO. ort-int8 / openvino-int8: the INT8 graph a bundle holds for
    that runtime (INT8_ROLES) - never a graph made for another runtime."""
    if backend not in BACKENDS:
        raise CheckpointError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "ort-int8":
        if path.is_dir():
            from .backends.ort_runner import OrtRunner
            from .bundle import read_manifest

            manifest = read_manifest(path)
            art = _int8_artifact(manifest, path, backend, INT8_ROLES[backend])
            if scale is not None and manifest.spec.scale != scale:
                raise ScaleMismatch(f"--scale {scale} does not match {quoted(path)} (x{manifest.spec.scale})")
            data = manifest.verified_bytes(art)
            resolved = ResolvedModel(OrtRunner(data, name=f"ort:{art.file}", threads=threads), manifest.spec, "bundle",
                                     path, onnx=data)  # the INT8 graph itself for the locality analysis
            _bundle_tiling(resolved, manifest, same_runtime=False)
            return resolved
        raise CheckpointError(f"{path.name}: --backend ort-int8 runs a bundle's INT8 graph; convert with --int8 "
                              "first, or give a quantized .onnx with --backend ort")
    from .backends.openvino_runner import IR_SUFFIXES, OpenVinoRunner

    if path.is_dir():
        from .bundle import read_manifest

        manifest = read_manifest(path)
        if scale is not None and manifest.spec.scale != scale:
            raise ScaleMismatch(f"--scale {scale} does not match {path} (x{manifest.spec.scale})")
        if backend == "openvino-int8":
            art = _int8_artifact(manifest, path, backend, INT8_ROLES[backend])
        else:
            roles = {a.role for a in manifest.artifacts}
            art = manifest.artifact("openvino_fp32" if "openvino_fp32" in roles else "onnx_fp32")
        # a private copy of the verified bytes (an IR's .bin beside its .xml): never the file checked earlier
        resolved = ResolvedModel(OpenVinoRunner(manifest.verified_path(art), name=f"openvino:{art.role}",
                                                threads=threads), manifest.spec, "bundle", path)
        _bundle_tiling(resolved, manifest, same_runtime=False)
        return resolved
    if backend == "openvino-int8":
        raise CheckpointError(f"{path.name}: --backend openvino-int8 runs a bundle's OpenVINO INT8 graph; convert "
                              "with --int8 --openvino first, or give the .xml with --backend openvino")
    suffix = path.suffix.lower()
    if suffix in IR_SUFFIXES:
        if scale is None:
            raise ScaleMismatch(f"{path.name} (OpenVINO IR) carries no edgesr metadata: pass --scale")
        return ResolvedModel(OpenVinoRunner(path, threads=threads), Spec(arch="unknown", scale=scale), "openvino", path)
    if suffix in ONNX_SUFFIXES:
        spec = _spec_from_onnx(path, scale)
        return ResolvedModel(OpenVinoRunner(path, threads=threads), spec, "onnx", path,
                             onnx=path if suffix == ".onnx" else None)
    resolved = _from_checkpoint(path, "torch", scale, arch, form, threads)
    from .export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="edgesr-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(resolved.runner.module, resolved.spec, onnx_path, source_checkpoint=path)
        onnx_bytes = onnx_path.read_bytes()
        ov_runner = OpenVinoRunner(onnx_bytes, name="openvino:fp32", threads=threads)
    return ResolvedModel(ov_runner, resolved.spec, "checkpoint", path, onnx=onnx_bytes)


def _int8_artifact(manifest, path: Path, backend: str, role: str):
    roles = [a.role for a in manifest.artifacts]
    if role in roles:
        return manifest.artifact(role)
    others = [r for r in roles if "int8" in r and not r.endswith("_weights")]
    raise CheckpointError(f"{path} has no INT8 graph made for {backend} ({role})"
                          + (f"; its INT8 graphs ({', '.join(others)}) are made for other runtimes" if others else "")
                          + f"; convert with --int8{' --openvino' if backend == 'openvino-int8' else ''}")


def _from_mobile(path: Path, backend: str, scale, threads) -> ResolvedModel:
    """A .tflite / .param file (spec from the manifest.json beside it, else --scale), or the
    artifact of a mobile `backend` in a convert OUTDIR. Fixed-size .tflite files tile with boxes
    of exactly their size (:class:`edgesr.backends.mobile.FixedBoxRunner`)."""
    from .backends.mobile import MOBILE_BACKENDS, bundle_artifact, coreml_unavailable, mobile_runner_for, spec_beside
    from .bundle import read_manifest

    spec = manifest = None
    if path.is_dir():
        manifest = read_manifest(path)
        spec = manifest.spec
        if scale is not None and spec.scale != scale:
            raise ScaleMismatch(f"--scale {scale} does not match {path} (x{spec.scale})")
        try:
            path = bundle_artifact(manifest, backend).path  # loaded below from its verified bytes
        except Exception:  # noqa: BLE001 - BundleError: the role is absent
            if backend == "coreml":
                raise CheckpointError(f"{path} holds no Core ML package (convert with --coreml)") from None
            flag = {"litert": "--tflite", "ncnn": "--ncnn"}[backend.split("-")[0]]
            raise CheckpointError(f"{path} holds no {MOBILE_BACKENDS[backend]} artifact (convert with {flag}"
                                  f"{' --int8' if backend.endswith('int8') else ''})") from None
    if path.name.lower().endswith((".mlpackage", ".mlpackage.zip")):
        raise coreml_unavailable(path)
    if spec is None:
        spec, manifest = spec_beside(path, scale)
    runtime = "litert" if path.suffix.lower() == ".tflite" else "ncnn"
    runner = mobile_runner_for(path, spec, threads, name=f"{runtime}:{path.name}", manifest=manifest)
    resolved = ResolvedModel(runner, spec, "mobile" if manifest is None else "bundle", path)
    _bundle_tiling(resolved, manifest, same_runtime=False)
    return resolved


def _bundle_tiling(resolved: ResolvedModel, manifest, same_runtime: bool) -> None:
    """Tiling facts of a bundle for `edgesr upscale`: its fp32 ONNX graph (verified bytes) for the
    locality analysis, and, for the runtime it was measured on (ONNX Runtime fp32 / the PyTorch
    deploy module that graph was checked against) or a fixed-size file that tiles itself (it cannot
    run untiled), the measurement made at convert time. Other runtimes are measured when an image
    needs tiles, on the runner at hand."""
    if manifest is None:
        return
    if resolved.onnx is None and any(a.role == "onnx_fp32" for a in manifest.artifacts):
        resolved.onnx = manifest.verified_bytes(manifest.artifact("onnx_fp32"))
    if same_runtime or getattr(resolved.runner, "tiles_itself", False):
        resolved.tiling = manifest.data.get("tiling")


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
        if self.kind == "onnx" and self.onnx_path is not None:
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
            from .checkpoint import load_state_dict_bytes
            from .registry import load_model

            sd = load_state_dict_bytes(man.verified_bytes(art), art.file)
            src.module = load_model(sd, arch=man.spec.arch, scale=man.spec.scale).module.eval()
        except Exception as e:  # noqa: BLE001 - torch backend then reports unavailable
            src.notes.append(f"no PyTorch deploy weights usable: {e}")
        return src
    from .backends.mobile import file_backend, is_mobile_artifact, spec_beside

    if is_mobile_artifact(path):
        spec, man = spec_beside(path, scale)  # the manifest beside it: its measured tiling sets the box overlap
        src = ModelSource(path, "mobile", spec, workdir, manifest=man, _tmp=tmp)
        src.default_backend = file_backend(path) or src.default_backend
        return src
    if path.suffix.lower() == ".xml":  # an OpenVINO IR: timed by OpenVINO (spec from a manifest beside it, or --scale)
        spec, _ = spec_beside(path, scale)
        src = ModelSource(path, "openvino-ir", spec, workdir, _tmp=tmp)
        src.default_backend = "openvino"
        return src
    if path.suffix.lower() in ONNX_SUFFIXES:
        spec = _spec_from_onnx(path, scale)
        return ModelSource(path, "onnx", spec, workdir, onnx_path=path, _tmp=tmp)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"{path.name}: not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}), ONNX file "
                              f"({', '.join(ONNX_SUFFIXES)}) or convert OUTDIR")
    if user is not None:  # --model FILE.py:NAME: the user's code, conventions measured, deploy hooks verified
        module, spec, _ = user_deploy_model(path, scale=scale, **user)
        return ModelSource(path, "checkpoint", spec, workdir, module=module.eval(), form="deploy", _tmp=tmp)
    from .registry import load_model
    from .reparam import reparameterize

    loaded = load_model(path, arch=arch, scale=scale)
    module, spec = loaded.module.eval(), loaded.spec
    if form == "deploy" and spec.form == "training":
        module, spec = reparameterize(module).eval(), dc_replace(spec, form="deploy")
    return ModelSource(path, "checkpoint", spec, workdir, module=module, form=spec.form, _tmp=tmp)


# ---- one MODEL file, as `edgesr parity` compares it -----------------------------------------------

ENGINE_SUFFIXES = (".engine", ".plan")


def runner_for(path: Path, *, form: str | None = None, backend: str = "ort", threads: int | None = None,
               scale: int | None = None, user: dict | None = None, engine_opener: Any = None,
               label: str | None = None) -> Any:
    """A Runner for one MODEL file: a mobile artifact, a TensorRT engine, an OpenVINO IR (or an .onnx with
    backend "openvino"), an .onnx / .ort file (ONNX Runtime), weights for the user's code (`user`: the
    --model options; form "training" = the author's module as is) or a registry checkpoint / bundle in
    PyTorch (`form`: "training" or "deploy", default deploy). The runner carries the model's spec when
    the file says it. `engine_opener(path)`: how engines are opened (default `open_engine`)."""
    from .errors import KeyMismatch

    path = Path(path)
    label = label or str(path)
    if not path.exists():
        raise CheckpointError(f"model not found: {path}")
    suffix = path.suffix.lower()
    from .backends.mobile import is_mobile_artifact, open_mobile_file

    is_file_model = is_mobile_artifact(path) or suffix in ENGINE_SUFFIXES or suffix in (".xml", ".onnx", ".ort")
    if form and is_file_model:
        raise KeyMismatch(f"{label}: :{form} applies to checkpoints only")
    if is_mobile_artifact(path):
        return open_mobile_file(path, threads)
    if suffix in ENGINE_SUFFIXES:
        return (engine_opener or open_engine)(path)
    if suffix == ".xml" or (suffix == ".onnx" and backend == "openvino"):
        from .backends.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(path, name=label, threads=threads)  # (an IR with FakeQuantize / i8 constants: int8)
    if suffix in (".onnx", ".ort"):
        from .backends.ort_runner import OrtRunner

        spec = None
        if suffix == ".onnx":
            try:
                spec = _spec_from_onnx(path, scale)  # size rules, when the file carries them
            except Exception:  # noqa: BLE001 - no edgesr metadata: the graph is analysed instead
                pass
        return OrtRunner(path, name=label, threads=threads, spec=spec)
    if user is not None:  # checkpoints are weights for the user's code: :training = the author's module as is
        from .backends.torch_runner import TorchRunner

        module, spec, um = user_deploy_model(path, scale=scale, **user)
        return TorchRunner(um.module if form == "training" else module, spec=spec)
    resolved = resolve_model(path, backend="torch", scale=scale, form=form or "deploy", threads=threads)
    if form == "training" and resolved.spec.form != "training":
        raise KeyMismatch(f"{path.name} holds the deploy form only; there is no training form to run")
    if threads:
        import torch

        torch.set_num_threads(threads)
    return resolved.runner  # carries resolved.spec: lets parity export it to localise a divergence


def open_engine(path: Path) -> Any:
    """A TensorRT / TensorRT-RTX engine's runner (`edgesr.backends.trt_runner.open_runner`); without a
    CUDA GPU or the TensorRT package, one BackendUnavailable line."""
    from .errors import BackendUnavailable

    try:
        from .backends.trt_runner import open_runner
    except ImportError as e:
        raise BackendUnavailable(f"cannot run {path.name}: the TensorRT runner is unavailable ({e}); "
                                 "pip install 'edgesr[trt-rtx]' or 'edgesr[trt]'") from None
    return open_runner(path)

"""Turn what a user names on the command line into a runnable model.

A MODEL argument is a checkpoint (.pth/.pt/.ckpt/.safetensors), an ONNX / ORT file, a mobile
artifact (.tflite, ncnn .param; Core ML: "no runtime on this machine"), or an OUTDIR written by
`edgesr convert` (holding manifest.json).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, ScaleMismatch, one_line, quoted
from .spec import Spec

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".sft")
ONNX_SUFFIXES = (".onnx", ".ort")
BACKENDS = ("torch", "ort", "openvino", "ort-int8", "openvino-int8", "litert", "litert-int8", "ncnn", "ncnn-int8",
            "coreml")


@dataclass
class ResolvedModel:
    runner: object  # a Runner (edgesr.backends)
    spec: Spec
    kind: str  # "checkpoint" | "onnx" | "bundle"
    path: Path
    onnx: bytes | Path | None = None  # the ONNX graph behind the runner, when there is one (tiling analysis)
    tiling: dict | None = None  # a bundle manifest's "tiling" (with the measurement made at convert time)


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
    return ResolvedModel(OrtRunner(path, name=f"ort:{path.name}", threads=threads), spec, "onnx", path,
                         onnx=path if path.suffix.lower() == ".onnx" else None)


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

        runner = OrtRunner(data, name=f"ort:{art.file}", threads=threads)
        resolved = ResolvedModel(runner, spec, "bundle", path)
    else:
        from .backends.torch_runner import TorchRunner
        from .checkpoint import load_state_dict_bytes
        from .registry import load_model

        loaded = load_model(load_state_dict_bytes(data, art.file), arch=spec.arch, scale=spec.scale)
        resolved = ResolvedModel(TorchRunner(loaded.module, name=f"torch:{loaded.spec.form}"), loaded.spec, "bundle",
                                 path)
    # the graph for tiling analysis and the measurement made at convert time, from verified bytes only
    if any(a.role == "onnx_fp32" for a in manifest.artifacts):
        resolved.onnx = data if backend == "ort" else manifest.verified_bytes(manifest.artifact("onnx_fp32"))
    resolved.tiling = manifest.data.get("tiling")
    return resolved


def user_deploy_model(weights: str | Path, ref, kwargs: dict | None = None, *, strict: bool = True,
                      key: str | None = None, extra_paths: tuple = (), input_range: float | None = None,
                      scale: int | None = None):
    """--model FILE.py:NAME + weights -> (deploy module in edgesr's [0, 1] RGB convention, Spec, LoadedUserModel).
    Conventions are measured (the output must beat bicubic); author deploy hooks kept only when exact."""
    from dataclasses import replace

    from .pipeline import verification_inputs
    from .reparam.author_hooks import deploy_form
    from .usermodel import load_user_model

    um = load_user_model(weights, ref, kwargs, strict=strict, key=key, extra_paths=tuple(Path(p) for p in extra_paths),
                         input_range=input_range, scale=scale)
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
    that runtime (edgesr.bench.INT8_ROLES) - never a graph made for another runtime."""
    from .bench import INT8_ROLES

    if backend not in BACKENDS:
        raise CheckpointError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "ort-int8":
        if path.is_dir():
            from .bundle import read_manifest

            from .backends.ort_runner import OrtRunner

            manifest = read_manifest(path)
            art = _int8_artifact(manifest, path, backend, INT8_ROLES[backend])
            if scale is not None and manifest.spec.scale != scale:
                raise ScaleMismatch(f"--scale {scale} does not match {quoted(path)} (x{manifest.spec.scale})")
            runner = OrtRunner(manifest.verified_bytes(art), name=f"ort:{art.file}", threads=threads)
            return ResolvedModel(runner, manifest.spec, "bundle", path)
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
        return ResolvedModel(OpenVinoRunner(manifest.verified_path(art), name=f"openvino:{art.role}", threads=threads),
                             manifest.spec, "bundle", path)
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
        return ResolvedModel(OpenVinoRunner(path, threads=threads), spec, "onnx", path)
    resolved = _from_checkpoint(path, "torch", scale, arch, form, threads)
    from .export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="edgesr-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(resolved.runner.module, resolved.spec, onnx_path, source_checkpoint=path)
        runner = OpenVinoRunner(onnx_path.read_bytes(), name="openvino:fp32", threads=threads)
    return ResolvedModel(runner, resolved.spec, "checkpoint", path)


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
    from .backends.mobile import MOBILE_BACKENDS, coreml_unavailable, mobile_runner_for, spec_beside
    from .bundle import read_manifest

    spec = manifest = None
    if path.is_dir():
        manifest = read_manifest(path)
        spec = manifest.spec
        if scale is not None and spec.scale != scale:
            raise ScaleMismatch(f"--scale {scale} does not match {path} (x{spec.scale})")
        try:
            path = manifest.artifact(MOBILE_BACKENDS[backend]).path  # loaded below from its verified bytes
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
    return ResolvedModel(runner, spec, "mobile" if manifest is None else "bundle", path)

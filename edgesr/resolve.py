"""Turn what a user names on the command line into a runnable model.

A MODEL argument is a checkpoint (.pth/.pt/.ckpt/.safetensors), an ONNX / ORT file, a mobile
artifact (.tflite, ncnn .param; Core ML: "no runtime on this machine"), or an OUTDIR written by
`edgesr convert` (holding manifest.json).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, ScaleMismatch
from .spec import Spec

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".sft")
ONNX_SUFFIXES = (".onnx", ".ort")
BACKENDS = ("torch", "ort", "litert", "litert-int8", "ncnn", "ncnn-int8", "coreml")


@dataclass
class ResolvedModel:
    runner: object  # a Runner (edgesr.backends)
    spec: Spec
    kind: str  # "checkpoint" | "onnx" | "bundle"
    path: Path


def resolve_model(ref: str | Path, backend: str = "torch", scale: int | None = None, arch: str | None = None,
                  form: str = "deploy", threads: int | None = None) -> ResolvedModel:
    path = Path(ref)
    if not path.exists():
        raise CheckpointError(f"model not found: {path}")
    from .backends.mobile import MOBILE_BACKENDS, is_mobile_artifact

    if path.is_dir():
        if backend in MOBILE_BACKENDS:
            return _from_mobile(path, backend, scale, threads)
        return _from_bundle(path, backend, scale, threads)
    if is_mobile_artifact(path):
        return _from_mobile(path, backend, scale, threads)
    if backend in MOBILE_BACKENDS:
        raise CheckpointError(f"--backend {backend} runs a mobile artifact: pass the .tflite / .param file or a "
                              f"convert OUTDIR that holds one, not {path.name}")
    if path.suffix.lower() in ONNX_SUFFIXES:
        return _from_onnx(path, backend, scale, threads)
    return _from_checkpoint(path, backend, scale, arch, form, threads)


def _from_checkpoint(path: Path, backend: str, scale, arch, form: str, threads) -> ResolvedModel:
    from .backends.torch_runner import TorchRunner
    from .registry import load_model
    from .reparam import reparameterize

    loaded = load_model(path, arch=arch, scale=scale)
    module, spec = loaded.module, loaded.spec
    if form == "deploy" and spec.form == "training":
        from dataclasses import replace

        module, spec = reparameterize(module), replace(spec, form="deploy")
    if backend == "torch":
        return ResolvedModel(TorchRunner(module, name=f"torch:{spec.form}"), spec, "checkpoint", path)
    from .backends.ort_runner import OrtRunner
    from .export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="edgesr-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(module, spec, onnx_path, source_checkpoint=path)
        runner = OrtRunner(onnx_path.read_bytes(), name="ort:fp32", threads=threads)
    return ResolvedModel(runner, spec, "checkpoint", path)


def _from_onnx(path: Path, backend: str, scale, threads) -> ResolvedModel:
    from .backends.ort_runner import OrtRunner

    if backend != "ort":
        raise CheckpointError(f"{path.name} is an ONNX model: use --backend ort")
    spec = _spec_from_onnx(path, scale)
    return ResolvedModel(OrtRunner(path, name=f"ort:{path.name}", threads=threads), spec, "onnx", path)


def _spec_from_onnx(path: Path, scale: int | None) -> Spec:
    meta: dict[str, str] = {}
    if path.suffix.lower() == ".onnx":
        from .export.onnx import read_metadata

        meta = read_metadata(path)
    if "spec" in meta:
        spec = Spec.from_dict(json.loads(meta["spec"]))
        if scale is not None and spec.scale != scale:
            raise ScaleMismatch(f"--scale {scale} does not match {path.name} (x{spec.scale} in its metadata)")
        return spec
    if scale is None:
        raise ScaleMismatch(f"{path.name} carries no edgesr metadata: pass --scale")
    return Spec(arch="unknown", scale=scale)


def _from_bundle(path: Path, backend: str, scale, threads) -> ResolvedModel:
    from .bundle import read_manifest

    manifest = read_manifest(path)  # validates the schema and every artifact's sha256
    art = manifest.artifact("onnx_fp32" if backend == "ort" else "torch_deploy")
    if backend == "ort":
        resolved = _from_onnx(art.path, "ort", scale, threads)
    else:
        resolved = _from_checkpoint(art.path, "torch", scale, manifest.spec.arch, "deploy", threads)
    resolved.kind = "bundle"
    return resolved


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
            path = manifest.artifact(MOBILE_BACKENDS[backend]).path
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
    runner = mobile_runner_for(path, spec, threads, name=f"{runtime}:{path.name}")
    return ResolvedModel(runner, spec, "mobile" if manifest is None else "bundle", path)

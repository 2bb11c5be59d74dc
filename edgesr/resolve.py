"""Turn what a user names on the command line into a runnable model.

A MODEL argument is a checkpoint (.pth/.pt/.ckpt/.safetensors), an ONNX / ORT file,
or an OUTDIR written by `edgesr convert` (holding manifest.json).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, ScaleMismatch, one_line, quoted
from .spec import Spec

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".sft")
ONNX_SUFFIXES = (".onnx", ".ort")
BACKENDS = ("torch", "ort")


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
    if path.is_dir():
        return _from_bundle(path, backend, scale, threads)
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
        return ResolvedModel(runner, spec, "bundle", path)
    from .backends.torch_runner import TorchRunner
    from .checkpoint import load_state_dict_bytes
    from .registry import load_model

    loaded = load_model(load_state_dict_bytes(data, art.file), arch=spec.arch, scale=spec.scale)
    return ResolvedModel(TorchRunner(loaded.module, name=f"torch:{loaded.spec.form}"), loaded.spec, "bundle", path)

"""Turn what a user names on the command line into a runnable model.

A MODEL argument is a checkpoint (.pth/.pt/.ckpt/.safetensors), an ONNX / ORT file,
or an OUTDIR written by `edgesr convert` (holding manifest.json).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError, CheckpointError, ScaleMismatch
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
        spec = Spec.from_dict(json.loads(meta["spec"]))
        if scale is not None and spec.scale != scale:
            raise ScaleMismatch(f"--scale {scale} does not match {path.name} (x{spec.scale} in its metadata)")
        return spec
    if scale is None:
        raise ScaleMismatch(f"{path.name} carries no edgesr metadata: pass --scale")
    return Spec(arch="unknown", scale=scale)


def _from_bundle(path: Path, backend: str, scale, threads) -> ResolvedModel:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{path} is a folder without manifest.json (not an `edgesr convert` output)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise BundleError(f"{manifest_path}: not an edgesr manifest (no 'artifacts' list)")
    arts = {a.get("role"): a for a in manifest["artifacts"] if isinstance(a, dict)}
    if backend == "ort":
        art = arts.get("onnx_fp32")
        if not art:
            raise BundleError(f"{manifest_path}: no fp32 ONNX artifact listed")
        resolved = _from_onnx(_verified_artifact(path, manifest_path, art), "ort", scale, threads)
        resolved.kind = "bundle"
        return resolved
    art = arts.get("torch_deploy")
    if not art:
        raise BundleError(f"{manifest_path}: no PyTorch deploy weights listed; use --backend ort")
    try:
        spec = Spec.from_dict(manifest["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{manifest_path}: invalid 'spec' ({type(e).__name__}: {e})") from None
    resolved = _from_checkpoint(_verified_artifact(path, manifest_path, art), "torch", scale, spec.arch, "deploy",
                                threads)
    resolved.kind = "bundle"
    return resolved


def _verified_artifact(folder: Path, manifest_path: Path, art: dict) -> Path:
    """The artifact's path inside the bundle, after checking it matches the manifest's sha256
    (a tampered or truncated file is refused before anything loads it)."""
    from pathlib import PurePosixPath

    from .fsutil import sha256_file

    rel, digest = art.get("file"), art.get("sha256")
    if not isinstance(rel, str) or not isinstance(digest, str):
        raise BundleError(f"{manifest_path}: artifact {art.get('role')!r} needs 'file' and 'sha256' strings")
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or "\\" in rel or ".." in parts:
        raise BundleError(f"{manifest_path}: artifact file {rel!r} must be a relative path inside the bundle")
    p = folder.joinpath(*parts)
    if not p.is_file():
        raise BundleError(f"{p} (listed in {manifest_path}) is missing")
    actual = sha256_file(p)
    if actual != digest.lower():
        raise BundleError(f"{p}: sha256 {actual[:16]}... does not match {manifest_path} ({digest[:16]}...): "
                          "the file was modified or corrupted; re-run `edgesr convert`")
    return p

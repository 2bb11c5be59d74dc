"""Open a mobile artifact (LiteRT .tflite, ncnn .param, Core ML package) as a Runner, where a
runtime exists on this machine; Core ML has none off Apple platforms: one clear line instead."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendUnavailable

MOBILE_SUFFIXES = (".tflite", ".param", ".mlpackage")


def is_mobile_artifact(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in MOBILE_SUFFIXES or name.endswith(".mlpackage.zip")


def open_mobile_runner(path: Path, threads: int | None = None, name: str | None = None):
    """A Runner for `path`; BackendUnavailable for Core ML (no runtime here) or a missing extra."""
    name = name or str(path)
    lower = path.name.lower()
    if lower.endswith(".tflite"):
        from .litert_runner import LiteRtRunner

        return LiteRtRunner(path, name=name, threads=threads)
    if lower.endswith(".param"):
        from .ncnn_runner import NcnnRunner

        return NcnnRunner(path, name=name, threads=threads)
    raise BackendUnavailable(f"{path.name}: no Core ML runtime on this machine (Core ML runs on Apple platforms "
                             "only); the package was converted and checked statically, see the bundle's report.md")

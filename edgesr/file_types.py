"""What a MODEL file's type implies: the backend that runs it when no --backend is given.

`eval`, `upscale`, `bench` and `parity` all take a MODEL that may be a checkpoint, an ONNX /
ORT file, an OpenVINO IR, a LiteRT flat buffer or an ncnn .param. Defaulting to PyTorch for a
file PyTorch cannot read only produces an error telling the user which flag to add; the
file's type already says it.
"""

from __future__ import annotations

from pathlib import Path

# suffix -> backend (the INT8 variant of a mobile file is told apart by reading it: see implied_backend)
SUFFIX_BACKENDS = {
    ".onnx": "ort",
    ".ort": "ort",
    ".xml": "openvino",
    ".tflite": "litert",
    ".param": "ncnn",
    ".mlpackage": "coreml",
}


def implied_backend(model: str | Path, fallback: str) -> str:
    """The backend MODEL's file type implies; `fallback` for a checkpoint or a convert OUTDIR
    (each command keeps its own default there)."""
    path = Path(model)
    name = path.name.lower()
    if name.endswith(".mlpackage.zip"):
        return "coreml"
    backend = SUFFIX_BACKENDS.get(path.suffix.lower())
    if backend is None or path.is_dir() and backend != "coreml":
        return fallback
    if backend in ("litert", "ncnn") and path.is_file():
        return _mobile_precision(path, backend)
    return backend


def _mobile_precision(path: Path, backend: str) -> str:
    """litert / ncnn, or their -int8 variant when the file is quantized (read from the file,
    never guessed from its name)."""
    try:
        from .backends.mobile import file_backend

        return file_backend(path) or backend
    except Exception:  # noqa: BLE001 - no LiteRT runtime here: running it reports that, with the extra to install
        return backend

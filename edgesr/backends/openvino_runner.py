"""OpenVINO runner (CPU) and ONNX -> OpenVINO IR conversion.

OpenVINO reads edgesr's ONNX files directly (QDQ INT8 graphs become FakeQuantize nodes that
its low-precision transformations turn into int8 kernels) and writes them as IR
(``model.xml`` + ``model.bin``), the form an OpenVINO application loads without the ONNX
frontend.

Settings, chosen so that numbers mean what they say:

* ``INFERENCE_PRECISION_HINT = f32``: on CPUs with bf16/AMX OpenVINO would otherwise run an
  "fp32" model in bf16, silently;
* ``NUM_STREAMS = 1``, ``PERFORMANCE_HINT = LATENCY``: one request at a time, as edgesr
  times and verifies;
* ``ENABLE_CPU_PINNING = False``: on a shared machine pinned threads of two processes land on
  the same cores;
* ``INFERENCE_NUM_THREADS = threads`` when given. OpenVINO has no spin-wait switch like ONNX
  Runtime's ``session.intra_op.allow_spinning``; with one thread it runs in the calling
  thread and nothing idles, which is how the benchmarks compare runtimes side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, ExportError
from .base import BaseRunner, onnx_precision

INSTALL_HINT = "pip install 'edgesr[openvino]'"
IR_SUFFIXES = (".xml",)


def openvino_module():
    """The openvino package, or BackendUnavailable with the install line."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def openvino_version() -> str | None:
    try:
        return openvino_module().__version__
    except BackendUnavailable:
        return None


_CORE = None


def core():
    """One openvino.Core per process (creating one costs ~0.1 s and loads the plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = openvino_module().Core()
    return _CORE


def compile_config(threads: int | None = None) -> dict[str, object]:
    cfg: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                              "ENABLE_CPU_PINNING": False}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def read_model(model: str | os.PathLike | bytes):
    """An openvino.Model from an .onnx / .xml path (or ONNX bytes)."""
    ov = openvino_module()
    try:
        if isinstance(model, bytes):
            import tempfile

            with tempfile.TemporaryDirectory(prefix="edgesr-ov-") as tmp:
                p = Path(tmp) / "model.onnx"
                p.write_bytes(model)
                return ov.convert_model(str(p))
        return core().read_model(str(model))
    except BackendUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
        name = "model" if isinstance(model, bytes) else Path(model).name
        raise ExportError(f"OpenVINO cannot read {name}: {str(e).strip().splitlines()[0][:300]}") from None


def convert_to_ir(onnx_path: str | os.PathLike, xml_path: str | os.PathLike) -> Path:
    """ONNX -> OpenVINO IR (xml + bin beside it), weights kept in fp32 (no fp16 compression:
    an fp32 artifact must compute what the ONNX computes). Written atomically."""
    from ..fsutil import atomic_path

    ov = openvino_module()
    model = read_model(onnx_path)
    xml = Path(xml_path)
    bin_path = xml.with_suffix(".bin")
    with atomic_path(bin_path) as tmp_bin, atomic_path(xml) as tmp_xml:
        # save_model names the .bin after the .xml: write both under temporary names, then
        # move the .bin onto its temporary path so atomic_path renames each into place.
        tmp_dir = Path(tmp_xml).parent
        staged = tmp_dir / f".{xml.stem}.ov-staging.xml"
        try:
            ov.save_model(model, str(staged), compress_to_fp16=False)
            os.replace(staged.with_suffix(".bin"), tmp_bin)
            text = staged.read_text()
            os.unlink(staged)
        except BaseException:
            for p in (staged, staged.with_suffix(".bin")):
                if p.exists():
                    p.unlink()
            raise
        Path(tmp_xml).write_text(text)
    return xml


class OpenVinoRunner(BaseRunner):
    """Runs an .onnx or .xml model with OpenVINO on the CPU; `run` is NCHW float32 in/out."""

    def __init__(self, model: str | os.PathLike | bytes, name: str | None = None, threads: int | None = None,
                 spec=None):
        self.path = None if isinstance(model, bytes) else Path(model)
        self.spec = spec
        self.name = name or f"openvino:{self.path.name if self.path else 'model'}"
        m = read_model(model)
        try:
            self.compiled = core().compile_model(m, "CPU", compile_config(threads))
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"OpenVINO cannot compile {self.path or 'model'}: "
                              f"{str(e).strip().splitlines()[0][:300]}") from None
        self.request = self.compiled.create_infer_request()
        self.threads = threads

    def _detect_precision(self) -> str:
        if self.path is not None and self.path.suffix.lower() == ".xml":  # an IR with FakeQuantize / int8 constants
            text = self.path.read_text(errors="replace")
            return "int8" if ('type="FakeQuantize"' in text or 'element_type="i8"' in text) else "fp32"
        if self.path is not None:
            return onnx_precision(self.path) or super()._detect_precision()
        return super()._detect_precision()

    def run(self, x: np.ndarray) -> np.ndarray:
        y = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[self.compiled.output(0)]
        return np.array(y, dtype=np.float32, copy=True)


__all__ = ["OpenVinoRunner", "convert_to_ir", "read_model", "compile_config", "openvino_module",
           "openvino_version", "INSTALL_HINT", "IR_SUFFIXES"]

"""ONNX export, simplification, fp16 conversion and ONNX Runtime (.ort) format."""

from __future__ import annotations

from .onnx import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, ExportResult, export_onnx, read_metadata

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "ExportResult", "export_onnx", "read_metadata"]

"""ONNX export, simplification, fp16 conversion and ONNX Runtime (.ort) format."""

from __future__ import annotations

from .fp16 import Fp16Result, TensorRange, export_fp16, scan_ranges
from .onnx import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, ExportResult, export_onnx, read_metadata
from .ort_format import OrtFormatResult, export_ort

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "ExportResult", "export_onnx", "read_metadata",
           "Fp16Result", "TensorRange", "export_fp16", "scan_ranges", "OrtFormatResult", "export_ort"]

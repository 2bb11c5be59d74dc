"""ONNX Runtime's own static QDQ quantizer over fixed calibration feeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable


def ort_quantize_qdq(src: Path, dst: Path, feeds: Iterable[dict[str, Any]], *, activation_type: str = "QUInt8",
                     weight_type: str = "QInt8", **extra_options: Any) -> Path:
    """quantize_static(QDQ, per-channel) of `src` into `dst`, calibrated on `feeds` (one
    {input name: array} per batch); extra_options go to ORT's quantizer as they are."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = list(feeds)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=getattr(QuantType, activation_type), weight_type=getattr(QuantType, weight_type),
                    per_channel=True, extra_options=extra_options)
    return dst

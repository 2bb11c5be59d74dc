"""The Runner contract every backend implements, and the defaults most runners share.

A runner maps an NCHW float32 image batch in the model's value range to its NCHW float32
output. Beyond `run` it says what it is: `name` (e.g. "ort:fp32", "trt-rtx:int8"), `precision`
(fp32 / fp16 / bf16 / int8: what parity's default tolerance is chosen by), `spec` (the model's
`edgesr.spec.Spec` when the runner was made from something that carries one, else None) and the
metadata of its input and output tensors. `close()` releases what it holds (engines, device
memory, sessions); a runner is a context manager that closes on exit. Runners made by
`edgesr.resolve` carry the model's spec; parity, bench, eval and upscale rely on nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..spec import Spec

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"}
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16


@dataclass(frozen=True)
class TensorMeta:
    """One input or output: its name, shape (None or a name for a dynamic axis) and numpy dtype name."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str = "float32"
    layout: str = "NCHW"


@runtime_checkable
class Runner(Protocol):
    name: str
    spec: Spec | None

    @property
    def precision(self) -> str: ...

    def input_metadata(self) -> tuple[TensorMeta, ...]: ...

    def output_metadata(self) -> tuple[TensorMeta, ...]: ...

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


class BaseRunner:
    """Defaults for the contract. A subclass sets `name` and implements `run`; it overrides
    `_detect_precision` and the metadata methods where its runtime knows better than the defaults
    (precision from the name, one dynamic NCHW float32 input and output)."""

    name: str = "runner"
    spec: Spec | None = None
    _precision: str | None = None

    @property
    def precision(self) -> str:
        if self._precision is None:
            self._precision = self._detect_precision()
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = value

    def _detect_precision(self) -> str:
        return precision_from_name(self.name)

    def input_metadata(self) -> tuple[TensorMeta, ...]:
        channels = self.spec.in_channels if self.spec is not None else None
        return (TensorMeta("input", (None, channels, None, None)),)

    def output_metadata(self) -> tuple[TensorMeta, ...]:
        channels = self.spec.out_channels if self.spec is not None else None
        return (TensorMeta("output", (None, channels, None, None)),)

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the runner holds; the base holds nothing."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def precision_from_name(name: str) -> str:
    """int8 / fp16 / bf16 when a runner's name says so, else fp32."""
    lowered = str(name).lower()
    for p in ("int8", "bf16", "fp16"):
        if p in lowered:
            return p
    return "fp32"


def onnx_precision(model: str | os.PathLike | bytes | None) -> str | None:
    """fp32 / fp16 / int8 read from an ONNX graph (path or bytes); None when it cannot be read.
    The graph is authoritative: quantizers copy the fp32 model's metadata unchanged."""
    if model is None:
        return None
    try:
        import onnx

        if isinstance(model, bytes):
            proto = onnx.load_model_from_string(model)
        else:
            if Path(model).suffix.lower() != ".onnx":
                return None
            proto = onnx.load_model(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable graph: the caller falls back to other hints
        return None
    g = proto.graph
    if {n.op_type for n in g.node} & _QUANT_OPS:
        return "int8"
    if any(i.data_type == _FLOAT16 for i in g.initializer) or any(
            i.type.tensor_type.elem_type == _FLOAT16 for i in g.input):
        return "fp16"
    return "fp32"

"""Backends: one `Runner` per engine, each imported lazily.

A runner maps an NCHW float32 image batch in the model's value range to its output.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    name: str  # e.g. "torch:deploy", "ort:fp32", "trt-rtx:int8"

    def run(self, x: np.ndarray) -> np.ndarray: ...

"""Backends: one `Runner` per engine, each imported lazily (see `base.Runner` for the contract).

A runner maps an NCHW float32 image batch in the model's value range to its output.
"""

from __future__ import annotations

from .base import BaseRunner, Runner, TensorMeta

__all__ = ["BaseRunner", "Runner", "TensorMeta"]

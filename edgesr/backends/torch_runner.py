"""PyTorch eager runner."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import BaseRunner

_PRECISION_OF = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class TorchRunner(BaseRunner):
    def __init__(self, module: nn.Module, name: str = "torch", device: str = "cpu",
                 dtype: torch.dtype = torch.float32, spec=None):
        self.module = module.eval().to(device=device, dtype=dtype)
        self.name, self.device, self.dtype, self.spec = name, device, dtype, spec

    def _detect_precision(self) -> str:
        return _PRECISION_OF.get(self.dtype) or super()._detect_precision()

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)
        return self.module(t).float().cpu().numpy()

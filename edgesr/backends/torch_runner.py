"""PyTorch eager runner."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchRunner:
    def __init__(self, module: nn.Module, name: str = "torch", device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.module = module.eval().to(device=device, dtype=dtype)
        self.name, self.device, self.dtype = name, device, dtype

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)
        return self.module(t).float().cpu().numpy()

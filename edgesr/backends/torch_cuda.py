"""PyTorch on a CUDA GPU (eager or CUDA-graph replay), with host calls standing in for a CPU dry run."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..timing import CudaCalls, HostCalls, fp32_math
from .base import BaseRunner


TORCH_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchCudaRunner(BaseRunner):
    """PyTorch eager (or CUDA-graph replay) on the GPU; `run` is host numpy in/out.

    precision: "fp32" | "fp16" | "bf16" (weights and activations; input and output stay fp32
    on the host). channels_last: NHWC memory format for weights and input. tf32: see
    `fp32_math` (None: PyTorch's own settings). calls: `CudaCalls()` (default) or
    `HostCalls()` to run the same code on the CPU (dry run; device is then the CPU)."""

    def __init__(self, module, cuda_graph: bool = False, device: int = 0, *, precision: str = "fp32",
                 channels_last: bool = False, tf32: bool | None = None, calls: CudaCalls | HostCalls | None = None):
        import copy

        import torch

        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"precision {precision!r}: one of {', '.join(TORCH_PRECISIONS)}")
        self.torch = torch
        self.calls = calls if calls is not None else CudaCalls()
        self.device = self.calls.device(device)
        self.precision = precision
        self.dtype = getattr(torch, TORCH_PRECISIONS[precision])
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.tf32 = tf32
        # the caller's module stays where it is, in its dtype
        self.module = copy.deepcopy(module).eval().to(self.device, self.dtype, memory_format=self.memory_format)
        self.cuda_graph = cuda_graph
        self.name = "torch-cuda:graph" if cuda_graph else "torch-cuda:eager"
        if precision != "fp32":
            self.name += f":{precision}"
        elif tf32 is not None:
            self.name += ":tf32" if tf32 else ":ieee"
        if channels_last:
            self.name += ":channels-last"
        self._graphs: dict[tuple, tuple] = {}

    def to_device(self, x: np.ndarray):
        """Host NCHW float32 -> the runner's device, dtype and memory format."""
        t = self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return t.to(self.dtype).contiguous(memory_format=self.memory_format)

    def _graph(self, shape: tuple):
        """(replay, static input, static output) for one input shape, captured once."""
        torch = self.torch
        if shape not in self._graphs:
            static_in = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(
                memory_format=self.memory_format)

            def forward():
                return self.module(static_in)

            with torch.no_grad(), fp32_math(self.tf32):
                replay, static_out = self.calls.capture(forward, self.device)
            self._graphs[shape] = (replay, static_in, static_out)
        return self._graphs[shape]

    def device_launch(self, x: np.ndarray) -> Callable[[], object]:
        """A launch function with the input already on the GPU (what GPU compute time times)."""
        torch = self.torch
        if self.cuda_graph:
            replay, static_in, _ = self._graph(tuple(x.shape))
            static_in.copy_(self.to_device(x))
            return replay
        xd = self.to_device(x)

        def launch():
            with torch.inference_mode(), fp32_math(self.tf32):
                return self.module(xd)

        return launch

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        if self.cuda_graph:
            replay, static_in, static_out = self._graph(tuple(x.shape))
            static_in.copy_(self.to_device(x))
            replay()
            return static_out.float().cpu().numpy()
        with torch.inference_mode(), fp32_math(self.tf32):
            return self.module(self.to_device(x)).float().cpu().numpy()

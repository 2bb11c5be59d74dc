"""TensorRTRunner: executing engines needs a CUDA GPU (skips without one, with the reason).

On a GPU machine: builds a tiny SR engine with each installed flavour and compares its
output with onnxruntime on CPU, with and without CUDA graphs, and times it with CUDA events.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesr.backends.trt import BuildOptions, EngineShapeError, ShapeProfile, TensorRTRunner, build_engine
from edgesr.errors import BackendUnavailable

MODULES = {"rtx": "tensorrt_rtx", "trt": "tensorrt"}


class TinySR(torch.nn.Module):
    def __init__(self, channels: int = 8, scale: int = 2) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.body = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.tail = torch.nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.up = torch.nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.tail(torch.relu(self.body(torch.relu(self.head(x))))))


@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runner") / "tiny.onnx"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TinySR().eval(), (torch.rand(1, 3, 32, 32),), str(path),
            input_names=["lr"], output_names=["sr"],
            dynamic_axes={"lr": {0: "n", 2: "h", 3: "w"}, "sr": {0: "n", 2: "h2", 3: "w2"}},
            opset_version=17, dynamo=False,
        )
    return path


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"lr": x})[0]


def _gpu_flavour_or_skip(name: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is False")
    trt = pytest.importorskip(MODULES[name])
    if name == "rtx":
        major, minor = torch.cuda.get_device_capability()
        if f"SM{major}{minor}" not in trt.ComputeCapability.__members__:
            pytest.skip(f"TensorRT-RTX {trt.__version__} cannot run on compute capability {major}.{minor}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; this machine has a GPU")
@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="TensorRT-RTX not installed")
def test_runner_without_gpu_says_so(onnx_fp32, tmp_path):
    art = build_engine(onnx_fp32, tmp_path, profile=ShapeProfile(max_hw=(64, 64)), options=BuildOptions(max_threads=1))
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        TensorRTRunner(art.path)


@pytest.mark.gpu
@pytest.mark.parametrize("flavour", ["rtx", "trt"])
def test_runner_matches_onnxruntime(onnx_fp32, tmp_path, flavour):
    _gpu_flavour_or_skip(flavour)
    art = build_engine(
        onnx_fp32, tmp_path, flavour=flavour, profile=ShapeProfile(max_hw=(128, 128), batch=(1, 1, 2))
    )
    assert art.metadata["io"]["source"] == "engine"
    rng = np.random.default_rng(0)
    x1 = rng.random((1, 3, 40, 48), dtype=np.float32)
    x2 = rng.random((2, 3, 24, 32), dtype=np.float32)
    ref1, ref2 = _ort(onnx_fp32, x1), _ort(onnx_fp32, x2)

    cache = tmp_path / "runtime.cache"
    rtx_only = {"runtime_cache": cache, "kernel_specialization": "eager"} if flavour == "rtx" else {}
    with TensorRTRunner(art.path, **rtx_only) as r:
        assert r.input_names == ["lr"] and r.output_names == ["sr"]
        assert r.name == ("trt-rtx:fp32" if flavour == "rtx" else "trt:fp32")
        y = r.run(x1)  # edgesr.backends.Runner style: array in, float32 array out
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, ref1, atol=5e-3)
        y1 = r.run({"lr": x1})["sr"]  # named I/O
        assert y1.shape == (1, 3, 80, 96)
        np.testing.assert_allclose(y1, ref1, atol=5e-3)
        np.testing.assert_allclose(r.run({"lr": x2})["sr"], ref2, atol=5e-3)
        with pytest.raises(EngineShapeError, match="not accepted"):
            r.run({"lr": np.zeros((1, 3, 200, 200), np.float32)})
        ms = r.time_gpu(x1, warmup=2, iters=5)
        assert len(ms) == 5 and all(t > 0 for t in ms)
    if flavour == "rtx":
        assert cache.is_file() and cache.stat().st_size > 0

    with TensorRTRunner(art.path, cuda_graph=True) as g:
        np.testing.assert_allclose(g.run({"lr": x1})["sr"], ref1, atol=5e-3)
        np.testing.assert_allclose(g.run({"lr": x1 * 0.5})["sr"], _ort(onnx_fp32, x1 * 0.5), atol=5e-3)
        x3 = rng.random((1, 3, 32, 32), dtype=np.float32)
        np.testing.assert_allclose(g.run({"lr": x3})["sr"], _ort(onnx_fp32, x3), atol=5e-3)
        assert len(g.time_gpu({"lr": x3}, warmup=1, iters=3)) == 3

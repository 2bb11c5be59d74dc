"""Y-PSNR of an ONNX model on an EvalSet, run in ONNX Runtime (CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..spec import Spec
from .calibration import EvalSet, from_model_output, to_model_input


@dataclass
class EvalScore:
    psnr: float  # mean Y-PSNR (dB), BasicSR protocol, crop border = scale
    per_image: dict[str, float]


def make_session(model: str | os.PathLike | bytes, threads: int | None = None):
    """An ONNX Runtime session for the quantizer's passes. A graph whose batch dimension is fixed
    to 1 (a fixed-shape export) is fed batched calibration data one sample at a time."""
    from ..backends.ort_session import ort_session

    sess = ort_session(model, threads=threads)
    batch = sess.get_inputs()[0].shape[0] if sess.get_inputs() and sess.get_inputs()[0].shape else None
    return _OneSampleSession(sess) if batch == 1 else sess


def tensors_over_batches(model, tensors: Sequence[str], batch: np.ndarray, threads: int | None = None,
                         input_name: str | None = None, chunk: int = 8) -> Iterator[list[np.ndarray]]:
    """The values of `tensors` (float tensors of `model`, an onnx ModelProto, made its outputs in a
    copy) over the NCHW `batch`, run `chunk` inputs at a time: one list per chunk, in `tensors` order.
    What the calibration statistics of the exact rewrites (center, concat, equalize, refine) read."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for t in tensors:
        m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = make_session(m.SerializeToString(), threads)
    name = input_name if input_name is not None else model.graph.input[0].name
    for i in range(0, len(batch), chunk):
        yield sess.run(list(tensors), {name: batch[i:i + chunk]})


class _OneSampleSession:
    """``run`` of a batch-1 graph over a batch: one sample per call, outputs concatenated."""

    def __init__(self, session) -> None:
        self._session = session

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def run(self, output_names, feed: dict, *args, **kwargs):
        n = max((len(v) for v in feed.values() if hasattr(v, "__len__")), default=1)
        if n <= 1:
            return self._session.run(output_names, feed, *args, **kwargs)
        parts = [self._session.run(output_names, {k: v[i:i + 1] for k, v in feed.items()}, *args, **kwargs)
                 for i in range(n)]
        return [np.concatenate(outs, axis=0) for outs in zip(*parts)]


RUNTIMES = ("onnxruntime", "openvino")


class RunnerSession:
    """An edgesr Runner (``run(x) -> y``) behind the ORT session calls `run_sr` makes."""

    def __init__(self, runner):
        self.runner = runner

    def get_inputs(self):
        class _In:
            name = "input"

        return [_In()]

    def run(self, _outputs, feed: dict) -> list[np.ndarray]:
        return [self.runner.run(next(iter(feed.values())))]


def runtime_session(model: str | os.PathLike | bytes, runtime: str = "onnxruntime", threads: int | None = None):
    """Something `evaluate` can score: an ORT session, or an OpenVINO model behind the same calls."""
    if runtime == "openvino":
        from ..backends.openvino_runner import OpenVinoRunner

        return RunnerSession(OpenVinoRunner(model, threads=threads))
    return make_session(model, threads)


def run_sr(session, spec: Spec, lr_u8: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 LR -> float HxWx3 SR in [0, 1] (not clipped; psnr_y clips when rounding)."""
    x = to_model_input(lr_u8, spec)[None]
    inp = session.get_inputs()[0].name
    y = session.run(None, {inp: x})[0][0]
    return from_model_output(y, spec)


def evaluate(model: str | os.PathLike | bytes | object, spec: Spec, evalset: EvalSet,
             threads: int | None = None, runtime: str = "onnxruntime") -> EvalScore:
    """Mean Y-PSNR over `evalset`; `model` is a path, bytes or an ORT InferenceSession;
    `runtime` says which runtime runs a path (the one the graph was made for)."""
    from ..metrics import psnr_y

    if hasattr(model, "run") and hasattr(model, "get_inputs"):
        sess = model
    elif isinstance(model, (str, bytes, os.PathLike)):
        sess = runtime_session(model, runtime, threads)
    else:
        raise TypeError(f"evaluate needs a model path, bytes or an ORT session, got {type(model).__name__}")
    per = {}
    for p in evalset.pairs:
        sr = run_sr(sess, spec, p.lr)
        hr = p.hr.astype(np.float64) / 255.0
        if spec.out_channels == 1:  # Y-only model: compare with the HR's Y (BT.601, [0, 1])
            hr = ((16.0 + hr @ np.array([65.481, 128.553, 24.966])) / 255.0)[..., None]
        per[p.name] = float(psnr_y(sr, hr, crop_border=evalset.scale))
    return EvalScore(float(np.mean(list(per.values()))), per)


"""Int8 weights fitted for the quantized input they read (edgesr/quant/refine.py, input_aware)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesr.quant import QuantConfig, QuantSession, held_out_eval_set
from edgesr.quant.range_search import fake_quant
from edgesr.quant.refine import INPUT_AWARE_MAX_RATIO, ConvStats, input_aware_fit
from edgesr.spec import Spec


def _stats(X: np.ndarray, Xq: np.ndarray) -> ConvStats:
    """The moments conv_input_stats keeps, from im2col rows X (fp32 input) and Xq (quantized)."""
    n = len(X)
    mx, mq = X.mean(0), Xq.mean(0)
    H, Hq = X.T @ X / n, Xq.T @ Xq / n
    return ConvStats(H=H, mean=mx, count=n, qmean=mq, Hq=Hq, C=X.T @ Xq / n - np.outer(mx, mq),
                     Hq_cov=Hq - np.outer(mq, mq), Cx=H - np.outer(mx, mx))


def _error(V, W, X, Xq):
    e = (Xq - Xq.mean(0)) @ V.T - (X - X.mean(0)) @ W.T
    return float(np.mean(np.sum(e ** 2, axis=1)))


@pytest.mark.parametrize("correlated", [True, False])
def test_fit_ratio_is_the_measured_error_ratio_and_gates_white_inputs(correlated):
    rng = np.random.default_rng(0)
    n, d = 20000, 18
    if correlated:  # a smooth signal seen by neighbouring taps: most directions carry little variance
        base = rng.normal(0, 4, (n, 3))
        X = base @ rng.normal(0, 1, (3, d)) + rng.normal(0, 0.05, (n, d))
    else:
        X = rng.normal(0, 4, (n, d))
    X = X.astype(np.float64)
    Xq = fake_quant(X, float(X.min()), float(X.max()), False, False).astype(np.float64)
    W = rng.normal(0, 1, (6, d))
    V, ratio = input_aware_fit(W, _stats(X, Xq), damp=1e-6)
    assert ratio == pytest.approx(_error(V, W, X, Xq) / _error(W, W, X, Xq), rel=1e-6)
    if correlated:
        assert ratio < 0.5  # the quantization noise in the directions the signal does not use is undone
    else:
        assert ratio > INPUT_AWARE_MAX_RATIO  # nothing to undo: the plain weights stay


class _Smooth(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 12, 3, padding=1)

    def forward(self, x):
        return torch.nn.functional.pixel_shuffle(self.b(torch.relu(self.a(x))), 2)


def test_session_fits_only_with_the_option(tmp_path):
    from edgesr.export.onnx import export_onnx

    torch.manual_seed(0)
    spec = Spec(arch="x", scale=2)
    path = export_onnx(_Smooth().eval(), spec, tmp_path / "m.onnx", simplify=False).path
    ev = held_out_eval_set(2, max_side=96)
    fast = dict(num_patches=8, patch_size=24, batch_size=4, progress=False, threads=1, psnr_budget=None)
    with QuantSession(path, spec, QuantConfig(profile="openvino", input_aware=True, **fast), eval_set=ev) as qs:
        rf = qs._qs.refiner
        # the second conv reads a quantized activation (the first reads the exact 8-bit picture: no fit)
        assert list(rf.input_aware_ratio) == ["/b/Conv"], rf.input_aware_ratio
        assert set(rf.input_aware_layers) <= {"/b/Conv"}
        assert np.isfinite(qs.psnr_int8_all)
    with QuantSession(path, spec, QuantConfig(profile="openvino", **fast), eval_set=ev) as qs:
        assert qs._qs.refiner.input_aware_ratio == {}

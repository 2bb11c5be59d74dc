"""Quantization-aware fine-tuning (edgesr/quant/finetune.py) and the PyTorch mirror of a QDQ graph
it trains (edgesr/quant/torchgraph.py): the mirror computes what ONNX Runtime computes, the learned
values written back are the ones trained, fine-tuning lowers the error against fp32, and the
quantizer keeps it only when it scores better."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgesr.errors import QuantizationError
from edgesr.quant import QuantConfig, held_out_eval_set, quantize_model
from edgesr.quant.evaluate import make_session
from edgesr.quant.finetune import finetune
from edgesr.quant.quantize import QuantSession
from edgesr.quant.torchgraph import TorchGraph
from edgesr.registry import build_variant
from edgesr.reparam import reparameterize

FAST = dict(num_patches=8, patch_size=24, batch_size=4, progress=False, threads=1)
WEIGHT_LIMIT = {"trt": 127, "cpu": 64}
# (code, bias) learning rates that lower this tiny model's error within 60 steps (seeded, deterministic);
# the defaults are tuned for 300 steps on real checkpoints (docs/int8.md)
TEST_LR = {"trt": (0.05, 2.0), "cpu": (0.01, 1.0)}


@pytest.fixture(scope="module")
def etds(tmp_path_factory):
    from edgesr.export.onnx import export_onnx

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ft")
    v = build_variant("etds-t-x2", form="training")
    module = reparameterize(v.module)
    with torch.no_grad():  # trained-looking weights: not the identity initialisation
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = export_onnx(module.eval(), v.spec, d / "etds.onnx", simplify=False).path
    return path, v.spec


@pytest.fixture(scope="module")
def graphs(etds, tmp_path_factory):
    """all-int8 QDQ graph, the fp32 graph it was built from, and calibration patches, per profile."""
    path, spec = etds
    d = tmp_path_factory.mktemp("qdq")
    out = {}
    for profile in ("trt", "cpu"):
        cfg = QuantConfig(profile=profile, psnr_budget=None, **FAST)
        with QuantSession(path, spec, cfg, None, held_out_eval_set(2, max_side=64)) as qs:
            q = qs.build(d / f"{profile}.onnx")
            out[profile] = (onnx.load(str(q)), onnx.load(str(qs.fp32_path)), qs.source.patches.copy())
    return out


def _ort(model, x):
    return make_session(model.SerializeToString(), 1).run(None, {model.graph.input[0].name: x})[0]


@pytest.mark.parametrize("profile", ["trt", "cpu"])
def test_mirror_computes_what_onnxruntime_computes(graphs, profile):
    qmodel, _, _ = graphs[profile]
    x = np.random.default_rng(1).random((2, 3, 21, 30), dtype=np.float32)
    with torch.no_grad():
        y = TorchGraph(qmodel, weight_limit=WEIGHT_LIMIT[profile])(torch.from_numpy(x)).numpy()
    ref = _ort(qmodel, x)
    assert y.shape == ref.shape
    err = np.abs(y - ref)
    # ORT fuses the QDQ patterns into integer kernels that requantize their int32 sums; an activation
    # near a rounding boundary may land one int8 level away: a few 8-bit output levels at most, rarely
    assert err.max() <= 2.5 / 255 and err.mean() < 2e-4


@pytest.mark.parametrize("profile", ["trt", "cpu"])
def test_finetune_lowers_the_error_and_writes_back_what_it_trained(graphs, profile):
    qmodel, fp32, patches = graphs[profile]
    learned, rep = finetune(qmodel, fp32, patches, steps=60, batch=4, lr_codes=TEST_LR[profile][0],
                            lr_bias=TEST_LR[profile][1],
                            weight_limit=WEIGHT_LIMIT[profile],
                            threads=1, progress=False)
    assert rep.loss_end < 0.97 * rep.loss_start, rep
    assert rep.weights > 0 and rep.biases > 0 and rep.scale_change == 0.0 and not learned.scales
    tuned = onnx.ModelProto()
    tuned.CopyFrom(qmodel)
    learned.apply(tuned)
    onnx.checker.check_model(tuned)
    # ONNX Runtime on the written graph reproduces the error the mirror measured after training
    target = _ort(fp32, patches)
    mse = [float(np.mean((_ort(tuned, patches[i:i + 8]) - target[i:i + 8]) ** 2)) for i in range(0, len(patches), 8)]
    assert np.mean(mse) == pytest.approx(rep.loss_end, rel=0.1)
    assert np.mean(mse) < 0.97 * rep.loss_start


def test_unsupported_op_is_refused_by_name():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    g = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="hm")], "g", [x], [y])
    with pytest.raises(QuantizationError, match="Hardmax"):
        TorchGraph(helper.make_model(g))


def test_quantizer_finetunes_only_over_budget_and_keeps_only_a_gain(etds, tmp_path):
    path, spec = etds
    ev = held_out_eval_set(2, max_side=64)
    common = dict(profile="cpu", finetune_steps=30, max_float_fraction=0.0, **FAST)
    r = quantize_model(path, tmp_path / "ft.onnx", spec, QuantConfig(psnr_budget=0.0, finetune=True, **common), eval_set=ev)
    ft = r.finetune
    assert ft is not None and ft["steps"] == 30 and isinstance(ft["applied"], bool)
    # the all-int8 score the search starts from is the better of the two, never the worse
    if "psnr_int8_all_after" in ft:
        assert r.psnr_int8_all == pytest.approx(max(ft["psnr_int8_all_before"], ft["psnr_int8_all_after"]))
        assert ft["applied"] == (ft["psnr_int8_all_after"] > ft["psnr_int8_all_before"])
    else:  # the training error did not decrease: not even scored
        assert not ft["applied"] and ft["loss_end"] >= ft["loss_start"] and "did not decrease" in ft["reason"]
        assert r.psnr_int8_all == pytest.approx(ft["psnr_int8_all_before"])
    assert r.psnr_int8 == pytest.approx(r.psnr_int8_all)  # no float layer allowed here
    meta = {p.key: p.value for p in onnx.load(str(r.path)).metadata_props}
    assert json.loads(meta["edgesr.int8.finetuned"]) == ft["applied"]
    assert r.to_dict()["finetune"] == ft
    # within budget (no budget at all) or switched off: no fine-tuning, the plain PTQ graph
    plain = quantize_model(path, tmp_path / "plain.onnx", spec, QuantConfig(psnr_budget=None, finetune=True, **common),
                           eval_set=ev)
    off = quantize_model(path, tmp_path / "off.onnx", spec, QuantConfig(psnr_budget=0.0, finetune=False, **common),
                         eval_set=ev)
    assert plain.finetune is None and off.finetune is None
    assert off.psnr_int8_all == pytest.approx(ft["psnr_int8_all_before"])
    if ft["applied"]:
        assert r.psnr_int8 > off.psnr_int8


def test_finetune_steps_validated():
    with pytest.raises(QuantizationError, match="finetune_steps"):
        QuantConfig(finetune_steps=0)

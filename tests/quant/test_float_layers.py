"""A layer the search keeps float stays float in the runtime that runs the graph.

ONNX Runtime's optimizer quantizes a float Conv whose input comes from a per-tensor
DequantizeLinear (edgesr/quant/float_layers.py): in the `cpu` graph such a "float" layer ran with
per-tensor 8-bit weights and made the graph worse than all-int8 (docs/int8.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgesr.quant import QuantConfig, QuantSession, held_out_eval_set
from edgesr.quant.calibration import EvalSet
from edgesr.quant.evaluate import evaluate
from edgesr.quant.float_layers import keep_float_layers_float, requantized_float_nodes
from edgesr.registry import build_variant
from edgesr.reparam import reparameterize

FAST = dict(num_patches=8, patch_size=24, batch_size=4, progress=False, threads=1)


def _ort(model_bytes: bytes, optimize: bool):
    from edgesr.backends.ort_session import ort_session

    return ort_session(model_bytes, threads=1, graph_opt="all" if optimize else "disable")


@pytest.fixture(scope="module")
def etds_t(tmp_path_factory):
    from edgesr.export.onnx import export_onnx

    torch.manual_seed(0)
    v = build_variant("etds-t-x2", form="training")
    d = tmp_path_factory.mktemp("etds")
    return export_onnx(reparameterize(v.module).eval(), v.spec, d / "etds.onnx", simplify=False).path, v.spec


def test_float_layer_is_not_requantized_by_onnx_runtime(etds_t, tmp_path):
    """Every single float layer of a cpu graph: ORT's optimized graph keeps its weights float and
    computes what the graph says (optimizations on == QDQ emulated in float, up to int8 kernels)."""
    path, spec = etds_t
    ev = held_out_eval_set(2, max_side=96)
    with QuantSession(path, spec, QuantConfig(profile="cpu", psnr_budget=None, **FAST), eval_set=ev) as qs:
        middle = [n for n in qs.layer_nodes if "backbone_convs" in n]
        assert middle
        for name in middle:
            b = qs.build(tmp_path / "one.onnx", [name]).read_bytes()
            assert requantized_float_nodes(b) == [], name
            emulated = evaluate(_ort(b, False), spec, ev).psnr
            kernel = evaluate(_ort(b, True), spec, ev).psnr
            # int8 kernels requantize their int32 sums: a few hundredths of a dB at most
            assert abs(kernel - emulated) < 0.05, (name, kernel, emulated)


def test_per_channel_dequantize_is_exact_and_what_ort_would_requantize(etds_t, tmp_path):
    path, spec = etds_t
    ev = held_out_eval_set(2, max_side=96)
    with QuantSession(path, spec, QuantConfig(profile="cpu", psnr_budget=None, gptq=False,
                                              bias_correction=False, **FAST), eval_set=ev) as qs:
        name = next(n for n in qs.layer_nodes if "backbone_convs.1" in n)
        m = onnx.load(str(qs.build(tmp_path / "one.onnx", [name])))
    # undo the guard: the float conv reads the shared per-tensor DequantizeLinear again
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    conv = next(n for n in m.graph.node if n.name == name)
    mine = dq[conv.input[0]]
    assert mine.name.endswith("__float_input_DequantizeLinear")
    shared = next(n for n in dq.values() if n.input[0] == mine.input[0] and n is not mine)
    plain = onnx.ModelProto()
    plain.CopyFrom(m)
    next(n for n in plain.graph.node if n.name == name).input[0] = shared.output[0]
    plain.graph.node.remove(next(n for n in plain.graph.node if n.name == mine.name))
    assert requantized_float_nodes(plain.SerializeToString()) == [name]  # what ORT does without the guard
    again = onnx.ModelProto()
    again.CopyFrom(plain)
    assert keep_float_layers_float(again) == [name]
    assert requantized_float_nodes(again.SerializeToString()) == []
    x = np.random.default_rng(0).random((1, 3, 20, 24), dtype=np.float32)
    a = _ort(plain.SerializeToString(), False).run(None, {"input": x})[0]
    b = _ort(again.SerializeToString(), False).run(None, {"input": x})[0]
    assert np.array_equal(a, b)  # the per-channel copy holds the same scale and zero point


@pytest.mark.shared
def test_etds_t_float_layer_costs_no_more_than_all_int8(ckpt_dir, tmp_path):
    """ETDS-T x4 (the published checkpoint), cpu profile: keeping backbone_convs.2 float cost
    0.99 dB held-out (all-int8 0.12) while ORT quantized it behind edgesr's back."""
    from edgesr.export.onnx import export_onnx
    from edgesr.registry import load_model

    lm = load_model(ckpt_dir / "ETDS" / "ETDS_M5C16_x4.pth")
    path = export_onnx(reparameterize(lm.module), lm.spec, tmp_path / "etds_t.onnx").path
    spec = lm.spec
    full = held_out_eval_set(4)
    ev = EvalSet(full.name, full.scale, full.pairs[::3])  # 5 of the 14 tiles: enough to see 0.9 dB
    cfg = QuantConfig(profile="cpu", psnr_budget=None, threads=1, progress=False)
    with QuantSession(path, spec, cfg, eval_set=ev) as qs:
        name = next(n for n in qs.layer_nodes if "backbone_convs.2" in n)
        assert qs.psnr_fp32 - qs.score([name]) <= qs.psnr_fp32 - qs.psnr_int8_all + 0.02


def test_speed_probe_times_a_graph_against_fp32(etds_t):
    from edgesr.quant.speed import SpeedProbe

    path, spec = etds_t
    probe = SpeedProbe(path, spec.in_channels, min_speedup=0.5, threads=1, hw=(32, 48), runs=3)
    ratio, fast = probe(path)  # fp32 against itself
    assert 0.5 < ratio < 2.0 and fast and probe.timings == 1
    probe.min_speedup = 10.0
    assert probe(path)[1] is False

"""INT8 quantization: calibration data, errors, profile structure, exact rewrites, search.

Fast: tiny random-weight x2 models and a handful of small patches. The Set5 acceptance
for real checkpoints is in tests/quant/test_quant_acceptance.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from PIL import Image

from edgesr.errors import DatasetError, QuantizationError
from edgesr.quant import CalibrationSource, QuantConfig, check_trt_qdq, held_out_eval_set, quantize_model
from edgesr.quant.calibration import HELD_OUT_NAMES, bicubic_downscale, read_rgb_u8
from edgesr.registry import build_variant
from edgesr.reparam import reparameterize
from edgesr.sample_images import sample_images
from edgesr.spec import Spec

SPEC2 = Spec(arch="x", scale=2)
FAST = dict(num_patches=8, patch_size=24, batch_size=4, progress=False, threads=1)


def _export(module, spec, path):
    from edgesr.export.onnx import export_onnx

    export_onnx(module.eval(), spec, path, simplify=False)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Random-weight ETDS-T x2 (deploy form, via the identity-initialised training form)
    and ECBSR-M4C16 x2 (deploy form, PReLU + residual Add), exported once."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    etds = build_variant("etds-t-x2", form="training")
    etds_deploy = reparameterize(etds.module)
    ecbsr = build_variant("ecbsr-m4c16-x2", form="deploy")
    with torch.no_grad():  # distinct PReLU slopes, as trained models have
        for mod in ecbsr.module.modules():
            if isinstance(mod, torch.nn.PReLU):
                mod.weight.uniform_(0.0, 0.5)
    return {
        "etds": (_export(etds_deploy, etds.spec, d / "etds.onnx"), etds.spec),
        "ecbsr": (_export(ecbsr.module, ecbsr.spec, d / "ecbsr.onnx"), ecbsr.spec),
    }


@pytest.fixture(scope="module")
def small_eval():
    return held_out_eval_set(2, max_side=96)


# --------------------------------------------------------------------------- calibration data

def test_held_out_set_tiles_its_photos_and_stays_out_of_calibration():
    from edgesr.sample_images import find_sample_image

    assert find_sample_image("grace_hopper.jpg") is not None  # matplotlib is a core dependency
    whole = held_out_eval_set(4, tile=None)
    tiled = held_out_eval_set(4, tile=130)  # rounded down to 128, a multiple of the scale
    assert whole.images == tiled.images == [n for n in HELD_OUT_NAMES if find_sample_image(n)]
    assert all(p.hr.shape[:2] == (128, 128) and p.lr.shape[:2] == (32, 32) for p in tiled.pairs)
    assert len(tiled) > 3 * len(whole) and len({p.name for p in tiled.pairs}) == len(tiled)
    # each tile is the pixels of its photo, LR its own bicubic downscale
    p = tiled.pairs[0]
    name, at = p.name.split("@")
    top, left = map(int, at.split(","))
    img = read_rgb_u8(find_sample_image(name))
    crop = img[(img.shape[0] - min(img.shape[0], 512) // 4 * 4) // 2:, (img.shape[1] - min(img.shape[1], 512) // 4 * 4) // 2:]
    assert np.array_equal(p.hr, crop[top:top + 128, left:left + 128])
    assert np.array_equal(p.lr, bicubic_downscale(p.hr, 4))
    cal = CalibrationSource(SPEC2, num_patches=2, patch_size=16, progress=False)
    assert not {f.name for f in cal.files} & set(tiled.images)


def test_default_calibration_uses_sample_images_minus_held_out():
    src = CalibrationSource(SPEC2, num_patches=6, patch_size=16, seed=3, progress=False)
    names = {f.name for f in src.files}
    assert names and not names & set(HELD_OUT_NAMES)
    assert names <= {f.name for f in sample_images()}
    assert not any("baby" in n or "bird" in n or "butterfly" in n for n in names)  # not Set5
    x = src.patches
    assert x.shape == (6, 3, 16, 16) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.01
    assert "imresize" in src.resampler
    from onnxruntime.quantization import CalibrationDataReader

    assert isinstance(src, CalibrationDataReader)


def test_patches_are_bicubic_lr_of_hr_crops_and_seeded():
    a = CalibrationSource(SPEC2, num_patches=4, patch_size=16, seed=1, progress=False)
    b = CalibrationSource(SPEC2, num_patches=4, patch_size=16, seed=1, progress=False)
    c = CalibrationSource(SPEC2, num_patches=4, patch_size=16, seed=2, progress=False)
    np.testing.assert_array_equal(a.patches, b.patches)
    assert not np.array_equal(a.patches, c.patches)
    info = a.patches_info[0]
    img = read_rgb_u8(next(f for f in a.files if f.name == info.image))
    hr = img[info.top:info.top + 32, info.left:info.left + 32]
    lr = bicubic_downscale(hr, 2)
    assert lr.shape == (16, 16, 3) and lr.dtype == np.uint8
    np.testing.assert_array_equal(a.patches[0], lr.transpose(2, 0, 1).astype(np.float32) / 255.0)


def test_value_range_and_color_order_follow_spec():
    rgb = CalibrationSource(SPEC2, num_patches=2, patch_size=16, progress=False).patches
    bgr255 = CalibrationSource(Spec(arch="x", scale=2, color_order="BGR", value_range=(0.0, 255.0)),
                               num_patches=2, patch_size=16, progress=False).patches
    np.testing.assert_allclose(bgr255, rgb[:, ::-1] * 255.0, rtol=1e-6)


def test_get_next_protocol():
    src = CalibrationSource(SPEC2, num_patches=5, patch_size=16, batch_size=2, input_name="lr", progress=False)
    batches = []
    while (b := src.get_next()) is not None:
        batches.append(b["lr"].shape[0])
    assert batches == [2, 2, 1] and len(src) == 3
    src.rewind()
    assert src.get_next()["lr"].shape == (2, 3, 16, 16)


def test_calibration_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    src = CalibrationSource(SPEC2, tmp_path, num_patches=3, patch_size=16, progress=False)
    assert [f.name for f in src.files] == ["0.png", "1.png"] and src.patches.shape == (3, 3, 16, 16)


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="holds no images"):
        CalibrationSource(SPEC2, tmp_path, progress=False)
    with pytest.raises(DatasetError, match="does not exist"):
        CalibrationSource(SPEC2, tmp_path / "nope", progress=False)


def test_no_readable_images(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png at all" * 20)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff" + bytes(100))
    with pytest.raises(DatasetError, match="no readable calibration image") as e:
        CalibrationSource(SPEC2, tmp_path, progress=False)
    assert "a.png" in str(e.value) and "b.jpg" in str(e.value)


def test_images_smaller_than_patch(tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DatasetError, match=r"at least 96x96.*small\.png"):
        CalibrationSource(Spec(arch="x", scale=4), tmp_path, patch_size=24, progress=False)
    # with one big enough image the small one is skipped, and said so
    Image.fromarray(np.full((100, 100, 3), 7, np.uint8)).save(tmp_path / "big.png")
    src = CalibrationSource(Spec(arch="x", scale=4), tmp_path, num_patches=2, patch_size=24, progress=False)
    assert src.skipped == ["small.png (40x40)"]


def test_all_zero_output_model(tmp_path):
    m = build_variant("etds-t-x2", form="deploy")
    with torch.no_grad():
        for p in m.module.parameters():
            p.zero_()
    path = _export(m.module, m.spec, tmp_path / "zero.onnx")
    with pytest.raises(QuantizationError, match="all zeros"):
        quantize_model(path, tmp_path / "q.onnx", m.spec, QuantConfig(psnr_budget=None, **FAST))
    assert not (tmp_path / "q.onnx").exists()


def test_config_validation():
    with pytest.raises(QuantizationError, match="calibration method"):
        QuantConfig(method="kl")
    with pytest.raises(QuantizationError, match="profile"):
        QuantConfig(profile="gpu")
    with pytest.raises(QuantizationError, match="psnr_budget"):
        QuantConfig(psnr_budget=-1)


# --------------------------------------------------------------------------- profiles

def _qdq_nodes(model):
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_trt_profile_structure(tiny, small_eval, tmp_path):
    for name in ("etds", "ecbsr"):
        path, spec = tiny[name]
        out = tmp_path / f"{name}_trt.onnx"
        res = quantize_model(path, out, spec, QuantConfig(profile="trt", psnr_budget=None, **FAST),
                             eval_set=small_eval)
        m = onnx.load(str(out))
        inits = {i.name: i for i in m.graph.initializer}
        qdq = _qdq_nodes(m)
        assert qdq and check_trt_qdq(m) == []
        for n in qdq:  # symmetric int8: every zero point is an int8 zero
            zp = inits[n.input[2]]
            assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any(), n.name
        producers = {o: n for n in m.graph.node for o in n.output}
        convs = [n for n in m.graph.node if n.op_type == "Conv"]
        for c in convs:  # int8 per-channel weights, float bias straight from an initializer
            w_dq = producers[c.input[1]]
            assert w_dq.op_type == "DequantizeLinear"
            assert inits[w_dq.input[0]].data_type == TensorProto.INT8
            assert numpy_helper.to_array(inits[w_dq.input[1]]).size == numpy_helper.to_array(
                inits[w_dq.input[0]]).shape[0]
            assert c.input[2] in inits and inits[c.input[2]].data_type == TensorProto.FLOAT
        assert not any(i.data_type == TensorProto.INT32 for i in m.graph.initializer)
        meta = {p.key: p.value for p in m.metadata_props}
        assert meta["edgesr.int8.profile"] == "trt" and meta["precision"] == "int8"
        assert res.profile == "trt" and res.float_layers == [] and np.isfinite(res.psnr_int8)


def test_cpu_profile_structure(tiny, small_eval, tmp_path):
    path, spec = tiny["etds"]
    out = tmp_path / "cpu.onnx"
    quantize_model(path, out, spec, QuantConfig(profile="cpu", psnr_budget=None, **FAST), eval_set=small_eval)
    m = onnx.load(str(out))
    inits = {i.name: i for i in m.graph.initializer}
    act = [n for n in _qdq_nodes(m) if n.input[0] not in inits]  # activations, not weights/biases
    assert act and all(inits[n.input[2]].data_type == TensorProto.UINT8 for n in act)
    weights = [numpy_helper.to_array(i) for i in m.graph.initializer if i.data_type == TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(int)).max()) for w in weights) <= 64  # reduce_range: 7 bit
    assert any(i.data_type == TensorProto.INT32 for i in m.graph.initializer)  # int32 biases
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    assert "QLinearConv" in {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}


# --------------------------------------------------------------------------- exact rewrites

def _run(model, x):
    from edgesr.quant.evaluate import make_session

    m = model if isinstance(model, bytes) else model.SerializeToString()
    return make_session(m, 1).run(None, {"input": x})[0]


def test_equalize_center_and_prelu_rewrites_are_exact(tiny):
    from edgesr.quant.center import center_conv_inputs
    from edgesr.quant.equalize import equalize
    from edgesr.quant.prelu import decompose_prelu, split_prelu

    rng = np.random.default_rng(0)
    calib = rng.random((4, 3, 20, 24), dtype=np.float32)
    x = rng.random((2, 3, 17, 23), dtype=np.float32)  # odd, non-square: borders matter
    for name in ("etds", "ecbsr"):
        m0 = onnx.load(str(tiny[name][0]))
        y0 = _run(m0, x)
        m1, eq = equalize(m0, calib)
        assert eq.pairs and all(p.range_ratio_after <= max(1.0, p.range_ratio_before / 64) + 1e-6
                                for p in eq.pairs)  # scales are capped at 64
        m2, ce = center_conv_inputs(m1, calib)
        assert ce.inputs and ce.inputs[0].tensor == "input" and abs(ce.inputs[0].shift - 0.5) < 0.05
        for m in (m1, m2):
            np.testing.assert_allclose(_run(m, x), y0, atol=2e-5)
    ecbsr = onnx.load(str(tiny["ecbsr"][0]))
    m3, pr = split_prelu(ecbsr, x)
    assert len(pr.rewritten) == 5 and "PRelu" not in {n.op_type for n in m3.graph.node}
    np.testing.assert_allclose(_run(m3, x), _run(ecbsr, x), atol=2e-5)
    m4, pr = decompose_prelu(ecbsr, x)
    assert len(pr.rewritten) == 5 and "PRelu" not in {n.op_type for n in m4.graph.node}
    np.testing.assert_array_equal(_run(m4, x), _run(ecbsr, x))  # bit-exact


def test_gptq_beats_nearest_rounding():
    from edgesr.quant.refine import gptq_codes

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 36)) @ rng.normal(size=(36, 36))  # correlated inputs
    W = rng.normal(size=(8, 36)) * 0.1
    W[:, 4] = 1.0  # one dominant tap per row, as ETDS's residual stream has
    scale = np.abs(W).max(1) / 127
    qmax = np.full(8, 127.0)
    H = X.T @ X / len(X)
    rtn = np.clip(np.round(W / scale[:, None]), -127, 127)
    gq = gptq_codes(W, scale, qmax, H)
    assert np.all(np.abs(gq) <= 127) and np.all(gq == np.round(gq))
    err = lambda q: np.linalg.norm((q * scale[:, None] - W) @ X.T)  # noqa: E731
    assert err(gq) < 0.85 * err(rtn)  # measured 0.77 for this seed


def test_conv_input_means_without_second_moments():
    """Bias correction alone (the zoo's cheap INT8) needs only E[x]: the same means without the
    im2col second moments, which were most of the cheap INT8's time."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgesr.quant.refine import conv_input_stats

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, None, None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, None, None])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    patches = rng.random((5, 3, 12, 10), dtype=np.float32)
    full = conv_input_stats(m, patches, batch=2)["c"]
    means = conv_input_stats(m, patches, batch=2, second_moments=False)["c"]
    np.testing.assert_allclose(means.mean, full.mean, rtol=1e-12)
    assert full.H.shape == (27, 27) and means.H.size == 0


# --------------------------------------------------------------------------- sensitivity / search

def test_sensitivity_chart_and_mixed_precision(tmp_path):
    """The bundled trained ECBSR-M4C16 x4 (deploy form), quantized naively (no equalization,
    centring or GPTQ) with a 0 dB budget and at most 2 float layers."""
    from edgesr.pipeline import BUNDLED_CHECKPOINT
    from edgesr.registry import load_model

    lm = load_model(BUNDLED_CHECKPOINT)
    spec = lm.spec
    path = _export(reparameterize(lm.module), spec, tmp_path / "bundled.onnx")
    png = tmp_path / "sens.png"
    cfg = QuantConfig(profile="trt", psnr_budget=0.0, center=False, gptq=False, bias_correction=False,
                      equalize=False, max_float_layers=2, **FAST)
    res = quantize_model(path, tmp_path / "mp.onnx", spec, cfg, eval_set=held_out_eval_set(4, max_side=128),
                         sensitivity_png=png)
    assert res.psnr_int8_all < res.psnr_fp32 - 0.01  # naive int8 costs something
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r.layer for r in res.sensitivity] == res.layers and len(res.layers) == 7  # 6 convs + Add
    assert all(r.only_cost is not None and r.except_gain is not None for r in res.sensitivity)
    # budget 0 dB cannot be met with 2 float layers: the search stops there, says so and
    # returns the best graph it evaluated (all-int8 included), never a worse one
    assert len(res.search_steps) == 3 and not res.within_budget and res.warnings
    assert res.drop == pytest.approx(min(s["drop"] for s in res.search_steps), abs=1e-9)
    assert res.psnr_int8 >= res.psnr_int8_all
    m = onnx.load(str(res.path))
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name for i in m.graph.initializer}
    by_name = {n.name: n for n in m.graph.node}
    for name in res.float_layers:
        node = by_name[name]
        assert all(i in inits or producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                   for i in node.input[1:]), name  # float weights
    assert set(res.float_nodes) >= set(res.float_layers)
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["edgesr.int8.float_nodes"]) == res.float_nodes
    # the first search step is the all-int8 model, later ones keep more layers float
    assert [len(s["float_layers"]) for s in res.search_steps] == [0, 1, 2]


# --------------------------------------------------------------------------- CLI

def test_cli_quantize(tiny, tmp_path, capsys):
    from edgesr.cli import main

    path, _ = tiny["etds"]
    out = tmp_path / "q.onnx"
    rc = main(["quantize", str(path), "-o", str(out), "--num-patches", "4", "--patch-size", "24",
               "--psnr-budget", "-1", "--threads", "1", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    d = json.loads(cap.out)
    assert d["config"]["finetune"] is False and d["finetune"] is None
    assert d["profile"] == "trt" and d["path"] == str(out) and out.is_file()
    assert d["calibration"]["num_patches"] == 4 and d["eval_set"] == "sample-held-out (192-px tiles)"
    rc = main(["quantize", str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "exists" in err and "--force" in err
    rc = main(["quantize", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("edgesr: error:") and "missing.onnx" in err
    # a budget no INT8 graph meets: the best graph is written, the exit status says it missed
    strict = tmp_path / "strict.onnx"
    rc = main(["quantize", str(path), "-o", str(strict), "--num-patches", "4", "--patch-size", "24",
               "--psnr-budget", "0", "--threads", "1", "--finetune"])
    cap = capsys.readouterr()
    err = cap.err
    assert rc == 1 and strict.is_file() and "edgesr: error: no INT8 graph met the 0.0 dB budget" in err
    assert "fine-tuning (300 steps" in cap.out  # asked for, all-int8 missed the budget: fine-tuned, and said so
    assert "--psnr-budget" in err


def test_trt_profile_builds_a_tensorrt_rtx_engine(tiny, small_eval, tmp_path):
    """The full trt graph (equalized, zero-centred: Sub / Clip(min) / Pad, GPTQ weights) is
    parsed and built by TensorRT-RTX (ahead of time, no GPU needed)."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install 'edgesr[trt-rtx]')")
    from edgesr.backends.trt import BuildOptions, ShapeProfile, build_engine, inspect_onnx

    for name in ("etds", "ecbsr"):
        path, spec = tiny[name]
        res = quantize_model(path, tmp_path / f"{name}_trt.onnx", spec,
                             QuantConfig(profile="trt", psnr_budget=None, **FAST), eval_set=small_eval)
        ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
        assert {"Pad", "Sub"} <= ops  # the zero-centring is in the graph TensorRT parses
        assert res.exact_input["exact"]  # ... and the picture's exact int8 codes (pixel - 128, scale 1/255)
        assert inspect_onnx(res.path).problems == ()
        art = build_engine(res.path, tmp_path / name, options=BuildOptions(max_threads=1),
                           profile=ShapeProfile.from_spec(spec, opt_hw=(32, 32), max_hw=(64, 64)))
        assert art.path.stat().st_size > 0


class _TwoBranch(torch.nn.Module):
    """The graph input read by two convs (SESR-like), joined by a residual Add, plus
    elementwise ops with scalar constants (LayerNorm/GELU-like)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 8, 5, padding=2)
        self.c = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x)) + self.b(x) * 0.5 + 0.25
        return self.c(y) + x


def test_shared_input_and_scalar_constants(tmp_path, small_eval):
    torch.manual_seed(0)
    path = tmp_path / "two.onnx"
    x = torch.rand(1, 3, 24, 24)
    torch.onnx.export(_TwoBranch().eval(), (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h", 3: "w"}})
    spec = Spec(arch="x", scale=1)
    from edgesr.quant.center import center_conv_inputs

    m0 = onnx.load(str(path))
    rng = np.random.default_rng(1)
    m1, rep = center_conv_inputs(m0, rng.random((2, 3, 20, 20), dtype=np.float32))
    xs = rng.random((1, 3, 13, 17), dtype=np.float32)
    np.testing.assert_allclose(_run(m1, xs), _run(m0, xs), atol=2e-5)
    assert sum(n.op_type == "Sub" and n.input[0] == "input" for n in m1.graph.node) == 1  # one shared shift
    res = quantize_model(path, tmp_path / "q.onnx", spec, QuantConfig(profile="trt", psnr_budget=None, **FAST),
                         eval_set=held_out_eval_set(1, max_side=48))
    q = onnx.load(str(res.path))
    assert check_trt_qdq(q) == []  # the scalar constants (0.5, 0.25) are not quantized
    inits = {i.name: i for i in q.graph.initializer}
    assert not any(n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) == 0
                   for n in q.graph.node)
    # Adds of two activations stay quantizable layers; the one adding a constant does not
    assert [name for name in res.layers if "Add" in name] == ["/Add", "/Add_2"]


# --------------------------------------------------------------------------- search / float layers

def test_search_returns_the_best_graph_it_evaluated():
    from edgesr.quant.sensitivity import search

    # keeping layers float makes it WORSE (interacting errors): all-int8 stays the answer
    worse = {(): 30.0, ("a",): 29.8, ("a", "b"): 29.5}
    r = search(["a", "b"], lambda fl, only: worse[tuple(fl)], 31.0, 30.0, 0.1)
    assert not r.within_budget and r.float_layers == [] and r.psnr == 30.0 and len(r.steps) == 3
    # the best of several misses, not the last one
    mixed = {("a",): 30.6, ("a", "b"): 30.2, ("a", "b", "c"): 30.4}
    r = search(["a", "b", "c"], lambda fl, only: mixed[tuple(fl)], 31.0, 30.0, 0.1)
    assert r.float_layers == ["a"] and r.drop == pytest.approx(0.4) and not r.within_budget
    # within budget: stops at the first graph that holds it
    ok = {("a",): 30.95}
    r = search(["a", "b"], lambda fl, only: ok[tuple(fl)], 31.0, 30.0, 0.1)
    assert r.within_budget and r.float_layers == ["a"] and r.evaluations == 1
    # max_float caps the search
    r = search(["a", "b", "c"], lambda fl, only: mixed[tuple(fl)], 31.0, 30.0, 0.1, max_float=1)
    assert len(r.steps) == 2


class _Attention(torch.nn.Module):
    """Conv -> Sigmoid gate (Mul) -> residual Add -> PixelShuffle: ops beyond Conv/Add that
    ORT's quantizer would give Q/DQ pairs (as in RepRFN / SPAN / ESA blocks)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.g = torch.nn.Conv2d(8, 8, 1)
        self.b = torch.nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        f = torch.relu(self.a(x))
        f = f * torch.sigmoid(self.g(f)) + f
        return torch.nn.functional.pixel_shuffle(self.b(f), 2)


@pytest.mark.parametrize("profile", ["cpu", "trt"])
def test_float_layers_carry_no_qdq(profile, tmp_path, small_eval):
    from edgesr.quant import QuantSession

    torch.manual_seed(0)
    path = _export(_Attention(), SPEC2, tmp_path / "att.onnx")
    cfg = QuantConfig(profile=profile, psnr_budget=None, **FAST)
    with QuantSession(path, SPEC2, cfg, eval_set=small_eval) as qs:
        names = [layer.name for layer in qs.layers]
        ops = {layer.op_type for layer in qs.layers}
        if profile == "cpu":
            assert {"Mul", "Sigmoid"} <= ops  # ORT would quantize them: they are layers
        all_float = qs.build(tmp_path / "all_float.onnx", names)
        assert not _qdq_nodes(onnx.load(str(all_float)))
        assert qs.score(names) == pytest.approx(qs.psnr_fp32, abs=1e-9)
        one = qs.build(tmp_path / "one.onnx", names[:1])
        m = onnx.load(str(one))
        producers = {o: n for n in m.graph.node for o in n.output}
        for node_name in qs.layer_nodes[names[0]].nodes:
            node = next(n for n in m.graph.node if n.name == node_name)
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)
        assert _qdq_nodes(m)  # the other layers are int8


class _CatFusion(torch.nn.Module):
    """Conv(Concat(features, 20 x features')) as in SPAN's conv_cat: parts of very different range."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.b = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.cat = torch.nn.Conv2d(12, 12, 1)

    def forward(self, x):
        f = torch.relu(self.a(x))
        g = 20.0 * torch.relu(self.b(f))
        return torch.nn.functional.pixel_shuffle(self.cat(torch.cat([f, g], 1)), 2)


def test_concat_split_is_exact_and_keeps_its_sums_float(tmp_path, small_eval):
    from edgesr.quant import QuantSession
    from edgesr.quant.concat import SPLIT_TAG, split_concat_convs

    torch.manual_seed(0)
    path = _export(_CatFusion(), SPEC2, tmp_path / "cat.onnx")
    x = np.random.default_rng(0).random((2, 3, 16, 20), dtype=np.float32)
    m, rep = split_concat_convs(onnx.load(str(path)), x)
    assert len(rep.convs) == 1 and rep.convs[0]["parts"] == 2 and rep.max_abs_change < 1e-4
    assert not any(n.op_type == "Concat" for n in m.graph.node)
    np.testing.assert_allclose(_run(m, x), _run(onnx.load(str(path)), x), atol=1e-4)
    cfg = QuantConfig(profile="trt", psnr_budget=None, **FAST)
    with QuantSession(path, SPEC2, cfg, eval_set=small_eval) as qs:
        assert qs.concat_report and all(SPLIT_TAG not in layer.name for layer in qs.layers)
        q = onnx.load(str(qs.build(tmp_path / "q.onnx")))
        producers = {o: n for n in q.graph.node for o in n.output}
        adds = [n for n in q.graph.node if n.op_type == "Add" and SPLIT_TAG in n.name]
        assert adds and all(producers[i].op_type == "Conv" for n in adds for i in n.input)  # float sums
    off = QuantConfig(profile="trt", psnr_budget=None, split_concat=False, **FAST)
    with QuantSession(path, SPEC2, off, eval_set=small_eval) as qs:
        assert qs.concat_report is None


def test_search_passes_over_a_float_layer_that_makes_the_graph_too_slow():
    from edgesr.quant.sensitivity import search

    psnr = {("a",): 30.5, ("b",): 30.95, ("a", "b"): 30.97, ("b", "c"): 30.99}
    slow = {("a",)}  # keeping "a" float would make the graph slower than allowed
    r = search(["a", "b", "c"], lambda fl, only: psnr[tuple(fl)], 31.0, 30.0, 0.1,
               speed=lambda fl: (0.9, False) if tuple(fl) in slow else (1.5, True))
    assert r.float_layers == ["b"] and r.within_budget and r.evaluations == 1
    assert [s.float_layers for s in r.skipped_slow] == [["a"]] and r.skipped_slow[0].speedup == 0.9
    assert r.steps[-1].speedup == 1.5
    # every candidate too slow: all-int8 stays the answer, the budget is reported missed
    r = search(["a", "b"], lambda fl, only: psnr[tuple(fl)], 31.0, 30.0, 0.1, speed=lambda fl: (0.8, False))
    assert r.float_layers == [] and not r.within_budget and r.evaluations == 0 and len(r.skipped_slow) == 2


class _PReluTail(torch.nn.Module):
    """Conv -> PRelu (small slopes) -> Conv, one channel with a long negative tail before the PRelu."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act = torch.nn.PReLU(4, init=0.05)
        self.b = torch.nn.Conv2d(4, 12, 3, padding=1)
        with torch.no_grad():
            self.a.bias[1] = -40.0  # mostly negative: PRelu passes on 5 % of it

    def forward(self, x):
        return torch.nn.functional.pixel_shuffle(self.b(self.act(self.a(x))), 2)


def test_pre_activation_equalization_evens_the_conv_output_ranges(tmp_path):
    from edgesr.quant.equalize import channel_ranges, equalize

    torch.manual_seed(0)
    m = onnx.load(str(_export(_PReluTail(), SPEC2, tmp_path / "prelu.onnx")))
    x = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    conv_out = next(n.output[0] for n in m.graph.node if n.op_type == "Conv")
    spread = {}
    for pre in (False, True):
        eq, rep = equalize(m, x, symmetric=False, pre_activation=pre)
        assert rep.max_abs_change is not None and rep.max_abs_change < 1e-4  # exact either way
        r = channel_ranges(eq, [conv_out], x, "input", symmetric=False)[conv_out]
        spread[pre] = r.max() / r.min()
    assert spread[True] < 1.01 < 5 < spread[False]  # the quantized tensor (the PRelu's input) is what evens out

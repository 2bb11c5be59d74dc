"""Mobile formats: LiteRT (.tflite), ncnn (.param/.bin), Core ML (.mlpackage.zip).

Rewrites that unblock converters are proven exact (bit-identical); every export is checked
against PyTorch with the runtime of its format on this CPU (Core ML: statically, no runtime).
Each format's tests skip without its extra (pip install 'edgesr[tflite]' / '[ncnn]' / '[coreml]').
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from edgesr.errors import BackendUnavailable, ImageError
from edgesr.export.mobile import channel_repeat_as_concat, repeat_channels_concat
from edgesr.pipeline import BUNDLED_CHECKPOINT
from edgesr.registry import load_model
from edgesr.reparam import reparameterize

from helpers.models import FixedSizeTorch


def _has(*mods: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in mods)


needs_litert = pytest.mark.skipif(not _has("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
                                  reason="LiteRT not installed (pip install 'edgesr[tflite]')")
needs_ncnn = pytest.mark.skipif(not _has("pnnx", "ncnn"), reason="ncnn not installed (pip install 'edgesr[ncnn]')")
needs_coreml = pytest.mark.skipif(not _has("coremltools"), reason="coremltools not installed "
                                                                 "(pip install 'edgesr[coreml]')")


@pytest.fixture(scope="module")
def bundled():
    """The bundled training-form ECBSR-M4C16 x4 in deploy form (PReLU + repeat_interleave residual)."""
    lm = load_model(BUNDLED_CHECKPOINT)
    return reparameterize(lm.module).eval(), lm.spec


# --------------------------------------------------------------------------- rewrites (torch only)


def test_repeat_rewrite_is_bit_identical():
    x = torch.randn(2, 3, 5, 7)
    x[0, 0, 0, 0] = -0.0
    for r in (1, 4, 9, 16):
        a, b = torch.repeat_interleave(x, r, dim=1), repeat_channels_concat(x, r)
        assert torch.equal(a, b) and a.dtype == b.dtype
        assert torch.equal(torch.signbit(a), torch.signbit(b))  # -0.0 kept


def test_repeat_patch_is_scoped_and_selective():
    x = torch.randn(1, 2, 3, 3)
    orig = torch.repeat_interleave
    with channel_repeat_as_concat():
        assert torch.equal(x.repeat_interleave(4, dim=1), orig(x, 4, dim=1))
        assert torch.equal(torch.repeat_interleave(x, 2, dim=3), orig(x, 2, dim=3))  # other dims untouched
        t = torch.jit.trace(lambda v: torch.repeat_interleave(v, 4, dim=1), x)
        assert "repeat_interleave" not in str(t.graph) and "cat" in str(t.graph)
    assert torch.repeat_interleave is orig


# --------------------------------------------------------------------------- LiteRT


@needs_litert
def test_litert_pixelshuffle_and_prelu_are_exact_gpu_forms():
    """litert-torch rewrites PixelShuffle (rank-4 reshapes) and PReLU (relu(x) - a*relu(-x)):
    alone in a model, the .tflite output equals PyTorch bit for bit and nothing exceeds rank 4
    or uses GREATER/SELECT (which the GPU delegate rejects)."""
    import litert_torch

    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.export.litert import _nhwc, static_check
    from edgesr.export.mobile import quiet_native

    torch.manual_seed(0)
    prelu = nn.PReLU(16)
    with torch.no_grad():
        prelu.weight.copy_(torch.randn(16))
    for module, shape in ((nn.PixelShuffle(4), (1, 48, 9, 11)), (prelu, (1, 16, 9, 11))):
        x = torch.randn(*shape)
        with quiet_native():
            edge = litert_torch.convert(_nhwc(module.eval()), (x.permute(0, 2, 3, 1).contiguous(),))
        data = edge.model_content() if hasattr(edge, "model_content") else None
        if data is None:  # pragma: no cover - older litert-torch
            pytest.skip("litert-torch without model_content()")
        y = LiteRtRunner(data).run(x.numpy())
        assert np.array_equal(y, module(x).detach().numpy())
        sc = static_check(data)
        assert sc["max_tensor_rank"] <= 4 and sc["gpu_delegate"]["rank_ok"]
        assert not {"GREATER", "SELECT", "SELECT_V2"} & set(sc["ops"]), sc["ops"]


@needs_litert
def test_litert_fp32_int8_and_fixed_size(bundled, tmp_path):
    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.export.litert import convert_fp32_bytes, export_tflite

    module, spec = bundled
    fp32 = convert_fp32_bytes(module, spec, (32, 40))
    res = export_tflite(module, spec, tmp_path / "m.tflite", hw=(32, 40), fp32_bytes=fp32)
    assert res.max_abs_vs_torch < 1e-4 and res.io["input"]["shape"] == [1, 32, 40, 3]
    assert "BROADCAST_TO" not in res.static_check["ops"]  # the repeat residual became slices + concat
    art = res.artifacts("tflite_fp32")[0]
    assert art["layout"] == "NHWC" and art["shape_range"]["height"] == {"min": 32, "max": 32}
    runner = LiteRtRunner(tmp_path / "m.tflite")
    with pytest.raises(ImageError, match="fixed input size, 32x40"):
        runner.run(np.zeros((1, 3, 40, 32), np.float32))
    q = export_tflite(module, spec, tmp_path / "q.tflite", precision="int8", hw=(32, 40), psnr_budget=None)
    assert q.io["input"]["dtype"] == "int8" and q.io["output"]["dtype"] == "int8"
    assert "quantization" in q.io["input"] and q.psnr_vs_torch >= 30
    qi = q.io["input"]["quantization"]  # the whole [0, 1] range: an 8-bit pixel is q = pixel - 128
    assert qi["zero_point"] == -128 and qi["scale"] == pytest.approx(1 / 255, rel=1e-6)
    x = np.random.default_rng(0).random((2, 3, 32, 40), dtype=np.float32)  # batch runs item by item
    assert LiteRtRunner(tmp_path / "q.tflite").run(x).shape == (2, 3, 128, 160)


def test_missing_extra_is_one_actionable_line(monkeypatch):
    from edgesr.export import coreml, litert, ncnn

    for mod, extra in ((litert, "tflite"), (ncnn, "ncnn"), (coreml, "coreml")):
        for name in ("litert_torch", "pnnx", "coremltools"):
            monkeypatch.setitem(sys.modules, name, None)
        with pytest.raises(BackendUnavailable, match=rf"pip install 'edgesr\[{extra}\]'"):
            mod._require()


# --------------------------------------------------------------------------- ncnn


@needs_ncnn
def test_ncnn_fp32_fp16_int8(bundled, tmp_path):
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.export.ncnn import export_ncnn, parse_param, walk_bin

    module, spec = bundled
    res = export_ncnn(module, spec, tmp_path / "m.param")
    assert res.max_abs_vs_torch < 1e-4 and res.input_hw is None
    assert "torch.repeat_interleave" not in (tmp_path / "m.param").read_text()
    runner = NcnnRunner(tmp_path / "m.param")
    x = np.random.default_rng(1).random((2, 3, 13, 29), dtype=np.float32)  # any size, batch of 2
    ref = module(torch.from_numpy(x)).detach().numpy()
    assert np.abs(runner.run(x) - ref).max() < 1e-4
    h = export_ncnn(module, spec, tmp_path / "h.param", precision="fp16")
    assert (tmp_path / "h.bin").stat().st_size < 0.6 * (tmp_path / "m.bin").stat().st_size  # fp16 weights
    assert h.psnr_vs_torch >= 40
    q = export_ncnn(module, spec, tmp_path / "q.param", precision="int8")  # with the held-out verdict
    layers = parse_param((tmp_path / "q.param").read_text())[1]
    convs = [la for la in layers if la.type == "Convolution"]
    assert convs and all(la.params.get(8) == "2" for la in convs)
    walk_bin(layers, (tmp_path / "q.bin").read_bytes())  # every byte accounted for
    assert q.details["quantized_layers"] == len(convs) and q.psnr_vs_torch >= 30
    v = q.details["verdict"]
    assert v["within_budget"] and v["drop"] <= 0.1 and v["eval_set"].startswith("sample-held-out")
    cen = q.details["centring"]  # the [0, 1] picture entering conv 0 is shifted by 0.5, exactly
    assert cen["inputs"][0]["how"] == "sub" and abs(cen["inputs"][0]["shift"] - 0.5) < 0.01
    assert cen["max_abs_change"] < 1e-4 and "Padding" in q.details["layers"]


# --------------------------------------------------------------------------- Core ML


@needs_coreml
def test_coreml_package_is_converted_not_run(bundled, tmp_path):
    from edgesr.export.coreml import export_coreml

    module, spec = bundled
    res = export_coreml(module, spec, tmp_path / "m.mlpackage.zip", precision="fp16", hw=(32, 32))
    assert res.status.startswith("converted, not run here") and res.max_abs_vs_torch is None
    sc = res.static_check
    assert sc["ops"].get("conv") == 6 and sc["ops"].get("pixel_shuffle") == 1 and sc["max_tensor_rank"] <= 4
    with zipfile.ZipFile(tmp_path / "m.mlpackage.zip") as z:
        assert any(n.endswith("Manifest.json") for n in z.namelist())
    out = subprocess.run([sys.executable, "-m", "edgesr", "parity", str(BUNDLED_CHECKPOINT),
                          str(tmp_path / "m.mlpackage.zip")], capture_output=True, text=True)
    assert out.returncode != 0 and "no Core ML runtime on this machine" in out.stderr


# --------------------------------------------------------------------------- convert + Set5


@needs_litert
@needs_ncnn
@pytest.mark.slow
def test_convert_writes_mobile_artifacts(tmp_path):
    from edgesr.bundle import read_manifest

    out = tmp_path / "b"
    r = subprocess.run([sys.executable, "-m", "edgesr", "convert", "-o", str(out), "--tflite", "--ncnn",
                        "--mobile-size", "32x32", "--no-bench", "--no-ort-format", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_manifest(out)  # schema + sha256 of every file
    roles = {a.role for a in m.artifacts}
    assert {"tflite_fp32", "ncnn_fp32", "ncnn_fp32_weights", "ncnn_fp16"} <= roles
    cands = {c["candidate"] for c in m.data["parity"]["comparisons"]}
    assert {"litert:fp32", "ncnn:fp32", "ncnn:fp16"} <= cands
    assert "LiteRT (.tflite)" in (out / "report.md").read_text()
    assert json.loads(r.stdout)["ok"] is True


@needs_litert
@needs_ncnn
@pytest.mark.shared
def test_set5_fp32_parity_etds_t(ckpt_dir, set5_dir):
    """Acceptance (one model here; all five in benchmarks/mobile.py): LiteRT fp32 (one file per
    LR size, the format is fixed-size) and ncnn fp32 within 1e-4 of PyTorch on every Set5 x4 LR image."""
    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.export.litert import convert_fp32_bytes
    from edgesr.export.ncnn import convert_bytes
    from edgesr.imaging import read_image

    lm = load_model(ckpt_dir / "ETDS" / "ETDS_M5C16_x4.pth")
    module, spec = lm.module.eval(), lm.spec
    nc = NcnnRunner(*convert_bytes(module, spec))
    files = sorted((set5_dir / "LR_bicubic" / "X4").glob("*.png"))
    assert len(files) == 5
    for f in files:
        x = np.ascontiguousarray(read_image(f).rgb.transpose(2, 0, 1)[None], dtype=np.float32)
        ref = module(torch.from_numpy(x)).detach().numpy()
        lt = LiteRtRunner(convert_fp32_bytes(module, spec, x.shape[2:]))
        assert np.abs(lt.run(x) - ref).max() <= 1e-4, f.name
        assert np.abs(nc.run(x) - ref).max() <= 1e-4, f.name


# --------------------------------------------------------------------------- rewrites for fixed sizes (torch only)


def test_adaptive_pool_rewrite_is_bit_identical():
    """Fixed-size converters trace F.adaptive_max_pool2d as plain pools over slices: same values."""
    from torch.nn import functional as F

    from edgesr.export.mobile import adaptive_max_pool_static, adaptive_pool_as_slices

    orig = F.adaptive_max_pool2d
    for h, w in ((70, 70), (57, 87), (64, 64), (9, 17)):
        x = torch.randn(2, 3, h, w)
        for out in ((h // 8, w // 8), (h // 2, w // 2), (3, 5), 1):
            assert torch.equal(adaptive_max_pool_static(x, out), orig(x, out)), (h, w, out)
    with adaptive_pool_as_slices():
        t = torch.jit.trace(lambda v: F.adaptive_max_pool2d(v, (5, 7)), torch.randn(1, 2, 35, 50))
        assert "adaptive_max_pool2d" not in str(t.graph) and "max_pool2d" in str(t.graph)
    assert F.adaptive_max_pool2d is orig


# --------------------------------------------------------------------------- INT8 preparation (torch only)


def test_int8_preparation_is_exact_then_puts_weights_on_the_grid(bundled):
    """Equalization leaves the function unchanged; every conv then holds codes x (max|w| / 127)
    with +-127 in each row, so a quantizer recomputing that scale rounds to exactly these codes."""
    from edgesr.export.mobile import calibration_inputs
    from edgesr.export.mobile_int8 import Int8Options, conv_modules, grid_scale, prepare_int8

    module, spec = bundled
    cal = calibration_inputs(spec, None)[:8]
    eq, rep = prepare_int8(module, cal, Int8Options(gptq=False, bias_correction=False))
    assert len(rep.equalized) == 5 and rep.equalize_max_abs_change < 1e-4  # 6 convs, 5 PReLU chains
    x = torch.from_numpy(cal[0])
    assert (eq(x) - module(x)).abs().max() < 1e-4
    prepared, rep = prepare_int8(module, cal)
    assert rep.gptq_layers and rep.bias_corrected == rep.gptq_layers
    for name, conv in conv_modules(prepared).items():
        w = conv.weight.detach().double().numpy().reshape(conv.weight.shape[0], -1)
        codes = w / grid_scale(w)[:, None]
        assert np.abs(codes - np.round(codes)).max() < 1e-4, name
        assert (np.abs(np.round(codes)).max(axis=1) == 127).all(), name
    for name, p in module.named_parameters():  # the caller's module is untouched
        assert torch.equal(p, dict(bundled[0].named_parameters())[name])


def test_split_prelu_is_exact_and_leaves_only_relu_between_the_convs():
    """Conv -> PReLU -> Conv becomes Conv -> ReLU -> Conv on doubled channels, the same function
    (per-channel slopes of both signs and zero, a shared slope); the negative half of each
    channel spans |a| times the pre-activation's negative side (the PReLU output's range)."""
    from edgesr.export.mobile_int8 import equalizable_pairs, split_prelu

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.PReLU(6), nn.Conv2d(6, 5, 3, padding=1), nn.PReLU(),
                      nn.Conv2d(5, 4, 1)).eval()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.25, -0.5, 0.0, 1.0, 2.0, -1.5]))
        m[3].weight.fill_(-0.3)
    x = torch.randn(2, 3, 9, 11)
    ref = m(x)
    pairs, _ = equalizable_pairs(m, x)
    assert [(a, act, b) for a, act, b in pairs] == [("0", "prelu:1", "2"), ("2", "prelu:3", "4")]
    assert split_prelu(m, pairs) == ["1", "3"]
    assert isinstance(m[1], nn.ReLU) and isinstance(m[3], nn.ReLU)
    assert (m[0].out_channels, m[2].in_channels, m[2].out_channels, m[4].in_channels) == (12, 12, 10, 10)
    assert (m(x) - ref).abs().max() < 1e-5
    neg = torch.relu(m[0](x)[:, 6:])  # the second half: relu(-|a| z)
    z = nn.functional.conv2d(x, m[0].weight[:6], m[0].bias[:6], padding=1)
    assert torch.allclose(neg, torch.relu(-z) * torch.tensor([0.25, 0.5, 0.0, 1.0, 2.0, 1.5]).view(1, -1, 1, 1),
                          atol=1e-6)


@needs_litert
def test_litert_int8_keeps_the_named_ops_float(bundled):
    """float_ops reach the quantizer: the named convolutions run float in the INT8 file (the op
    scope ai-edge-quantizer matches ends in ';'; a pattern without it kept nothing float)."""
    from edgesr.backends.litert_runner import interpreter
    from edgesr.export.litert import LiteRtInt8, conv_ops

    module, spec = bundled
    recipe = LiteRtInt8(module, spec)
    assert recipe.prep.prelu_split and recipe.prep.prelu_split_max_abs_change < 1e-4
    convs = conv_ops(recipe.fp32((24, 24)))
    for float_ops, want in (((), "int8"), (convs[:2], "mixed")):
        it = interpreter(recipe.build((24, 24), float_ops))
        dtypes = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
        out = [dtypes[o["outputs"][0]] for o in it._get_ops_details() if o["op_name"] == "CONV_2D"]
        assert len(out) == len(convs) == 6
        assert out == ([np.int8] * 6 if want == "int8" else [np.float32] * 2 + [np.int8] * 4)
        if want == "int8":  # split PReLU: no MUL / SUB left, every ReLU fused into its convolution
            ops = {o["op_name"] for o in it._get_ops_details()}
            assert not ops & {"MUL", "SUB", "PRELU", "RELU"}


@needs_litert
@pytest.mark.slow
def test_litert_falls_back_past_int8_when_int8_misses_the_budget(tmp_path):
    """An attention-shaped model whose a8w8 file loses >1 dB on the held-out photos: `convert
    --tflite --int8`'s export tries the next scheme, dynamic int8 (activations quantized at run
    time, finer than one scale per tensor: it holds), writes it under a name that says so, and the
    file, the verdict and the manifest entry all say what it is. The last scheme, a16w8, holds
    too, and its file says int16 activations."""
    from edgesr.backends.litert_runner import LiteRtRunner, interpreter
    from edgesr.backends.mobile import file_backend, litert_precision
    from edgesr.export.litert import INTEGER_SCHEMES, convert_fp32_bytes, export_tflite, time_vs_fp32
    from edgesr.spec import Spec

    from helpers.models import TinyAttention

    spec = Spec(arch="tiny-attention", scale=4)
    res = export_tflite(TinyAttention().eval(), spec, tmp_path / "model_int8.tflite", precision="int8", hw=(48, 48))
    v = res.details["verdict"]
    a8, dyn = v["schemes"]
    assert (a8["scheme"], dyn["scheme"]) == ("a8w8", "dynamic")
    assert a8["drop"] > 1.0 and not a8["within_budget"]  # measured, not assumed: int8 cannot carry it
    assert v["scheme"] == "dynamic" and v["within_budget"] and v["drop"] <= 0.1 and v["integer"] is False
    assert res.precision == "int8-dynamic" and [p.name for p in res.files] == ["model_int8-dynamic.tflite"]
    assert not (tmp_path / "model_int8.tflite").exists()
    assert res.io["input"]["dtype"] == res.io["output"]["dtype"] == "float32"
    art = res.artifacts("tflite_int8-dynamic")[0]
    assert art["precision"] == "int8-dynamic" and art["quantization"]["name"] == "dynamic"
    assert art["quantization"]["activations"].startswith("int8 at run time")
    f = tmp_path / "model_int8-dynamic.tflite"  # bench / upscale run it as the quantized LiteRT file
    assert file_backend(f) == "litert-int8" and litert_precision(LiteRtRunner(f)) == "int8-dynamic"

    # `convert --tflite-integer`: integer files only, so the verdict passes over dynamic to a16w8
    (tmp_path / "integer").mkdir()
    res16 = export_tflite(TinyAttention().eval(), spec, tmp_path / "integer" / "model_int8.tflite", precision="int8",
                          hw=(48, 48), schemes=INTEGER_SCHEMES)
    v16 = res16.details["verdict"]
    assert [t["scheme"] for t in v16["schemes"]] == ["a8w8", "a16w8"]
    assert v16["scheme"] == "a16w8" and v16["within_budget"] and v16["activations"] == "int16" and v16["integer"]
    f16 = tmp_path / "integer" / "model_int16x8.tflite"
    assert res16.precision == "int16x8" and res16.files == [f16] and f16.is_file()
    assert not (tmp_path / "integer" / "model_int8.tflite").exists()
    it = interpreter(f16)
    dtypes = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
    convs = [o for o in it._get_ops_details() if o["op_name"] == "CONV_2D"]
    assert convs and all(dtypes[o["outputs"][0]] == np.int16 and dtypes[o["inputs"][1]] == np.int8 for o in convs)
    assert file_backend(f16) == "litert-int8" and litert_precision(LiteRtRunner(f16)) == "int16x8"
    t = time_vs_fp32(convert_fp32_bytes(TinyAttention().eval(), spec, (48, 48)), f16, 3, runs=2)
    assert t["quantized_ms"] > 0 and t["fp32_ms"] > 0 and t["faster_than_fp32"] == (t["ratio"] < 1)


@needs_litert
def test_litert_dynamic_scheme_is_labelled_what_it_is(bundled, tmp_path):
    """The dynamic scheme (int8 weights, activations quantized at run time) writes a float-I/O file:
    its verdict, scheme record, file name and the runner's label never call it integer int8, and a
    convolution the verdict keeps float keeps float weights."""
    from edgesr.backends.litert_runner import LiteRtRunner, interpreter
    from edgesr.backends.mobile import litert_precision
    from edgesr.export.litert import LiteRtInt8, conv_ops

    model, spec = bundled
    recipe = LiteRtInt8(model, spec)
    float_ops, v = recipe.verdict(0.1, schemes=("dynamic",))
    assert v["scheme"] == "dynamic" and v["precision"] == "int8-dynamic" and v["integer"] is False
    assert v["activations"].startswith("int8 at run time") and v["within_budget"]
    first = conv_ops(recipe.fp32((48, 48)))[0]
    f = tmp_path / "m.tflite"
    f.write_bytes(recipe.build((48, 48), [first], scheme="dynamic"))
    r = LiteRtRunner(f)
    assert r.io()["input"]["dtype"] == "float32" and litert_precision(r) == "int8-dynamic"
    it = interpreter(f)
    dtypes = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
    convs = [o for o in it._get_ops_details() if o["op_name"] == "CONV_2D"]
    weight_dtypes = [dtypes[o["inputs"][1]] for o in convs]
    assert np.int8 in weight_dtypes and np.float32 in weight_dtypes  # the float convolution stayed float


def test_mobile_int8_problems_fail_the_convert_like_onnx_int8():
    from edgesr.export.mobile_convert import mobile_int8_problems
    from edgesr.pipeline import int8_verdict

    over = {"eval_set": "sample-held-out (a.png, b.png)", "psnr_budget": 0.1, "within_budget": False,
            "drop": 0.5321, "schemes": [{"scheme": "a8w8", "drop": 1.02}, {"scheme": "a16w8", "drop": 0.5321}]}
    report = {"tflite": {"fp32": {"files": ["model_fp32.tflite"], "details": {}},
                         "int16x8": {"files": ["model_int16x8.tflite"], "details": {"verdict": over}}},
              "ncnn": {"int8": {"files": ["m.param", "m.bin"], "details": {"verdict": over | {"within_budget": True}}}}}
    lines = mobile_int8_problems(report)
    assert len(lines) == 1 and "LiteRT int16x8 (model_int16x8.tflite)" in lines[0]
    assert "tried a8w8 1.020 dB, a16w8 0.532 dB" in lines[0] and "--psnr-budget 0.54" in lines[0]
    assert int8_verdict(report)["problems"] == lines  # the convert's exit status reads these


@needs_ncnn
def test_ncnn_float_layers_follow_their_weights_to_other_sizes():
    """A fixed-size model's ncnn conversions at other sizes name their layers differently: the
    float layers the verdict chose at its size must be the same convolutions at every size (by
    name they were other layers or none: SAFMN++ then shipped all-INT8 at two Set5 sizes)."""
    from edgesr.export.ncnn_format import parse_param
    from edgesr.export.ncnn_int8 import NcnnInt8, conv_layers
    from edgesr.spec import Spec

    from helpers.models import PooledGate

    recipe = NcnnInt8(PooledGate().eval(), Spec(arch="pooled-gate", scale=4), fixed=True)
    at48, at70 = (conv_layers(recipe.ready(hw)[0]) for hw in ((48, 48), (70, 70)))
    assert len(at48) == len(at70) == 3 and at48 != at70  # the reason
    recipe.names_hw = (48, 48)  # as the verdict sets it
    for hw, names in (((48, 48), at48), ((70, 70), at70)):
        param, _, info = recipe.build(hw, [at48[0], at48[2]])
        kept = [la.name for la in parse_param(param)[1] if la.type == "Convolution" and not int(la.get(8))]
        assert kept == info["float_layers"] == [names[0], names[2]]


@needs_ncnn
def test_ncnn_float_layers_compute_with_their_exact_weights():
    """A convolution the verdict keeps float must not keep the int8-grid weights the preparation
    baked for quantizing it (SAFMN++'s costliest layer lost 0.054 dB held-out to that rounding
    alone): with every convolution float the ncnn model is the original function again."""
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.export.ncnn_int8 import NcnnInt8, NcnnModel, conv_layers
    from edgesr.spec import Spec

    from helpers.models import PooledGate

    model = PooledGate().eval()
    recipe = NcnnInt8(model, Spec(arch="pooled-gate", scale=4), fixed=True)
    hw = (48, 48)
    recipe.names_hw = hw
    every = conv_layers(recipe.ready(hw)[0])
    param, weights, info = recipe.build(hw, every)
    assert info["quantized_layers"] == 0 and info["float_layers_exact_weights"] == sorted(every)
    x = recipe.calibration((48, 48))[1]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(NcnnRunner(param, weights).run(x) - want).max() < 1e-4
    grid = NcnnModel(*recipe.ready(hw)[:2])  # the prepared weights are not the function (the reason)
    assert np.abs(NcnnRunner(grid.text(), grid.bin()).run(x) - want).max() > 1e-4
    one = NcnnModel(*recipe.build(hw, [every[1]])[:2])  # one float layer: exact, the others INT8
    w_exact = recipe.unrounded["mix"][0].reshape(8, -1)
    assert np.allclose(one.conv_arrays(one.index(every[1]))[0], w_exact, atol=1e-7)
    assert [int(la.get(8)) for la in one.layers if la.type == "Convolution"] == [2, 0, 2]


def test_fixed_size_calibration_crops_the_frame_size_not_mirrored_patches():
    """A fixed-size model is calibrated on crops of its own size: SAFMN++ pools to 1/8 of its
    input, and 64-px patches mirrored to 128x128 made its ncnn INT8 lose 2.97 dB held-out (0.54
    with crops of the frame size)."""
    from edgesr.export.mobile import calibration_inputs, deploy_size_crops
    from edgesr.spec import Spec

    spec = Spec(arch="x", scale=4)
    crops = deploy_size_crops(spec, (100, 90), num=6)
    assert len(crops) == 6 and all(c.shape == (1, 3, 100, 90) and c.dtype == np.float32 for c in crops)
    assert all(0 <= c.min() and c.max() <= 1 for c in crops)
    mirrored = calibration_inputs(spec, (100, 90), num=6)[0]
    assert np.array_equal(mirrored[..., 64:80, :], mirrored[..., 63:47:-1, :])  # rows 64+ mirror rows 63-
    assert not any(np.array_equal(c[..., 64:80, :], c[..., 63:47:-1, :]) for c in crops)  # real content there
    assert np.array_equal(crops[0], deploy_size_crops(spec, (100, 90), num=6)[0])  # seeded


def test_float_layer_search_stops_at_the_budget():
    from edgesr.export.mobile_int8 import float_layer_search

    cost = {"a": 0.05, "b": 0.3, "c": 0.1}
    drop_of = lambda skip: sum(v for k, v in cost.items() if k not in skip)  # noqa: E731
    skip, drop, steps = float_layer_search(list(cost), drop_of, 0.1)
    assert skip == ["b", "c"] and drop == pytest.approx(0.05) and len(steps) == 3
    assert list(steps[0]["only_int8_drop"]) == ["b", "c", "a"]  # ranked by the cost of each layer alone
    assert float_layer_search(list(cost), drop_of, 0.5) == ([], pytest.approx(0.45), [{"float_layers": [],
                                                                                       "drop": 0.45}])
    assert float_layer_search(list(cost), drop_of, None)[0] == []  # no budget: no search
    table = {"": 0.5, "ac": 0.4, "bc": 0.3, "ab": 0.35, "b": 0.2, "abc": 0.0}  # float layers -> drop
    worse = lambda skip: table["".join(sorted(skip))]  # noqa: E731
    assert float_layer_search(["a", "b", "c"], worse, 0.1)[:2] == (["b"], 0.2)  # [b, c] is worse: never kept
    calls = []
    floor = lambda skip: calls.append(skip) or 0.3 + drop_of(skip)  # noqa: E731 - non-conv ops cost 0.3 dB
    skip, drop, steps = float_layer_search(list(cost), floor, 0.1)  # unreachable: 2 evaluations, no ranking
    assert (skip, drop, len(calls)) == (["a", "b", "c"], pytest.approx(0.3), 2) and "no search" in steps[1]["note"]


# --------------------------------------------------------------------------- fixed-size runners (no converter)


def test_fixed_box_runner_tiles_with_boxes_of_exactly_its_size(bundled):
    from edgesr.backends.mobile import FixedBoxRunner, tile_starts

    for n, box, ov in ((100, 40, 6), (40, 40, 6), (41, 40, 6), (97, 33, 8)):
        t = tile_starts(n, box, ov)
        assert t[0][1] == 0 and t[-1][2] == n and t[-1][0] == n - box
        for (s, c0, c1), nxt in zip(t, t[1:] + [None]):
            assert 0 <= s and s + box <= n and c0 < c1
            assert (c0 == 0 or c0 - s >= ov) and (c1 == n or s + box - c1 >= ov)
            if nxt:
                assert nxt[1] == c1
    module, spec = bundled
    x = np.random.default_rng(0).random((1, 3, 45, 61), dtype=np.float32)
    inner = FixedSizeTorch(module, (24, 28))
    y = FixedBoxRunner(inner, spec.scale, spec.receptive_field).run(x)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert inner.calls > 4 and np.abs(y - ref).max() < 1e-5  # tiled == untiled
    with pytest.raises(ImageError, match="fixed input size, 24x28"):
        FixedBoxRunner(inner, spec.scale, spec.receptive_field).run(x[:, :, :20])


def test_fixed_box_upscale_plans_memory_for_one_box_not_the_whole_image(bundled, tmp_path):
    """A fixed-size runner runs a whole image box by box, so upscale's memory plan counts its
    float32 input and output, not a whole-image activation estimate: a 400x400 image under a
    budget 200 MiB above what the process holds (the generic estimate asked ~540 MiB above it)."""
    from edgesr.backends.mobile import FixedBoxRunner
    from edgesr.imaging import read_image, write_image
    from edgesr.upscale import current_rss, upscale_file

    module, spec = bundled
    rgb = np.random.default_rng(1).random((400, 400, 3)).astype(np.float32)
    write_image(tmp_path / "in.png", rgb)
    runner = FixedBoxRunner(FixedSizeTorch(module, (96, 96)), spec.scale, spec.receptive_field)
    r = upscale_file(runner, spec, tmp_path / "in.png", tmp_path / "out.png", tile=0,
                     max_memory=current_rss() + 200 * 2 ** 20)
    assert r.tiles == 1 and r.output_size == [1600, 1600]
    x = np.ascontiguousarray(read_image(tmp_path / "in.png").rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    with torch.no_grad():
        ref = np.clip(module(torch.from_numpy(x)).numpy()[0].transpose(1, 2, 0), 0, 1)
    assert np.abs(read_image(tmp_path / "out.png").rgb - ref).max() <= 1 / 255 + 1e-6


@needs_ncnn
def test_ncnn_runner_feeds_an_owned_input_and_enforces_a_declared_size():
    """An in-place first layer (BinaryOp on the input blob) used to segfault: ncnn dereferenced the
    reference count of a Mat wrapping numpy memory. A declared Input shape is a fixed-size model."""
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.export.ncnn import declare_input_shape, input_shape

    param = ("7767517\n2 2\nInput in0 0 1 in0\nBinaryOp sub 1 1 in0 out0 0=1 1=1 2=0.25\n")
    x = np.random.default_rng(0).random((2, 3, 5, 7), dtype=np.float32)
    keep = x.copy()
    assert np.allclose(NcnnRunner(param, b"").run(x), x - 0.25) and np.array_equal(x, keep)
    fixed = declare_input_shape(param, (5, 7), 3)
    assert input_shape(fixed) == (5, 7) and input_shape(param) is None
    r = NcnnRunner(fixed, b"")
    assert r.run(x).shape == x.shape
    with pytest.raises(ImageError, match="fixed input size, 5x7"):
        r.run(x[:, :, :4])


# --------------------------------------------------------------------------- INT8: what the runtimes see


@needs_litert
def test_litert_int8_file_holds_the_codes_edgesr_chose(bundled):
    """ai-edge-quantizer recomputes max|w| / 127 from the prepared weights and rounds them to
    exactly edgesr's GPTQ codes (read back from the INT8 file)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgesr.export.litert import LiteRtInt8
    from edgesr.export.mobile_int8 import conv_modules, grid_scale

    module, spec = bundled
    recipe = LiteRtInt8(module, spec)
    it = Interpreter(model_content=recipe.build((24, 24)))
    it.allocate_tensors()
    convs = [o for o in it._get_ops_details() if o["op_name"] == "CONV_2D"]
    want = [c.weight.detach().double().numpy().reshape(c.weight.shape[0], -1)
            for c in conv_modules(recipe.prepared).values()]
    assert len(convs) == len(want) == 6
    for op, w in zip(convs, want):
        got = it.get_tensor(op["inputs"][1])  # OHWI int8
        assert got.dtype == np.int8
        assert np.array_equal(got.transpose(0, 3, 1, 2).reshape(got.shape[0], -1),
                              np.round(w / grid_scale(w)[:, None]).astype(np.int64))


@needs_litert
@needs_ncnn
@pytest.mark.slow
def test_mobile_artifacts_in_bench_and_upscale(bundled, tmp_path, capsys):
    """bench / upscale take a .tflite (fixed-size: tiled with boxes of its size, == untiled) and a
    .param; Core ML says there is no runtime here."""
    from edgesr.cli import main
    from edgesr.export.litert import export_tflite
    from edgesr.export.ncnn import export_ncnn
    from edgesr.imaging import read_image, write_image

    module, spec = bundled
    export_tflite(module, spec, tmp_path / "m.tflite", hw=(40, 44))  # no manifest beside it: overlap 16
    export_ncnn(module, spec, tmp_path / "m.param")
    rgb = np.random.default_rng(0).random((50, 70, 3)).astype(np.float32)
    write_image(tmp_path / "in.png", rgb)
    x = np.ascontiguousarray(read_image(tmp_path / "in.png").rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    with torch.no_grad():
        ref = np.clip(module(torch.from_numpy(x)).numpy()[0].transpose(1, 2, 0), 0, 1)
    for model in ("m.tflite", "m.param"):
        assert main(["upscale", str(tmp_path / model), str(tmp_path / "in.png"), str(tmp_path / f"{model}.png"),
                     "--scale", "4"]) == 0, capsys.readouterr().err[-1500:]
        assert np.abs(read_image(tmp_path / f"{model}.png").rgb - ref).max() <= 1 / 255 + 1e-6, model
    ts = tmp_path / "set"  # eval names the runtime that ran (it said "torch" for a .param)
    (ts / "LR_bicubic" / "X4").mkdir(parents=True)
    (ts / "HR").mkdir()
    write_image(ts / "LR_bicubic" / "X4" / "inx4.png", rgb)
    write_image(ts / "HR" / "in.png", np.repeat(np.repeat(rgb, 4, 0), 4, 1))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m.param"), "--testset", str(ts), "--scale", "4", "--allow-below-bicubic",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "ncnn"
    assert main(["bench", str(tmp_path / "m.tflite"), "--scale", "4", "--size", "40x44", "48x56", "--min-runs", "2",
                 "--min-seconds", "0", "--warmup", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [(x["backend"], x["size"]) for x in rows] == [("litert", "40x44"), ("litert", "48x56")]
    assert any("tiled with 40x44 boxes" in n for n in rows[1].get("notes", []))
    assert main(["bench", str(BUNDLED_CHECKPOINT), "-b", "coreml", "--size", "24x28"]) != 0
    assert "no Core ML runtime on this machine" in capsys.readouterr().err


@needs_ncnn
@pytest.mark.shared
@pytest.mark.slow
def test_ncnn_int8_keeps_set5_within_015_db_etds_t(ckpt_dir, set5_dir):
    """Acceptance (ETDS-T here, every model and LiteRT in benchmarks/mobile.py): ncnn all-INT8
    (no float layer) loses at most 0.15 dB Set5 x4 Y-PSNR against ncnn fp32. Measured 0.044."""
    from edgesr.backends.ncnn_runner import NcnnRunner
    from edgesr.export.ncnn_int8 import NcnnInt8
    from edgesr.metrics import psnr_y
    from edgesr.quant.calibration import from_model_output, testset_eval_set, to_model_input

    lm = load_model(ckpt_dir / "ETDS" / "ETDS_M5C16_x4.pth")
    recipe = NcnnInt8(lm.module.eval(), lm.spec)
    fp32, int8 = NcnnRunner(*recipe.reference()), NcnnRunner(*recipe.build()[:2])
    drops = []
    for p in testset_eval_set(set5_dir, 4).pairs:
        x = to_model_input(p.lr, lm.spec)[None]
        a, b = (psnr_y(np.clip(from_model_output(r.run(x)[0], lm.spec), 0, 1), p.hr, 4) for r in (fp32, int8))
        drops.append(a - b)
    assert len(drops) == 5 and float(np.mean(drops)) <= 0.15, drops


@needs_litert
@pytest.mark.shared
@pytest.mark.slow
def test_litert_int8_keeps_set5_within_015_db_ecbsr(ckpt_dir, set5_dir):
    """Acceptance for the model LiteRT used to fail (0.71 dB before the PReLU split): ECBSR-M4C16
    all-INT8 .tflite (one per Set5 LR size, no float layer) loses at most 0.15 dB Set5 x4 Y-PSNR
    against the fp32 .tflite at the same size."""
    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.export.litert import LiteRtInt8, convert_fp32_bytes
    from edgesr.metrics import psnr_y
    from edgesr.quant.calibration import from_model_output, testset_eval_set, to_model_input

    lm = load_model(ckpt_dir / "ECBSR" / "ECBSR_M4C16_x4.pth")
    module = lm.module.eval()
    recipe = LiteRtInt8(module, lm.spec)
    assert len(recipe.prep.prelu_split) == 5
    drops = []
    for p in testset_eval_set(set5_dir, 4).pairs:
        x = to_model_input(p.lr, lm.spec)[None]
        hw = x.shape[2:]
        a, b = (psnr_y(np.clip(from_model_output(LiteRtRunner(m).run(x)[0], lm.spec), 0, 1), p.hr, 4)
                for m in (convert_fp32_bytes(module, lm.spec, hw), recipe.build(hw)))
        drops.append(a - b)
    assert len(drops) == 5 and float(np.mean(drops)) <= 0.15, drops

"""The picture is quantized exactly: the conv that reads the 8-bit LR image gets its 256 grey
levels as 256 distinct int8/uint8 codes, and dequantize(quantize(x)) == x (edgesr/quant/center.py).
Each case also runs the old calibrated scheme (exact_input=False) and requires it to fail."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from edgesr.quant import QuantConfig, check_trt_qdq, held_out_eval_set, quantize_model
from edgesr.quant.calibration import input_levels
from edgesr.registry import build_variant
from edgesr.reparam import reparameterize
from edgesr.spec import Spec

FAST = dict(num_patches=8, patch_size=24, batch_size=4, progress=False, threads=1, psnr_budget=None,
            gptq=False, bias_correction=False)


@pytest.fixture(scope="module")
def etds(tmp_path_factory):
    from edgesr.export.onnx import export_onnx

    torch.manual_seed(0)
    v = build_variant("etds-t-x2", form="training")
    path = tmp_path_factory.mktemp("exact") / "etds.onnx"
    export_onnx(reparameterize(v.module).eval(), v.spec, path, simplify=False)
    return path, v.spec


# what may stand between the picture and its last QuantizeLinear: the centring Sub/Pad, a scalar Mul
# (x * 255) and, in ORT's own placement (cpu), that Mul's own Q/DQ
_WALK = ("Sub", "Pad", "Mul", "QuantizeLinear", "DequantizeLinear")


def _picture_qdq(model):
    """(Q, DQ) of the first conv's quantized input: the QuantizeLinear fed (through the centring
    Sub/Pad and a scalar Mul, if any) by the graph input."""
    graph_in = model.graph.input[0].name
    producer = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producer.get(conv.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer[dq.input[0]]
        src, seen = q.input[0], 0
        while src != graph_in and src in producer and producer[src].op_type in _WALK and seen < 6:
            src, seen = producer[src].input[0], seen + 1
        if src == graph_in:
            return q, dq
    raise AssertionError("no quantized conv input fed by the picture")


def _studio_range_photo(tmp_path) -> list:
    """A sample photograph mapped to video levels 16..235 (what decoded video frames hold)."""
    from PIL import Image

    from edgesr.quant.calibration import read_rgb_u8, resolve_images

    img = read_rgb_u8(resolve_images(None)[0]).astype(np.float32)
    out = tmp_path / "studio.png"
    Image.fromarray(np.round(16 + img * (219 / 255)).astype(np.uint8)).save(out)
    return [out]


def _all_levels(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """A 1x3x16x16 picture holding every 8-bit level once per channel, in the model's input convention."""
    k = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([k, k[::-1], k.T], axis=-1)
    from edgesr.quant.calibration import to_model_input

    return rgb, to_model_input(rgb, spec)[None]


def _codes_and_roundtrip(qpath, spec):
    import onnxruntime as ort

    m = onnx.load(str(qpath))
    q, dq = _picture_qdq(m)
    for t in (q.input[0], q.output[0], dq.output[0]):
        m.graph.output.append(helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep Q/DQ as they are
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rgb, x = _all_levels(spec)
    names = [q.input[0], q.output[0], dq.output[0]]
    pre, codes, back = sess.run(names, {m.graph.input[0].name: x})
    pad = (pre.shape[-1] - x.shape[-1]) // 2  # the centring Pad, if any: compare the picture's pixels only
    crop = (slice(None), slice(None), slice(pad, pad + x.shape[2]), slice(pad, pad + x.shape[3]))
    return rgb.transpose(2, 0, 1)[None].astype(int), codes[crop].astype(int), back[crop], pre[crop]


@pytest.mark.parametrize("profile, offset", [("trt", 128), ("openvino", 0), ("cpu", 0)])
def test_picture_codes_are_the_pixels(etds, tmp_path, profile, offset):
    path, spec = etds
    evalset = held_out_eval_set(2, max_side=48)
    studio = _studio_range_photo(tmp_path)  # calibration without black or white: the scale must not come from it
    res = quantize_model(path, tmp_path / "exact.onnx", spec, QuantConfig(profile=profile, **FAST),
                         calibration=studio, eval_set=evalset)
    assert res.exact_input is not None and res.exact_input["exact"] and not res.exact_input["not_exact"]
    pixels, codes, back, pre = _codes_and_roundtrip(res.path, spec)
    np.testing.assert_array_equal(codes, pixels - offset)  # codes ARE the pixels: 256 distinct levels
    assert np.abs(back - pre).max() < 1e-6  # dequantize(quantize(x)) == x (float32 rounding only)
    meta = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert json.loads(meta["edgesr.int8.exact_input"]) == res.exact_input["exact"]  # the file says so too
    if profile == "trt":
        assert check_trt_qdq(onnx.load(str(res.path))) == []  # zero point 0, int8: still what TensorRT takes

    # The old scheme scales the picture by its calibrated range. Photos that reach 0 and 255 give the
    # asymmetric uint8 (cpu) profile the exact scale by luck; studio-range frames (16..235) do not.
    old = quantize_model(path, tmp_path / "old.onnx", spec, QuantConfig(profile=profile, exact_input=False, **FAST),
                         calibration=studio, eval_set=evalset)
    pixels, codes, back, pre = _codes_and_roundtrip(old.path, spec)
    assert not np.array_equal(codes, pixels - offset)
    assert np.abs(back - pre).max() > 1e-4  # the calibrated scale re-quantizes the grey levels


def test_input_levels_only_for_8bit_rgb_grids():
    lv = input_levels(Spec(arch="x", scale=2))
    assert lv is not None and lv.lo == 0 and abs(lv.step - 1 / 255) < 1e-12 and lv.zero_code == 0
    lv = input_levels(Spec(arch="x", scale=2, value_range=(0.0, 255.0)))
    assert lv is not None and lv.step == 1.0 and lv.zero_code == 0
    assert input_levels(Spec(arch="x", scale=2, in_channels=1)) is None  # BT.601 Y is not on the grid
    assert input_levels(Spec(arch="x", scale=2, value_range=(-1.0, 1.0))) is None  # 0 falls between two levels


class _Scaled(torch.nn.Module):
    """RLFN's input convention (x * 255), or SPAN's ((x - mean) * 255) with `mean`."""

    def __init__(self, mean: bool):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.up = torch.nn.Conv2d(8, 12, 3, padding=1)
        self.ps = torch.nn.PixelShuffle(2)
        self.register_buffer("mean", torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) if mean else None)

    def forward(self, x):
        if self.mean is not None:
            x = x - self.mean
        return self.ps(self.up(torch.relu(self.conv(x * 255.0)))) / 255.0


@pytest.mark.parametrize("profile, offset", [("trt", 128), ("openvino", 0), ("cpu", 0)])
def test_a_scalar_range_change_keeps_the_picture_exact_a_mean_shift_is_reported(tmp_path, profile, offset):
    torch.manual_seed(0)
    spec = Spec(arch="x", scale=2)
    evalset = held_out_eval_set(2, max_side=48)
    for mean in (False, True):
        path = tmp_path / f"m{int(mean)}.onnx"
        torch.onnx.export(_Scaled(mean).eval(), (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h", 3: "w"}})
        res = quantize_model(path, tmp_path / f"q{int(mean)}.onnx", spec, QuantConfig(profile=profile, **FAST),
                             eval_set=evalset)
        if mean:  # per-channel means put the channels on three grids: not exact, and said so
            assert not res.exact_input["exact"] and any("Sub" in s for s in res.exact_input["not_exact"])
            continue
        assert res.exact_input["exact"] and not res.exact_input["not_exact"]
        pixels, codes, back, pre = _codes_and_roundtrip(res.path, spec)
        np.testing.assert_array_equal(codes, pixels - offset)
        assert np.abs(back - pre).max() < 1e-6 * 255


def test_the_picture_moved_by_shape_ops_keeps_its_grid(tmp_path):
    """ECBSR adds the picture tiled to scale^2 channels (Unsqueeze/Tile/Reshape) to its output: uint8
    profiles quantize that copy exactly too; trt's symmetric int8 cannot without centring, and says so."""
    from edgesr.export.onnx import export_onnx

    torch.manual_seed(0)
    v = build_variant("ecbsr-m4c16-x2", form="deploy")
    path = export_onnx(v.module.eval(), v.spec, tmp_path / "ecbsr.onnx", simplify=False).path
    evalset = held_out_eval_set(2, max_side=48)
    for profile in ("openvino", "cpu", "trt"):
        res = quantize_model(path, tmp_path / f"{profile}.onnx", v.spec, QuantConfig(profile=profile, **FAST),
                             eval_set=evalset)
        assert res.exact_input["exact"]
        if profile == "trt":
            assert [s for s in res.exact_input["not_exact"] if "(Add)" in s]
        else:
            assert res.exact_input["not_exact"] == []

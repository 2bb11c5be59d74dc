"""ONNX export: dynamic shapes, DepthToSpace CRD, simplification, metadata, checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgesr.errors import ExportError
from edgesr.export import export_onnx, read_metadata
from edgesr.parity import random_image
from edgesr.registry import architectures, build_variant, get_variant, load_model
from edgesr.reparam import reparameterize
from edgesr.spec import Spec

SIZES = [(17, 23), (64, 64), (31, 100)]  # odd non-square, square, wide
ALL_VARIANTS = [v.name for a in architectures() for v in a.variants]
# A few variants checked at three sizes and a batch of 2.
FEW = [v for v in ("ecbsr-m4c16-x4", "etds-t-x3", "etds-s-x2") if v in ALL_VARIANTS]


def _size(name: str) -> tuple[int, int]:
    arch, _ = get_variant(name)
    m = build_variant(name, "deploy" if "deploy" in arch.forms else arch.forms[0]).module
    return sum(1 for _ in m.modules()), sum(p.numel() for p in m.parameters())


_SIZES = {n: _size(n) for n in ALL_VARIANTS}
# Large graphs (e.g. transformer blocks) take tens of seconds to trace, check and simplify
# on a shared 2-core machine: they still run (marked slow); each family's smallest variant
# covers simplification.
BIG_MODULES = 150
VARIANT_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if _SIZES[n][0] > BIG_MODULES else n
                  for n in ALL_VARIANTS]
ONE_PER_FAMILY = [min((v.name for v in a.variants), key=_SIZES.__getitem__)
                  for a in architectures() if a.variants]


def _ort(path):
    from edgesr.backends.ort_runner import OrtRunner

    return OrtRunner(path, threads=1)


def _deploy(name: str, seed: int = 0):
    torch.manual_seed(seed)
    arch, _ = get_variant(name)
    lm = build_variant(name, "training" if "training" in arch.forms else "deploy")
    _randomize(lm.module)
    return reparameterize(lm.module), lm.spec


@torch.no_grad()
def _randomize(module: nn.Module) -> None:
    """Non-trivial weights everywhere (zero / identity inits would hide layout bugs)."""
    for p in module.parameters():
        p.add_(torch.randn_like(p) * 0.01)


def _rand(n, c, h, w, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


def _max_abs(module, runner, x):
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).numpy()
    out = runner.run(x)
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max())


def _assert_matches_torch(module, runner, x, tol=1e-5):
    """ORT within `tol` of PyTorch fp32 - or, for a model whose own fp32 rounding noise
    (PyTorch fp32 vs float64) is already near `tol` (some untrained random-weight nets),
    ORT no further from the float64 result than 2x PyTorch fp32 is."""
    err = _max_abs(module, runner, x)
    if err < tol:
        return err
    m64 = copy.deepcopy(module).double()
    with torch.inference_mode():
        r64 = m64(torch.from_numpy(x).double()).numpy()
        r32 = module(torch.from_numpy(x)).double().numpy()
    e_torch = float(np.abs(r32 - r64).max())
    e_ort = float(np.abs(runner.run(x).astype(np.float64) - r64).max())
    assert e_torch > tol / 5, f"ORT vs torch {err:.3g} >= {tol:g} on a well-conditioned model"
    assert e_ort <= 2 * e_torch, (err, e_ort, e_torch)
    return err


@pytest.mark.parametrize("name", VARIANT_PARAMS)
def test_every_variant_exports_dynamic(name, tmp_path):
    """Every registered variant, one odd size (simplification: see the per-family test)."""
    module, spec = _deploy(name)
    res = export_onnx(module, spec, tmp_path / "m.onnx", simplify=False)
    assert res.path.is_file() and res.max_abs_vs_torch is not None
    assert res.metadata["form"] == "deploy" and res.metadata["architecture"] == spec.arch
    x = random_image((1, spec.in_channels, 19, 27), seed=3)
    _assert_matches_torch(module, _ort(res.path), x)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_family_simplified_equals_unsimplified(name, tmp_path):
    module, spec = _deploy(name, seed=4)
    a = export_onnx(module, spec, tmp_path / "a.onnx", simplify=False, check=False)
    b = export_onnx(module, spec, tmp_path / "b.onnx", simplify=True)
    assert b.simplified, b.simplify_note
    x = random_image((1, spec.in_channels, 23, 17), seed=5)
    # onnxslim may fold constants (changing float rounding): identical within 1e-6
    assert np.abs(_ort(a.path).run(x) - _ort(b.path).run(x)).max() <= 1e-6
    _assert_matches_torch(module, _ort(b.path), x)


@pytest.mark.parametrize("name", FEW)
def test_three_sizes_and_batch(name, tmp_path):
    module, spec = _deploy(name, seed=1)
    res = export_onnx(module, spec, tmp_path / "m.onnx")
    runner = _ort(res.path)
    for i, (h, w) in enumerate(SIZES):
        x = _rand(2 if i == 0 else 1, spec.in_channels, h, w, seed=i)
        _assert_matches_torch(module, runner, x)
        assert runner.run(x).shape == (x.shape[0], spec.out_channels, h * spec.scale, w * spec.scale)


def test_graph_io_is_dynamic_and_named(tmp_path):
    import onnx

    module, spec = _deploy(FEW[0])
    res = export_onnx(module, spec, tmp_path / "m.onnx")
    m = onnx.load(str(res.path))
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["output"]
    ind = m.graph.input[0].type.tensor_type.shape.dim
    outd = m.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in ind] == ["batch", "", "height", "width"] and ind[1].dim_value == 3
    assert [d.dim_param for d in outd] == ["batch", "", "out_height", "out_width"] and outd[1].dim_value == 3
    d2s = [n for n in m.graph.node if n.op_type == "DepthToSpace"]
    assert d2s and all(a.s == b"CRD" for n in d2s for a in n.attribute if a.name == "mode")
    onnx.checker.check_model(m, full_check=True)


def test_static_export_has_fixed_shape(tmp_path):
    import onnx

    module, spec = _deploy(FEW[0])
    res = export_onnx(module, spec, tmp_path / "m.onnx", dynamic=False, sample_shape=(1, 3, 24, 20))
    dims = [d.dim_value for d in onnx.load(str(res.path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 24, 20] and res.checked_shapes == [(1, 3, 24, 20)]


class _Shuffle(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.conv = nn.Conv2d(3, 3 * scale * scale, 1)
        self.ps = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.ps(self.conv(x))


@pytest.mark.parametrize("scale", [2, 3])
def test_pixel_shuffle_is_depth_to_space_crd_numerically(scale, tmp_path):
    """Channel c*s*s + i*s + j -> (c, y*s+i, x*s+j): DCR ordering would scramble it."""
    torch.manual_seed(0)
    m = _Shuffle(scale).eval()
    with torch.no_grad():  # each output channel carries a distinct constant
        m.conv.weight.zero_()
        m.conv.bias.copy_(torch.arange(3 * scale * scale, dtype=torch.float32))
    spec = Spec(arch="test", scale=scale)
    res = export_onnx(m, spec, tmp_path / "ps.onnx")
    y = _ort(res.path).run(_rand(1, 3, 5, 7))
    with torch.no_grad():
        ref = m(torch.from_numpy(_rand(1, 3, 5, 7))).numpy()
    np.testing.assert_array_equal(y, ref)
    # the pattern really is CRD: channel c, sub-pixel (i, j) holds c*s*s + i*s + j
    assert y[0, 1, 0, 1] == 1 * scale * scale + 0 * scale + 1


def test_simplified_equals_unsimplified(tmp_path):
    import onnx

    module, spec = _deploy(FEW[0], seed=2)
    a = export_onnx(module, spec, tmp_path / "a.onnx", simplify=False)
    b = export_onnx(module, spec, tmp_path / "b.onnx", simplify=True)
    assert not a.simplified and b.simplified and b.simplify_note == ""
    assert len(onnx.load(str(b.path)).graph.node) <= len(onnx.load(str(a.path)).graph.node)
    ra, rb = _ort(a.path), _ort(b.path)
    for i, (h, w) in enumerate(SIZES):
        x = _rand(1, 3, h, w, seed=10 + i)
        assert np.abs(ra.run(x) - rb.run(x)).max() <= 1e-6


def test_metadata(tmp_path):
    module, spec = _deploy(FEW[0])
    ck = tmp_path / "fake.pth"
    ck.write_bytes(b"weights")
    res = export_onnx(module, spec, tmp_path / "m.onnx", metadata={"note": "hello", "dataset": {"name": "x"}},
                      source_checkpoint=ck)
    meta = read_metadata(res.path)
    assert meta == res.metadata
    for k in ("architecture", "variant", "scale", "value_range", "color_order", "layout", "source_sha256",
              "edgesr_version", "form", "receptive_field", "opset", "spec"):
        assert k in meta, k
    assert meta["architecture"] == spec.arch and meta["variant"] == spec.variant
    assert meta["scale"] == str(spec.scale) and meta["layout"] == "NCHW" and meta["color_order"] == "RGB"
    assert meta["value_range"] == "[0.0, 1.0]" and meta["receptive_field"] == str(spec.receptive_field)
    import hashlib
    assert meta["source_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert meta["note"] == "hello" and meta["dataset"] == '{"name": "x"}'


def test_errors_are_one_line_and_leave_no_file(tmp_path):
    module, spec = _deploy(FEW[0])
    with pytest.raises(ExportError, match="opset"):
        export_onnx(module, spec, tmp_path / "a.onnx", opset=9)

    class Bad(nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy() * 2)  # untraceable

    with pytest.raises(ExportError) as ei:
        export_onnx(Bad(), Spec(arch="bad", scale=1), tmp_path / "b.onnx")
    assert "\n" not in str(ei.value)
    with pytest.raises(ExportError, match="source checkpoint"):
        export_onnx(module, spec, tmp_path / "c.onnx", source_checkpoint=tmp_path / "missing.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_check_catches_wrong_export(tmp_path):
    """A module whose traced graph differs from eager (data-dependent branch) is refused."""

    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.shape[2] == 32 else x  # trace bakes in the branch for H=32

    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(Branchy(), Spec(arch="b", scale=1), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def _set5_crops(set5_dir, scale):
    """Crops of a real LR image at the three test sizes (in-distribution inputs)."""
    from PIL import Image

    img = np.asarray(Image.open(set5_dir / "LR_bicubic" / f"X{scale}" / f"baby" f"x{scale}.png").convert("RGB"))
    x = img.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    return [np.ascontiguousarray(x[:, :, 3:3 + h, 5:5 + w]) for h, w in SIZES]


@pytest.mark.parametrize("rel", ["ETDS/ETDS_M5C16_x3.pth", "ECBSR/ECBSR_M4C16_x4.pth"])
def test_real_checkpoints(rel, ckpt_dir, set5_dir, tmp_path):
    path = ckpt_dir / rel
    lm = load_model(path)
    module = reparameterize(lm.module)
    res = export_onnx(module, lm.spec, tmp_path / "m.onnx", source_checkpoint=path)
    runner = _ort(res.path)
    for x in _set5_crops(set5_dir, lm.spec.scale):
        err = _max_abs(module, runner, x)
        assert err < 1e-5, (rel, x.shape, err)
    from edgesr.fsutil import sha256_file
    assert res.metadata["source_sha256"] == sha256_file(path)


# ---- fp16 ---------------------------------------------------------------------------------------

def _set5(set5_dir, scale):
    from edgesr.parity import testset_samples

    return testset_samples(set5_dir, scale)


def _mean_psnr_y(runner, samples, scale):
    from edgesr.metrics import psnr_y

    return float(np.mean([psnr_y(np.clip(runner.run(s.lr)[0].transpose(1, 2, 0), 0, 1), s.hr, scale)
                          for s in samples]))


@pytest.mark.parametrize("keep_io", [True, False])
def test_fp16_set5_psnr_matches_fp32(keep_io, ckpt_dir, set5_dir, tmp_path):
    from edgesr.export import export_fp16

    lm = load_model(ckpt_dir / "ETDS" / "ETDS_M5C16_x4.pth")
    res = export_onnx(reparameterize(lm.module), lm.spec, tmp_path / "m.onnx")
    samples = _set5(set5_dir, 4)
    half = export_fp16(res.path, tmp_path / "m16.onnx", [s.lr for s in samples], keep_io_fp32=keep_io)
    assert half.max_abs_vs_fp32 is not None and 0 < half.max_abs_vs_fp32 < 5e-3
    assert half.worst.max_abs < 1000 and half.worst.node  # trained ETDS: far from 65504
    r32, r16 = _ort(res.path), _ort(half.path)
    if not keep_io:
        assert "float16" in r16.input_type
    p32, p16 = _mean_psnr_y(r32, samples, 4), _mean_psnr_y(r16, samples, 4)
    assert abs(p32 - 30.87) < 0.05  # published ETDS-T x4 Set5: 30.87
    assert abs(p16 - p32) < 0.02, (p32, p16)
    meta = read_metadata(half.path)
    assert meta["precision"] == "fp16" and meta["architecture"] == "etds"


def test_fp16_overflow_is_refused_naming_the_tensor(tmp_path):
    import onnx

    from edgesr.errors import Fp16Overflow
    from edgesr.export import export_fp16

    module, spec = _deploy("etds-t-x2", seed=3)
    with torch.no_grad():
        module.backbone_convs[1].weight.mul_(1e5)
    res = export_onnx(module, spec, tmp_path / "m.onnx")
    node = next(n for n in onnx.load(str(res.path)).graph.node
                if n.op_type == "Conv" and "backbone_convs.1" in n.name)
    with pytest.raises(Fp16Overflow) as ei:
        export_fp16(res.path, tmp_path / "m16.onnx", [random_image((1, 3, 16, 16), seed=1)])
    msg = str(ei.value)
    assert repr(node.output[0]) in msg and repr(node.name) in msg and "Conv" in msg, msg
    assert "\n" not in msg
    assert not (tmp_path / "m16.onnx").exists()


def test_fp16_headroom_warning_and_range_scan(tmp_path):
    from edgesr.export import export_fp16, scan_ranges

    module, spec = _deploy("etds-t-x2", seed=3)
    res = export_onnx(module, spec, tmp_path / "m.onnx")
    xs = [random_image((1, 3, 16, 16), seed=1)]
    ranges = scan_ranges(res.path, xs)
    assert ranges[0].op_type == "input" and abs(ranges[0].max_abs - float(np.abs(xs[0]).max())) < 1e-7
    worst = max(ranges, key=lambda r: r.max_abs)
    # pick ratios so the worst tensor sits between the warn and the refuse limit
    warn = worst.max_abs / 65504 / 2
    with pytest.warns(UserWarning, match="fp16"):
        half = export_fp16(res.path, tmp_path / "m16.onnx", xs, warn_ratio=warn)
    assert half.warnings and worst.name in half.warnings[0]


# ---- ORT format -----------------------------------------------------------------------------------

def _quantize_qdq(src, dst, inputs):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x} for x in inputs])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return dst


def test_ort_format_fp32_and_int8_match_onnx(tmp_path):
    import onnx

    from edgesr.export import export_ort

    module, spec = _deploy("etds-t-x3", seed=5)
    res = export_onnx(module, spec, tmp_path / "m.onnx")
    calib = [random_image((1, 3, 24, 24), seed=i) for i in range(3)]
    q = _quantize_qdq(res.path, tmp_path / "m_int8.onnx", calib)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(q)).graph.node)
    for src in (res.path, q):
        out = export_ort(src)
        assert out.path == src.with_suffix(".ort") and out.path.read_bytes()[4:8] == b"ORTM"
        assert out.max_abs_vs_onnx is not None and out.max_abs_vs_onnx <= 1e-6
        assert len(out.checked_shapes) == 2
        a, b = _ort(src), _ort(out.path)  # both loadable by the ordinary runner
        x = random_image((1, 3, 19, 26), seed=9)
        diff = np.abs(a.run(x) - b.run(x)).max()
        assert diff <= (1e-5 if src == res.path else 1 / 255 + 1e-6), diff


def test_ort_format_errors(tmp_path):
    from edgesr.export import export_ort

    with pytest.raises(ExportError, match="not found"):
        export_ort(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError) as ei:
        export_ort(tmp_path / "junk.onnx")
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "junk.ort").exists()

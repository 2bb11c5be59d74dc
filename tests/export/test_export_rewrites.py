"""Export rewrites for user code (edgesr.export.rewrites): operations the TorchScript exporter
refuses, exported through an equivalent form during the trace and checked against the eager
module on odd sizes. The models are small stand-ins for the NTIRE zoo's patterns (2024 MSN /
AGDN / HARN strided local variance, 2024 LKFN spectral attention, 2022 team 35 PixelUnshuffle);
the zoo itself is tests/zoo/test_zoo.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgesr.errors import ExportError
from edgesr.export.diagnose import export_user_model
from edgesr.export.rewrites import plan_rewrites, rewrite_mode, unfold_gather
from edgesr.spec import Spec

ODD_SIZES = [(17, 23), (31, 9), (40, 41)]


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_abs_ort_vs_torch(net, path, sizes=ODD_SIZES, batch=1) -> float:
    sess = _ort(path)
    worst = 0.0
    for i, (h, w) in enumerate(sizes):
        x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(i))
        with torch.inference_mode():
            ref = net(x).numpy()
        out = sess.run(None, {"input": x.numpy()})[0]
        assert out.shape == ref.shape
        worst = max(worst, float(np.abs(out.astype(np.float64) - ref).max()))
    return worst


def _local_var(x, k):  # the zoo's get_local_weights: reflect pad, strided windows, variance
    p = F.pad(x, [1, 1, 1, 1], mode="reflect")
    u = p.unfold(2, k, 3).unfold(3, k, 3)
    return torch.var(u, dim=(-1, -2), unbiased=True, keepdim=True).squeeze(-1).squeeze(-1)


class LocalVarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.tail = nn.Conv2d(8, 12, 3, padding=1)
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        f = self.head(x)
        v = _local_var(f, 7) + _local_var(f, 5)[..., :1, :1].mean()
        v = F.interpolate(v, size=(x.size(2), x.size(3)), mode="bilinear", align_corners=False)
        return self.up(self.tail(f * torch.sigmoid(v)))


class SpectralNet(nn.Module):
    """LKFN-style spectral attention (rfftn, 1x1 convs on real/imag, irfftn to the input size)
    plus a GFNet-style global filter (view_as_complex weight, complex product, irfft2)."""

    def __init__(self, norm="ortho"):
        super().__init__()
        self.norm = norm
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.filt = nn.Parameter(torch.randn(8, 1, 1, 2) * 0.1)
        self.tail = nn.Conv2d(8, 12, 3, padding=1)
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        f = self.head(x)
        s = torch.fft.rfftn(f, dim=(-2, -1), norm=self.norm)
        s = torch.complex(s.real + self.mix(s.real), s.imag + self.mix(s.imag))
        a = torch.fft.irfftn(s, s=f.shape[-2:], dim=(-2, -1), norm=self.norm)
        g = torch.fft.rfft2(f, norm=self.norm) * torch.view_as_complex(self.filt.expand(8, 1, 1, 2).contiguous())
        b = torch.fft.irfft2(g, s=(f.size(2), f.size(3)), norm=self.norm)
        return self.up(self.tail(f * torch.sigmoid(a) + b))


def _pixel_unshuffle(x, r):  # 2022 team 35: a one-hot kernel built with index assignment each call
    c = x.shape[1]
    kernel = torch.zeros(size=[r * r * c, 1, r, r], device=x.device)
    for y in range(r):
        for xx in range(r):
            kernel[xx + y * r::r * r, 0, y, xx] = 1
    return F.conv2d(x, kernel, stride=r, groups=c)


class ComputedKernelNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Conv2d(16, 3 * 64, 3, padding=1)  # at half resolution: x8 -> x4 overall
        self.up = nn.PixelShuffle(8)
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        f = _pixel_unshuffle(self.head(x), 2)
        w = self.body.weight * self.scale  # a kernel computed from parameters only
        return self.up(F.conv2d(f, w, self.body.bias, padding=1))


def test_unfold_gather_equals_unfold_bit_for_bit():
    x = torch.rand(2, 3, 17, 23)
    for dim, size, step in [(2, 7, 3), (3, 5, 3), (-1, 3, 1), (1, 2, 1), (2, 17, 1), (3, 4, 5)]:
        assert torch.equal(unfold_gather(x, dim, size, step), x.unfold(dim, size, step)), (dim, size, step)
    two = unfold_gather(unfold_gather(x, 2, 7, 3), 3, 7, 3)
    assert torch.equal(two, x.unfold(2, 7, 3).unfold(3, 7, 3))


@pytest.mark.parametrize("norm", [None, "ortho", "forward"])
def test_fft_rewrite_matches_torch_fft_eagerly(norm):
    for w in (23, 24):  # odd and even last dim (the Nyquist bin)
        x = torch.rand(2, 3, 17, w)
        with rewrite_mode() as mode:
            s = torch.fft.rfft2(x, norm=norm)
            y = torch.fft.irfft2(s * 2 - x[..., : w // 2 + 1], s=(17, w), norm=norm)
            s1 = torch.fft.rfft(x, norm=norm)
            y1 = torch.fft.irfft(s1, n=w, norm=norm)
        ref = torch.fft.rfft2(x, norm=norm)
        peak = float(ref.abs().max())
        assert float((s.real - ref.real).abs().max()) <= 1e-6 * max(1.0, peak) * 10
        assert float((s.imag - ref.imag).abs().max()) <= 1e-6 * max(1.0, peak) * 10
        y_ref = torch.fft.irfft2(ref * 2 - x[..., : w // 2 + 1], s=(17, w), norm=norm)
        assert float((y - y_ref).abs().max()) < 1e-6 * max(1.0, float(y_ref.abs().max())) * 10
        assert float((y1 - x).abs().max()) < 1e-5
        assert mode.counts["fft"] == 4


def test_unfold_model_exports_dynamic_and_exact(tmp_path):
    net = LocalVarNet().eval()
    with pytest.raises(Exception, match="(?i)unfold"):  # what the exporter does on its own
        import io

        torch.onnx.export(net, (torch.rand(1, 3, 20, 20),), io.BytesIO(), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {2: "h", 3: "w"}})
    res = export_user_model(net, Spec(arch="user:LocalVarNet", scale=2), tmp_path / "m.onnx")
    d = res.to_dict()
    assert d["dynamic"] and "fixed_input_hw" not in d
    assert d["rewrites"]["applied"] == ["unfold"] and d["rewrites"]["calls_per_forward"] == {"unfold": 4}
    assert d["rewrites"]["max_abs_eager"] == 0.0  # a gather: bit-exact in PyTorch
    assert _max_abs_ort_vs_torch(net, tmp_path / "m.onnx", batch=2) <= 1e-5


@pytest.mark.parametrize("norm", ["ortho", "backward"])
def test_fft_model_exports_dynamic_within_1e4(tmp_path, norm):
    torch.manual_seed(0)
    net = SpectralNet(norm).eval()
    res = export_user_model(net, Spec(arch="user:SpectralNet", scale=2), tmp_path / "m.onnx")
    d = res.to_dict()
    assert d["dynamic"] and d["rewrites"]["applied"] == ["fft"]
    assert d["rewrites"]["calls_per_forward"] == {"fft": 4}
    assert _max_abs_ort_vs_torch(net, tmp_path / "m.onnx") <= 1e-4


def test_computed_kernels_are_frozen_exactly(tmp_path):
    net = ComputedKernelNet().eval()
    res = export_user_model(net, Spec(arch="user:ComputedKernelNet", scale=4), tmp_path / "m.onnx")
    d = res.to_dict()
    assert d["dynamic"] and d["rewrites"]["applied"] == ["frozen"] and d["rewrites"]["frozen_kernels"] == 2
    assert d["rewrites"]["max_abs_eager"] == 0.0
    assert _max_abs_ort_vs_torch(net, tmp_path / "m.onnx") <= 1e-5


def test_input_dependent_kernels_are_not_frozen():
    class DynamicFilter(nn.Module):  # the kernel depends on the input's values: never a constant
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 1, 3, 3))

        def forward(self, x):
            return F.conv2d(x, self.w * x.mean(), padding=1, groups=3)

    net = DynamicFilter().eval()
    rng = np.random.default_rng(0)
    plan = plan_rewrites(net, [rng.random((1, 3, 20, 24), dtype=np.float32),
                               rng.random((1, 3, 17, 23), dtype=np.float32)])
    assert not plan.active and not plan.frozen


def test_unsupported_spectrum_use_is_named(tmp_path):
    class PhaseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 12, 3, padding=1)
            self.up = nn.PixelShuffle(2)

        def forward(self, x):
            phase = torch.fft.rfft2(x).angle()  # not covered by the rewrite
            return self.up(self.conv(x + phase.mean() * 0))

    with pytest.raises(ExportError) as e:
        export_user_model(PhaseNet().eval(), Spec(arch="user:PhaseNet", scale=2), tmp_path / "m.onnx")
    msg = str(e.value)
    assert "fft_rfft2" in msg and "'.angle' of an FFT spectrum" in msg and "\n" not in msg, msg


class RowSpectrumNet(nn.Module):
    """2022 team 02's spectral transform: rfft over the rows (dim 2, not the last dim), a 1x1 conv
    on (real, imag) stacked as channels, irfft back over dim 2."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.tail = nn.Conv2d(4, 12, 3, padding=1)
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        f = self.head(x)
        b, c, h, w = f.size()
        ff = torch.view_as_real(torch.fft.rfft(f, dim=2, norm="ortho"))  # b, c, h//2+1, w, 2
        ff = ff.permute(0, 1, 4, 2, 3).contiguous().view(b, -1, ff.size(2), w)
        ff = torch.relu(self.mix(ff))
        ff = torch.view_as_complex(ff.view(b, -1, 2, ff.size(2), w).permute(0, 1, 3, 4, 2).contiguous())
        return self.up(self.tail(f + torch.fft.irfft(ff, n=h, dim=2, norm="ortho")))


def test_rfft_over_a_non_trailing_dim_exports_dynamic_within_1e4(tmp_path):
    torch.manual_seed(0)
    net = RowSpectrumNet().eval()
    res = export_user_model(net, Spec(arch="user:RowSpectrumNet", scale=2), tmp_path / "m.onnx")
    d = res.to_dict()
    assert d["dynamic"] and d["rewrites"]["applied"] == ["fft"] and d["rewrites"]["calls_per_forward"] == {"fft": 2}
    assert _max_abs_ort_vs_torch(net, tmp_path / "m.onnx") <= 1e-4


class _Modulation(nn.Module):  # SMFAN's SMFA: adaptive max pooling to a size computed from the shape
    def __init__(self):
        super().__init__()
        self.split, self.dw = nn.Conv2d(8, 16, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, f):
        _, _, h, w = f.shape
        y, x = self.split(f).chunk(2, dim=1)
        s = self.dw(F.adaptive_max_pool2d(x, (h // 8, w // 8)))
        return x * F.interpolate(s, size=(h, w), mode="nearest") + y


class _PartialConv(nn.Module):  # SMFAN's eval-mode PCFN: in-place assignment to a channel slice
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(8, 16, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = F.gelu(self.a(x))
        x[:, :4, :, :] = F.gelu(self.b(x[:, :4, :, :]))
        return self.c(x)


class ShapePoolNet(nn.Module):
    """2024 team 24 (SMFAN) in small: after the in-place slice assignment the exporter has lost
    the feature shape, so the next block's adaptive pooling to (h // 8, w // 8) is refused even
    in a fixed-size export."""

    def __init__(self):
        super().__init__()
        self.head, self.tail = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.blocks = nn.ModuleList([m for _ in range(2) for m in (_Modulation(), _PartialConv())])
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        x = self.head(x)
        for b in self.blocks:
            x = b(F.normalize(x)) + x
        return self.up(self.tail(x))


def test_adaptive_pooling_to_a_shape_computed_size_exports_fixed_and_exact(tmp_path):
    torch.manual_seed(0)
    net = ShapePoolNet().eval()
    with pytest.raises(Exception, match="(?i)adaptive"):  # what the exporter does on its own, even fixed
        import io

        torch.onnx.export(net, (torch.rand(1, 3, 64, 64),), io.BytesIO(), dynamo=False, opset_version=17,
                          input_names=["input"])
    res = export_user_model(net, Spec(arch="user:ShapePoolNet", scale=2), tmp_path / "m.onnx")
    d = res.to_dict()
    # a pooling kernel is a graph constant: exact where the size divides, so the export is the fixed one
    assert d["rewrites"]["applied"] == ["adaptive"] and d["rewrites"]["max_abs_eager"] == 0.0
    assert not d["dynamic"] and d["fixed_input_hw"] == [64, 64]
    assert _max_abs_ort_vs_torch(net, tmp_path / "m.onnx", sizes=[(64, 64)]) <= 1e-5

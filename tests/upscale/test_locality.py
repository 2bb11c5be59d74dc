"""edgesr.locality: receptive field, alignment and (non-)locality read from ONNX graphs.

Small hand-made torch modules whose answer is known: the radius of stacked convolutions,
the alignment a strided conv + transposed conv needs, and the operators that make exact
tiling impossible (global pooling, resize to the input size, window partitions).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgesr.backends.torch_runner import TorchRunner
from edgesr.export.onnx import export_onnx
from edgesr.locality import analyze_onnx
from edgesr.spec import Spec
from edgesr.tiling import measure_tiling, plan_tiles, upscale_array


class Plain(nn.Module):  # k x (3x3 conv) + 5x5 dilated conv + pixel shuffle x2
    def __init__(self, k=3):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(k)])
        self.dil = nn.Conv2d(8, 12, 5, padding=4, dilation=2)
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        for c in self.convs:
            x = F.relu(c(x))
        return self.up(self.dil(x))


class Strided(nn.Module):  # stride-2 down, transposed conv up, pixel shuffle x2
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.upc = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
        self.out = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        return F.pixel_shuffle(self.out(F.relu(self.upc(F.relu(self.mid(F.relu(self.down(x))))))), 2)


class Reflect(nn.Module):  # explicit reflect padding then a valid conv (a Pad node in the graph)
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3)

    def forward(self, x):
        return F.pixel_shuffle(self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect")), 2)


class SE(Plain):  # squeeze-excitation: a global average multiplies every pixel
    def forward(self, x):
        y = F.relu(self.convs[0](x))
        return self.up(self.dil(y * torch.sigmoid(y.mean((2, 3), keepdim=True))))


class ESA(Plain):  # RLFN-style: strided conv + max-pool + bilinear back to the input size
    def __init__(self):
        super().__init__(k=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2)

    def forward(self, x):
        y = F.relu(self.convs[0](x))
        a = F.max_pool2d(self.c2(y), 7, 3)
        a = F.interpolate(a, (x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
        return self.up(self.dil(y * torch.sigmoid(a)))


class Windows(Plain):  # window attention: tokens of 4x4 windows attend to each other
    def forward(self, x):
        y = F.relu(self.convs[0](x))
        b, c, h, w = y.shape
        t = y.view(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(-1, 16, c)
        t = torch.softmax(t @ t.transpose(1, 2), -1) @ t
        y = t.view(b, h // 4, w // 4, 4, 4, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return self.up(self.dil(y))


def _graph(module, tmp_path, min_size=1, multiple=1):
    torch.manual_seed(0)
    spec = Spec(arch="test", scale=2, min_size=min_size, size_multiple=multiple)
    path = tmp_path / "m.onnx"
    export_onnx(module.eval(), spec, path)
    return analyze_onnx(path, min_size=min_size, size_multiple=multiple), spec, path


def test_plain_radius_is_exact_and_tight(tmp_path):
    g, spec, path = _graph(Plain(3), tmp_path)
    # 3 convs of radius 1 + a 5x5 conv dilated 2 (radius 4); pixel shuffle adds nothing
    assert g.local and g.receptive_field == 7 and g.alignment == 1 and g.min_size == 1 and g.scale == 2
    assert g.activation_bytes_per_pixel and g.activation_bytes_per_pixel > 0
    runner = TorchRunner(_seeded(Plain, 3))
    img = np.random.default_rng(0).random((50, 61, 3), dtype=np.float32)
    full = upscale_array(runner, img, spec, tile=0)
    assert float(np.abs(upscale_array(runner, img, spec, tile=16, overlap=7) - full).max()) < 1e-6
    assert float(np.abs(upscale_array(runner, img, spec, tile=16, overlap=6) - full).max()) > 1e-4


def _seeded(cls, *a):
    torch.manual_seed(0)
    return cls(*a).eval()


def test_strided_net_needs_alignment(tmp_path):
    g, spec, path = _graph(_seeded(Strided), tmp_path, multiple=2)  # even sizes in, even sizes out
    assert g.local and g.alignment == 2 and g.receptive_field is not None
    runner = TorchRunner(_seeded(Strided))
    m = measure_tiling(runner, spec, path)
    assert m.exact and m.alignment == 2
    img = np.random.default_rng(1).random((64, 70, 3), dtype=np.float32)
    full = upscale_array(runner, img, spec, tile=0)
    plan = plan_tiles(64, 70, spec, 20, m.overlap, measured=m)
    assert plan.exact and all(t.core[0] % 2 == 0 and t.box[0] % 2 == 0 for t in plan.tiles)
    assert float(np.abs(upscale_array(runner, img, spec, plan=plan) - full).max()) < 1e-5


def test_reflect_pad_node_is_followed(tmp_path):
    g, _, _ = _graph(_seeded(Reflect), tmp_path)
    assert g.local and g.receptive_field == 1


@pytest.mark.parametrize("cls,needle", [(SE, "every pixel depends on the whole image"),
                                        (ESA, "depends on the image size"),
                                        (Windows, "")])
def test_global_and_size_dependent_ops_are_flagged(cls, needle, tmp_path):
    g, spec, path = _graph(_seeded(cls), tmp_path, min_size=16, multiple=4 if cls is Windows else 1)
    assert not g.local and g.receptive_field is None and g.reasons
    assert needle in " ".join(g.reasons)
    m = measure_tiling(TorchRunner(_seeded(cls)), spec, path, image_size=128, tiles=(64,))
    assert not m.exact and m.error is not None and m.locality == "nonlocal" and m.checks
    assert "approximate" in m.summary()


def test_esa_min_size_from_graph(tmp_path):
    g, _, _ = _graph(_seeded(ESA), tmp_path, min_size=16)
    # 3x3/2 conv without padding then a 7x7/3 max-pool: the input needs >= 15 px
    assert g.min_size == 15


def test_registry_families_agree_with_their_declared_radius(tmp_path):
    """Where a family declares a receptive field, the graph's is never larger (it is the
    tight one: GhostSR declared 12, the graph proves 8, and one pixel less shows seams)."""
    from edgesr.registry import build_variant

    for name, want in [("etds-t-x2", 7), ("ecbsr-m4c16-x2", 6), ("ghostsr-f16b2-x4", 8), ("fsrcnn-x2", 8)]:
        torch.manual_seed(0)
        lm = build_variant(name, "deploy")
        export_onnx(lm.module, lm.spec, tmp_path / f"{name}.onnx")
        g = analyze_onnx(tmp_path / f"{name}.onnx")
        assert g.local and g.receptive_field == want, (name, g)
        assert lm.spec.receptive_field is None or g.receptive_field <= lm.spec.receptive_field
    lm = build_variant("ghostsr-f16b2-x4", "deploy")
    runner = TorchRunner(lm.module)
    img = np.random.default_rng(2).random((48, 52, 3), dtype=np.float32)
    full = upscale_array(runner, img, lm.spec, tile=0)
    assert float(np.abs(upscale_array(runner, img, lm.spec, tile=20, overlap=8) - full).max()) < 1e-5
    assert float(np.abs(upscale_array(runner, img, lm.spec, tile=20, overlap=7) - full).max()) > 1e-6


def test_summary_reports_the_check_at_the_run_tile_or_says_it_was_not_measured():
    """An approximate model's note quotes the check made at the run's tile and overlap; at a
    smaller tile (or overlap) than any check it says that error was not measured."""
    from edgesr.tiling import TileCheck, TilingMeasurement

    def check(tile, psnr):
        return TileCheck(tile=tile, overlap=16, image="x", tiles=4, max_abs=0.01, max_levels=3, psnr=psnr,
                         share_changed=0.01)

    m = TilingMeasurement(exact=False, tile=256, overlap=16, alignment=16, locality="nonlocal",
                          receptive_field=None, probe_radius=40, reasons=["ESA"], error=check(256, 60.0),
                          checks=[check(256, 60.0), check(128, 52.5)])
    assert "measured at tile 256" in m.summary() and "not measured" not in m.summary()
    at128 = m.summary(128, 16)
    assert "PSNR 52.5 dB" in at128 and "measured at tile 128" in at128 and "not measured" not in at128
    at64 = m.summary(64, 16)
    assert "measured at tile 256" in at64 and "its error was not measured" in at64
    assert "its error was not measured" in m.summary(256, 8)
    assert "not measured" not in m.summary(512, 16)

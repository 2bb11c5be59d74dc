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
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgesr.errors import BackendUnavailable, ImageError
from edgesr.export.mobile import channel_repeat_as_concat, repeat_channels_concat
from edgesr.pipeline import BUNDLED_CHECKPOINT
from edgesr.registry import load_model
from edgesr.reparam import reparameterize


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
    from edgesr.backends.litert_runner import LiteRtRunner
    from edgesr.export.litert import _nhwc, static_check
    from edgesr.export.mobile import quiet_native

    import litert_torch

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
    q = export_tflite(module, spec, tmp_path / "q.tflite", precision="int8", hw=(32, 40), fp32_bytes=fp32)
    assert q.io["input"]["dtype"] == "int8" and q.io["output"]["dtype"] == "int8"
    assert "quantization" in q.io["input"] and q.psnr_vs_torch >= 30
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
    q = export_ncnn(module, spec, tmp_path / "q.param", precision="int8", psnr_budget=None)
    layers = parse_param((tmp_path / "q.param").read_text())[1]
    convs = [la for la in layers if la.type == "Convolution"]
    assert convs and all(la.params.get(8) == "2" for la in convs)
    walk_bin(layers, (tmp_path / "q.bin").read_bytes())  # every byte accounted for
    assert q.details["quantized_layers"] == len(convs) and q.psnr_vs_torch >= 30


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

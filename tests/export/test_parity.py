"""Parity harness: metrics, tolerances, first-divergence search, heatmaps, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesr.backends.ort_runner import OrtRunner
from edgesr.backends.torch_runner import TorchRunner
from edgesr.errors import ParityError
from edgesr.export import export_onnx
from edgesr.parity import (
    PRESETS,
    ParityReport,
    Tolerance,
    check_parity,
    default_samples,
    first_divergence,
    matched_tensors,
    package_samples,
    random_image,
    random_samples,
    runner_precision,
    sample_stats,
)
from edgesr.registry import architectures, build_variant, get_variant, load_model
from edgesr.reparam import reparameterize

FAMILIES = [n for n in ("ecbsr-m4c16-x4", "etds-t-x3") if any(v.name == n for a in architectures() for v in a.variants)]
SMALL = random_samples([(17, 23), (24, 24)])


@torch.no_grad()
def _deploy(name: str, seed: int = 0):
    torch.manual_seed(seed)
    arch, _ = get_variant(name)
    lm = build_variant(name, "training" if "training" in arch.forms else "deploy")
    for p in lm.module.parameters():
        p.add_(torch.randn_like(p) * 0.01)
    return reparameterize(lm.module), lm.spec


@pytest.fixture(scope="module")
def etds(tmp_path_factory):
    """ETDS-T x3 (random weights): torch deploy module, its spec and its simplified fp32 ONNX."""
    d = tmp_path_factory.mktemp("etds")
    module, spec = _deploy(FAMILIES[-1], seed=1)
    res = export_onnx(module, spec, d / "m.onnx")
    return module, spec, res.path


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


def _plant(src, dst, conv_index=3, delta=0.5):
    """Copy of an ONNX model with one weight of the conv_index-th Conv changed; -> that node."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    conv = [n for n in m.graph.node if n.op_type == "Conv"][conv_index]
    for init in m.graph.initializer:
        if init.name == conv.input[1]:
            w = numpy_helper.to_array(init).copy()
            w[0, 0, w.shape[2] // 2, w.shape[3] // 2] += delta
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, str(dst))
    return conv


@pytest.mark.parametrize("name", FAMILIES)
def test_torch_vs_onnx_passes_on_default_inputs(name, tmp_path):
    module, spec = _deploy(name)
    res = export_onnx(module, spec, tmp_path / "m.onnx")
    rep = check_parity([TorchRunner(module, "torch:deploy"), OrtRunner(res.path, "ort:fp32", threads=1)])
    assert isinstance(rep, ParityReport) and rep.ok, rep.to_markdown()
    c = rep.comparisons[0]
    assert c.precision == "fp32" and c.tolerance == PRESETS["fp32"]
    assert c.max_abs < 1e-5 and c.psnr > 90 and c.ssim > 0.9999
    assert rep.scale == spec.scale
    names = rep.samples
    assert any(n.startswith("random:") for n in names) and any(not n.startswith("random:") for n in names)
    assert {"random:17x23", "random:31x100"} <= set(names)  # odd, non-square sizes
    json.dumps(rep.to_dict())
    md = rep.to_markdown()
    assert "ort:fp32" in md and "PASS" in md


def test_metrics_are_computed_not_copied():
    rng = np.random.default_rng(0)
    ref = rng.random((1, 3, 40, 30)).astype(np.float32)
    out = ref.copy()
    out[0, :, 5, 7] += 0.1  # 3 values of 3600 changed by 0.1
    hr = np.clip(ref[0].transpose(1, 2, 0) + 0.01, 0, 1)
    st = sample_stats("x", (1, 3, 20, 15), ref, out, hr, scale=2)
    assert abs(st.max_abs - 0.1) < 1e-6 and abs(st.mean_abs - 0.3 / ref.size) < 1e-9
    assert st.p99_abs == 0.0
    assert abs(st.psnr - 10 * np.log10(1 / (3 * 0.01 / ref.size))) < 1e-3
    assert 0.9 < st.ssim < 1.0
    assert 0 < st.diff8_share <= 3 / ref.size
    assert st.ref_psnr_gt is not None and st.test_psnr_gt is not None and st.ref_psnr_gt > st.test_psnr_gt


def test_tolerances_by_precision_and_overrides(etds, tmp_path):
    module, _, path = etds
    slow = TorchRunner(module, "torch")
    noisy = _Noisy(OrtRunner(path, "ort", threads=1), 1e-3)
    rep = check_parity([slow, noisy], SMALL)
    assert not rep.ok and "max abs" in rep.comparisons[0].failures[0]
    rep = check_parity([slow, noisy], SMALL, overrides={"max_abs": 5e-3})
    assert rep.ok, rep.comparisons[0].failures
    noisy.precision = "int8"  # judged by the drop vs ground truth only: max abs / PSNR vs fp32 are information
    rep = check_parity([slow, noisy], SMALL, localize=False)
    assert rep.comparisons[0].precision == "int8" and rep.ok
    rep = check_parity([slow, noisy], SMALL, tolerances=Tolerance(min_psnr=80.0), localize=False)
    assert not rep.ok and "PSNR" in rep.comparisons[0].failures[0]
    with pytest.raises(ParityError):
        Tolerance.for_precision("int4")


class _Noisy:
    """A runner that adds deterministic noise of a given amplitude to another's output."""

    def __init__(self, inner, amp):
        self.inner, self.amp, self.name = inner, amp, f"noisy{amp:g}"

    def run(self, x):
        y = self.inner.run(x)
        return y + self.amp * np.random.default_rng(0).uniform(-1, 1, y.shape).astype(np.float32)


@pytest.mark.parametrize("reference", ["onnx", "torch"])
def test_planted_wrong_weight_fails_and_names_the_conv(reference, etds, tmp_path):
    module, spec, path = etds
    conv = _plant(path, tmp_path / "bad.onnx", conv_index=3)
    ref = OrtRunner(path, "good", threads=1) if reference == "onnx" else TorchRunner(module, "torch")
    rep = check_parity([ref, OrtRunner(tmp_path / "bad.onnx", "bad", threads=1)], SMALL,
                       heatmap_dir=tmp_path / "heat")
    c = rep.comparisons[0]
    assert not rep.ok and not c.ok and c.failures
    assert c.divergence is not None, c.divergence_note
    assert (c.divergence.node, c.divergence.op_type) == (conv.name, "Conv")
    assert c.divergence.tensor == conv.output[0]
    assert c.divergence.probed < c.divergence.candidates  # a few at a time, not all at once
    png = tmp_path / "heat" / "00_bad_vs_good.png" if reference == "onnx" else tmp_path / "heat" / "00_bad_vs_torch.png"
    assert c.heatmap == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert conv.name in rep.to_markdown()


def test_bisect_finds_every_position(etds, tmp_path):
    """First, middle and last conv: the search names each exactly."""
    import onnx

    _, _, path = etds
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    x = random_image((1, 3, 20, 20), seed=4)
    for i in (0, len(convs) // 2, len(convs) - 1):
        conv = _plant(path, tmp_path / f"bad{i}.onnx", conv_index=i)
        for probe in (1, 3):
            d = first_divergence(path, tmp_path / f"bad{i}.onnx", x, probe=probe)
            assert d is not None and d.node == conv.name, (i, probe, d)
    assert first_divergence(path, path, x) is None


def test_qdq_tensors_map_to_float_names(etds, tmp_path):
    _, _, path = etds
    q = _quantize_qdq(path, tmp_path / "q.onnx", [random_image((1, 3, 24, 24), seed=i) for i in range(2)])
    import onnx

    pairs = matched_tensors(onnx.load(str(path)), onnx.load(str(q)))
    qdq = [(t, r) for t, r in pairs if t != r]
    assert len(qdq) >= 5 and all(t == r + "_DequantizeLinear_Output" for t, r in qdq)
    assert len({r for _, r in pairs}) == len(pairs)
    r = OrtRunner(q, "ort:int8", threads=1)
    assert runner_precision(r) == "int8"
    rep = check_parity([OrtRunner(path, "ort:fp32", threads=1), r], SMALL)
    c = rep.comparisons[0]
    assert c.precision == "int8" and c.tolerance == PRESETS["int8"] and c.psnr > 30


def test_planted_weight_in_int8_model_is_localised(etds, tmp_path):
    _, _, path = etds
    calib = [random_image((1, 3, 24, 24), seed=i) for i in range(3)]
    conv = _plant(path, tmp_path / "bad.onnx", conv_index=2, delta=5.0)
    q = _quantize_qdq(tmp_path / "bad.onnx", tmp_path / "bad_int8.onnx", calib)
    # int8's default gate is the ground-truth drop (SMALL has no ground truth): ask for PSNR vs fp32
    rep = check_parity([OrtRunner(path, "ort:fp32", threads=1), OrtRunner(q, "ort:int8", threads=1)], SMALL,
                       tolerances=Tolerance(min_psnr=40.0))
    c = rep.comparisons[0]
    assert not c.ok and c.precision == "int8"
    assert c.divergence is not None and (c.divergence.node, c.divergence.op_type) == (conv.name, "Conv")
    assert c.divergence.tensor.endswith("_DequantizeLinear_Output")


def test_fp16_runner_precision_and_parity(etds, tmp_path):
    from edgesr.export import export_fp16

    _, _, path = etds
    half = export_fp16(path, tmp_path / "h.onnx", [s.lr for s in SMALL])
    r16 = OrtRunner(half.path, "half", threads=1)
    assert runner_precision(r16) == "fp16"
    rep = check_parity([OrtRunner(path, "ort:fp32", threads=1), r16], SMALL)
    assert rep.ok and rep.comparisons[0].tolerance == PRESETS["fp16"], rep.to_markdown()


def test_bf16_runner_gets_the_bf16_tolerance():
    module, spec = _deploy("etds-t-x3", seed=2)
    r16 = TorchRunner(module, name="torch:bf16", dtype=torch.bfloat16)
    assert runner_precision(r16) == "bf16"
    rep = check_parity([TorchRunner(_deploy("etds-t-x3", seed=2)[0], name="torch:fp32"), r16], SMALL, scale=3)
    c = rep.comparisons[0]
    assert c.precision == "bf16" and c.tolerance == PRESETS["bf16"]
    # bf16 keeps 8 significant bits: far coarser than fp16's limits, within its own
    assert c.max_abs > PRESETS["fp16"].max_abs and rep.ok, rep.to_markdown()


def test_real_checkpoint_against_ground_truth(ckpt_dir, set5_dir, tmp_path):
    lm = load_model(ckpt_dir / "ETDS" / "ETDS_M5C16_x4.pth")
    module = reparameterize(lm.module)
    res = export_onnx(module, lm.spec, tmp_path / "m.onnx")
    samples = default_samples(4, sizes=[(17, 23)])
    assert [s.name for s in samples[:5]] == ["baby", "bird", "butterfly", "head", "woman"]
    rep = check_parity([TorchRunner(module, "torch"), OrtRunner(res.path, "ort", threads=1)], samples)
    c = rep.comparisons[0]
    assert rep.ok and c.max_abs < 1e-5
    assert abs(c.ref_psnr_gt - 30.87) < 0.05 and abs(c.gt_psnr_drop) < 1e-3


def test_package_samples_without_shared(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESR_SHARED", str(tmp_path / "nowhere"))
    s = default_samples(3, sizes=[(9, 13)], limit=2)
    assert [x.kind for x in s] == ["image", "image", "random"]
    for x in s[:2]:
        assert x.name.startswith("sample:") and x.hr.shape == (x.lr.shape[2] * 3, x.lr.shape[3] * 3, 3)
    assert s[2].lr.shape == (1, 3, 9, 13) and s[2].hr is None
    assert len(package_samples(2, limit=1)) == 1


def test_random_images_are_in_range_and_seeded():
    a = random_image((2, 3, 17, 23), seed=1)
    assert a.dtype == np.float32 and a.shape == (2, 3, 17, 23) and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, random_image((2, 3, 17, 23), seed=1))
    assert not np.array_equal(a, random_image((2, 3, 17, 23), seed=2))
    u = random_image((1, 3, 8, 8), kind="uniform")
    assert 0 <= u.min() and u.max() < 1


def test_runner_errors_are_reported_by_name(etds):
    module, _, _ = etds

    class Broken:
        name = "broken"

        def run(self, x):
            raise RuntimeError("device lost")

    with pytest.raises(ParityError, match="broken failed.*device lost"):
        check_parity([TorchRunner(module, "torch"), Broken()], SMALL)
    with pytest.raises(ParityError, match="distinct"):
        check_parity([TorchRunner(module, "a"), TorchRunner(module, "a")], SMALL)

    class Wrong:
        name = "wrong-scale"

        def run(self, x):
            return np.zeros((1, 3, x.shape[2] * 2, x.shape[3] * 2), np.float32)

    with pytest.raises(ParityError, match="output shape"):
        check_parity([TorchRunner(module, "torch"), Wrong()], SMALL)


# ---- CLI --------------------------------------------------------------------------------------------

def _cli(argv, capsys):
    from edgesr.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_pass_and_fail_with_json(ckpt_dir, tmp_path, capsys):
    ck = ckpt_dir / "ETDS" / "ETDS_M5C16_x2.pth"
    lm = load_model(ck)
    good = export_onnx(reparameterize(lm.module), lm.spec, tmp_path / "good.onnx").path
    conv = _plant(good, tmp_path / "bad.onnx", conv_index=2)
    rc, out, _ = _cli(["parity", str(ck), str(good), "--json", "--limit", "1", "--sizes", "17x23"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["ok"] is True and d["scale"] == 2 and len(d["samples"]) == 2
    assert d["comparisons"][0]["test"] == str(good) and d["comparisons"][0]["max_abs"] < 1e-5

    rc, out, _ = _cli(["parity", f"{ck}:deploy", str(tmp_path / "bad.onnx"), "--json", "--limit", "1",
                       "--sizes", "", "--heatmaps", str(tmp_path / "hm")], capsys)
    d = json.loads(out)
    c = d["comparisons"][0]
    assert rc == 1 and d["ok"] is False and c["failures"]
    assert c["first_divergence"]["node"] == conv.name and c["first_divergence"]["op_type"] == "Conv"
    assert c["heatmap"] and (tmp_path / "hm").is_dir()

    rc, out, _ = _cli(["parity", str(good), str(good), "--json", "--sizes", "9x9", "--limit", "1"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["comparisons"][0]["test"] == f"{good} #2" and d["comparisons"][0]["max_abs"] == 0

    rc, out, _ = _cli(["parity", str(good), str(tmp_path / "bad.onnx"), "--tol-max-abs", "1",
                       "--min-psnr", "10", "--limit", "1", "--sizes", "9x9"], capsys)
    assert rc == 0 and "bad.onnx" in out


def test_cli_errors(ckpt_dir, tmp_path, capsys):
    ck = ckpt_dir / "ETDS" / "ETDS_M5C16_x2.pth"
    rc, _, err = _cli(["parity", f"{ck}:training", str(ck)], capsys)
    assert rc == 2 and "deploy form only" in err and err.count("\n") == 1
    (tmp_path / "m.engine").write_bytes(b"x")
    rc, _, err = _cli(["parity", str(ck), str(tmp_path / "m.engine")], capsys)
    assert rc != 0 and "m.engine" in err and err.count("\n") == 1
    rc, _, err = _cli(["parity", str(ck), str(ck), "--sizes", "12by4"], capsys)
    assert rc == 2 and "--sizes" in err
    rc, _, err = _cli(["parity", str(ck)], capsys)
    assert rc == 2 and "at least one" in err


def test_cli_training_form_and_suffix_parsing(tmp_path, capsys):
    from edgesr.cli.parity import split_model_arg

    assert split_model_arg("a/b.pth:training") == (Path("a/b.pth"), "training")
    assert split_model_arg("C:/x/model.onnx")[1] is None
    torch.manual_seed(0)
    lm = build_variant("ecbsr-m4c16-x2", "training")  # exact reparameterization (ETDS adds a [0,1] clip)
    with torch.no_grad():
        for p in lm.module.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ck = tmp_path / "ecbsr_train.pth"
    torch.save(lm.module.state_dict(), ck)
    rc, out, err = _cli(["parity", f"{ck}:training", f"{ck}:deploy", "--json", "--limit", "1",
                         "--sizes", "17x23", "--tol-max-abs", "1e-4"], capsys)
    d = json.loads(out)
    assert rc == 0, (d, err)
    assert d["comparisons"][0]["max_abs"] < 1e-4  # reparameterization is exact up to rounding
    assert d["comparisons"][0]["test"].endswith(":deploy") and d["reference"].endswith(":training")

"""`edgesr eval` reproduces the Set5 Y-PSNR published for every ETDS-repo checkpoint,
with the PyTorch backend and with ONNX Runtime running the ONNX that `convert` writes."""

from __future__ import annotations

import json

import pytest

from edgesr.cli import main
from edgesr.evaluate import evaluate
from edgesr.pipeline import ConvertOptions, convert
from edgesr.resolve import resolve_model

# From ../shared/README.md (Set5, Y channel, border crop = scale).
PUBLISHED = {
    "ETDS/ETDS_M5C16": (37.18, 33.14, 30.87),
    "ETDS/ETDS_M4C32": (37.38, 33.49, 31.19),
    "ETDS/ETDS_M6C32": (37.54, 33.65, 31.41),
    "ETDS/ETDS_M7C48": (37.63, 33.88, 31.69),
    "ECBSR/ECBSR_M4C16": (37.18, 33.07, 30.87),
    "ECBSR/ECBSR_M4C32": (37.39, 33.56, 31.24),
    "ECBSR/ECBSR_ET_M4C16": (37.18, 33.07, 30.87),  # the ET is exact: same scores
    "ECBSR/ECBSR_ET_M4C32": (37.39, 33.56, 31.24),
    "ABPN/ABPN_M4C28": (37.36, 33.53, 31.32),
    "ABPN/ABPN_ET_M4C28": (37.36, 33.53, 31.32),
    "ESPCN/ESPCN": (36.86, 32.85, 30.66),
    "FSRCNN/FSRCNN": (37.00, 33.01, 30.76),
}
SINGLE = {"Plain/Plain_M6C32_x4": 31.32, "ETDS/ablations/ETDS_M6C32_x4_normal_loss": 31.35}
TOL = 0.05

CASES = [(f"{stem}_x{s}.pth", s, psnr) for stem, vals in PUBLISHED.items() for s, psnr in zip((2, 3, 4), vals)]
CASES += [(f"{stem}.pth", 4, psnr) for stem, psnr in SINGLE.items()]


@pytest.mark.shared
@pytest.mark.parametrize("rel,scale,published", CASES, ids=[c[0].split("/")[-1] for c in CASES])
def test_published_psnr_torch_and_ort(rel, scale, published, ckpt_dir, set5_dir, tmp_path):
    ckpt = ckpt_dir / rel
    torch_res = evaluate(resolve_model(ckpt, "torch", scale).runner, set5_dir, scale)
    assert abs(torch_res.psnr_y - published) <= TOL, f"torch {torch_res.psnr_y:.3f} vs published {published}"

    out = tmp_path / "bundle"
    convert(ConvertOptions(outdir=out, checkpoint=ckpt, scale=scale, bench=False, ort_format=False),
            log=lambda m: None)
    ort_res = evaluate(resolve_model(out, "ort", scale).runner, set5_dir, scale)
    assert abs(ort_res.psnr_y - published) <= TOL, f"ort {ort_res.psnr_y:.3f} vs published {published}"
    assert abs(ort_res.psnr_y - torch_res.psnr_y) < 0.005


@pytest.mark.shared
def test_eval_cli_json_keys(ckpt_dir, set5_dir, capsys):
    rc = main(["eval", str(ckpt_dir / "ETDS/ETDS_M5C16_x4.pth"), "--testset", str(set5_dir), "--scale", "4", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"psnr_y", "ssim_y", "images"} <= set(out)
    assert len(out["images"]) == 5 and all({"name", "psnr_y", "ssim_y"} <= set(i) for i in out["images"])
    assert abs(out["psnr_y"] - 30.87) <= TOL
    assert 0.8 < out["ssim_y"] < 1.0

"""ExecuTorch export (.pte, XNNPACK) and the C++ reference runner (export/cpp_runner).

Needs the optional `executorch` package (pip install 'edgesr[executorch]'); skipped without it.
The C++ test also needs cmake and a C++17 compiler.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.exir", reason="ExecuTorch not installed (pip install 'edgesr[executorch]')")

from edgesr.backends.torch_runner import TorchRunner  # noqa: E402
from edgesr.errors import ExportError  # noqa: E402
from edgesr.export.executorch import PteRunner, export_executorch  # noqa: E402
from edgesr.registry import build_variant, load_model  # noqa: E402
from edgesr.upscale import upscale_array  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RUNNER_SRC = REPO / "export" / "cpp_runner"
MAX_HW = (48, 48)


@pytest.fixture(scope="module")
def model(request):
    """ETDS-M x4: the real checkpoint with ../shared, else random deploy-form weights."""
    try:
        root = request.getfixturevalue("ckpt_dir")
        lm = load_model(root / "ETDS" / "ETDS_M6C32_x4.pth")
    except pytest.skip.Exception:
        torch.manual_seed(0)
        lm = build_variant("etds-m-x4", "deploy")
    return lm


@pytest.fixture(scope="module")
def pte_fp32(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("pte") / "model_fp32.pte"
    res = export_executorch(model.module, model.spec, path, precision="fp32", max_hw=MAX_HW)
    return path, res


def test_fp32_export_is_delegated_and_matches_torch(model, pte_fp32):
    path, res = pte_fp32
    assert path.is_file() and res.bytes == path.stat().st_size and len(res.sha256) == 64
    assert res.delegated_calls >= 1 and not any("convolution" in k for k in res.non_delegated_ops)
    assert res.max_abs_vs_torch is not None and res.max_abs_vs_torch < 1e-5
    art = res.artifact()
    assert art["format"] == "pte" and art["backend"] == "executorch-xnnpack" and art["precision"] == "fp32"
    assert art["shape_range"]["height"]["max"] == MAX_HW[0]
    # dynamic shapes: any size up to the bound, compared with PyTorch
    runner = PteRunner(path)
    for shp in [(1, 3, 1, 1), (1, 3, 31, 9), (1, 3, *MAX_HW)]:
        x = np.random.default_rng(0).random(shp, dtype=np.float32)
        ref = TorchRunner(model.module).run(x)
        assert float(np.abs(runner.run(x) - ref).max()) < 1e-5


def test_tiled_pte_equals_untiled_torch(model, pte_fp32):
    """Images larger than the .pte's bound run through the tiling rule, seam-free."""
    path, _ = pte_fp32
    rgb = np.random.default_rng(1).random((70, 90, 3), dtype=np.float32)
    full = upscale_array(TorchRunner(model.module), rgb, model.spec, tile=0)
    tiled = upscale_array(PteRunner(path), rgb, model.spec, tile=MAX_HW[0] - 2 * model.spec.receptive_field)
    assert float(np.abs(tiled - full).max()) < 1e-5


def test_bad_bounds_are_refused(model, tmp_path):
    with pytest.raises(ExportError, match="exceeds"):
        export_executorch(model.module, model.spec, tmp_path / "x.pte", min_hw=(64, 64), max_hw=(32, 32))
    with pytest.raises(ExportError, match="precision"):
        export_executorch(model.module, model.spec, tmp_path / "x.pte", precision="int4")
    assert not (tmp_path / "x.pte").exists()


@pytest.mark.slow
def test_int8_export(model, pte_fp32, tmp_path):
    res = export_executorch(model.module, model.spec, tmp_path / "int8.pte", precision="int8", max_hw=MAX_HW)
    assert res.psnr_vs_torch is not None and res.psnr_vs_torch >= 30.0  # vs fp32 PyTorch, on sample photos
    assert res.delegated_calls >= 1 and res.bytes < 0.5 * pte_fp32[1].bytes  # int8 weights


def _executorch_prefix() -> Path:
    import executorch

    return Path(list(executorch.__path__)[0])


@pytest.fixture(scope="module")
def cpp_runner(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake / c++ not installed")
    if not (_executorch_prefix() / "lib" / "cmake" / "executorch").is_dir():
        pytest.skip("this executorch wheel ships no C++ runtime (lib/cmake/executorch)")
    build = tmp_path_factory.mktemp("cpp_build")
    cfg = subprocess.run(["cmake", "-S", str(RUNNER_SRC), "-B", str(build), f"-DCMAKE_PREFIX_PATH={_executorch_prefix()}",
                          "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    b = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    exe = build / "edgesr_et_runner"
    assert exe.is_file()
    return exe


def _run_cpp(exe, pte, x: np.ndarray, scale: int, tmp: Path, *tiling: int) -> np.ndarray:
    _, c, h, w = x.shape
    x.astype("<f4").tofile(tmp / "in.f32")
    r = subprocess.run([str(exe), str(pte), str(tmp / "in.f32"), str(c), str(h), str(w), str(scale),
                        str(tmp / "out.f32"), *map(str, tiling)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("output ")][0].split()
    assert [int(v) for v in line[1:5]] == [1, c, h * scale, w * scale]
    return np.fromfile(tmp / "out.f32", dtype="<f4").reshape(1, c, h * scale, w * scale)


def test_cpp_runner_matches_python(model, pte_fp32, cpp_runner, tmp_path):
    path, _ = pte_fp32
    s = model.spec.scale
    rng = np.random.default_rng(2)
    # untiled, within the .pte's bound: C++ == Python ExecuTorch == PyTorch
    x = rng.random((1, 3, 37, 45), dtype=np.float32)
    y = _run_cpp(cpp_runner, path, x, s, tmp_path)
    assert float(np.abs(y - PteRunner(path).run(x)).max()) < 1e-5
    assert float(np.abs(y - TorchRunner(model.module).run(x)).max()) < 1e-5
    # larger than the bound: the C++ tiling loop == untiled PyTorch
    rgb = rng.random((83, 101, 3), dtype=np.float32)
    tile = MAX_HW[0] - 2 * model.spec.receptive_field
    yt = _run_cpp(cpp_runner, path, rgb.transpose(2, 0, 1)[None].copy(), s, tmp_path, tile,
                  model.spec.receptive_field)
    full = upscale_array(TorchRunner(model.module), rgb, model.spec, tile=0)
    assert float(np.abs(yt[0].transpose(1, 2, 0) - full).max()) < 1e-5


def test_cpp_runner_follows_manifest_alignment_and_min_size(model, pte_fp32, cpp_runner, tmp_path):
    """ALIGN (tiling.alignment), MIN_SIZE (io.min_size) and MULTIPLE (io.size_multiple) give what
    edgesr.upscale computes."""
    from dataclasses import replace

    from edgesr.tiling import pad_to_rules, plan_tiles

    path, _ = pte_fp32
    s = model.spec.scale
    rng = np.random.default_rng(3)
    rgb = rng.random((70, 90, 3), dtype=np.float32)
    ov = model.spec.receptive_field
    aligned = replace(model.spec, size_multiple=8)  # core starts on an 8-px grid
    plan = plan_tiles(70, 90, aligned, 16, ov)
    assert {t.core[0] % 8 for t in plan.tiles} == {0} and len(plan.tiles) > 4 and plan.max_box[0] <= MAX_HW[0]
    py = upscale_array(TorchRunner(model.module), rgb, model.spec, plan=plan)
    yc = _run_cpp(cpp_runner, path, rgb.transpose(2, 0, 1)[None].copy(), s, tmp_path, 16, ov, 8)
    assert float(np.abs(yc[0].transpose(1, 2, 0) - py).max()) < 1e-5
    # a 5x7 image below MIN_SIZE 15: padded by reflection, output cropped back
    tiny = rng.random((5, 7, 3), dtype=np.float32)
    padded = pad_to_rules(tiny, 15)
    ref = TorchRunner(model.module).run(padded.transpose(2, 0, 1)[None].copy())[:, :, :5 * s, :7 * s]
    yt = _run_cpp(cpp_runner, path, tiny.transpose(2, 0, 1)[None].copy(), s, tmp_path, 0, 0, 1, 15)
    assert float(np.abs(yt - ref).max()) < 1e-5
    # MULTIPLE (io.size_multiple): a 17x10 image padded to 20x12 (reflect), and a 1x6 image
    # (edge on both axes, as numpy pads a 1-px image) up to MIN_SIZE 9 on a multiple of 4
    for hw, min_size, mult in (((17, 10), 1, 4), ((1, 6), 9, 4)):
        odd = rng.random((*hw, 3), dtype=np.float32)
        padded = pad_to_rules(odd, min_size, mult)
        assert padded.shape[:2] != hw and padded.shape[0] % mult == 0 and padded.shape[1] % mult == 0
        ref = TorchRunner(model.module).run(padded.transpose(2, 0, 1)[None].copy())[:, :, :hw[0] * s, :hw[1] * s]
        yt = _run_cpp(cpp_runner, path, odd.transpose(2, 0, 1)[None].copy(), s, tmp_path, 0, 0, 1, min_size, mult)
        assert float(np.abs(yt - ref).max()) < 1e-5, hw
    r = subprocess.run([str(cpp_runner), str(path), str(tmp_path / "in.f32"), "3", "5", "7", "4",
                        str(tmp_path / "o.f32"), "8", "8"], capture_output=True, text=True)
    assert r.returncode != 0 and "must exceed OVERLAP" in r.stderr


def test_cpp_runner_errors(pte_fp32, cpp_runner, tmp_path):
    path, _ = pte_fp32
    (tmp_path / "in.f32").write_bytes(b"\0" * 12)
    r = subprocess.run([str(cpp_runner), str(path), str(tmp_path / "in.f32"), "3", "2", "2", "4",
                        str(tmp_path / "o.f32")], capture_output=True, text=True)
    assert r.returncode != 0 and "expected C*H*W*4" in r.stderr
    x = np.zeros((1, 3, MAX_HW[0] + 8, MAX_HW[1] + 8), dtype="<f4")
    x.tofile(tmp_path / "big.f32")
    r = subprocess.run([str(cpp_runner), str(path), str(tmp_path / "big.f32"), "3", str(x.shape[2]), str(x.shape[3]),
                        "4", str(tmp_path / "o.f32")], capture_output=True, text=True)
    assert r.returncode != 0 and "forward failed" in r.stderr and not (tmp_path / "o.f32").exists()

"""A bundle whose ONNX graph was exported at one fixed H x W (user code whose dynamic export
failed) runs any image size through `resolve_model`, the way `eval` / `parity` / `upscale` open
it: larger images as boxes of the graph's size, smaller ones padded up to it (before, ONNX
Runtime refused every image that was not exactly 64x64, so `edgesr eval OUTDIR` failed)."""

from __future__ import annotations

import json

import numpy as np
import torch

from helpers.paths import DATA

USER_REPO = DATA / "user_repo"


def test_a_fixed_size_bundle_runs_any_image_size(tmp_path, capsys):
    from edgesr.cli import main
    from edgesr.evaluate import super_resolve
    from edgesr.resolve import resolve_model
    from edgesr.usermodel import ModelRef, build_user_module

    code = f"{USER_REPO / 'models' / 'broken.py'}:SizeBakedNet"
    net = build_user_module(ModelRef.parse(code))
    torch.save(net.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "out"
    rc = main(["convert", str(tmp_path / "w.pth"), "--model", code, "--model-path", str(USER_REPO), "-o", str(out),
               "--no-bench", "--no-ort-format", "--input-range", "1"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["io"]["fixed_input_hw"] == [64, 64]
    for ref in (out, out / "model.onnx"):
        r = resolve_model(ref, backend="ort", scale=4)
        assert r.spec.min_size >= 64
        x = np.random.default_rng(0).random((1, 3, 100, 77), dtype=np.float32)
        with torch.inference_mode():
            want = net(torch.from_numpy(x)).numpy()
        got = r.runner.run(x)
        assert got.shape == want.shape == (1, 3, 400, 308)
        # conv 3x3 + bilinear x4: a receptive field of 2 px, inside the boxes' overlap: exact
        assert float(np.abs(got - want).max()) < 1e-4
        small = super_resolve(r.runner, x[0, :, :40, :50].transpose(1, 2, 0), r.spec)  # padded up to 64
        assert small.shape == (160, 200, 3)
        r.runner.close()

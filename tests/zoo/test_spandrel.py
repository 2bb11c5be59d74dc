"""spandrel bridge: state_dicts made by spandrel's own architecture classes (random weights,
no downloads) -> edgesr (SPAN: Conv3XC reparameterization) or spandrel's module -> dynamic ONNX,
ORT parity with spandrel's module < 1e-5.

Needs the optional extra (spandrel + torchvision):
    /work/venv-spandrel/bin/python -m pytest tests/zoo/test_spandrel.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

spandrel = pytest.importorskip("spandrel")

from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.OmniSR import OmniSR  # noqa: E402
from spandrel.architectures.PLKSR import PLKSR, RealPLKSR  # noqa: E402
from spandrel.architectures.SAFMN import SAFMN  # noqa: E402
from spandrel.architectures.SPAN import SPAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

from edgesr.reparam import is_deploy_form  # noqa: E402
from edgesr.spandrel_bridge import export_spandrel, load_with_spandrel  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-5


@torch.no_grad()
def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.02)
    if isinstance(model, SPAN):  # trained SPANs map 255-scaled features back to ~[0, 1]
        model.upsampler[0].weight.mul_(1 / 255)
        model.upsampler[0].bias.mul_(1 / 255)
    # a real SPAN checkpoint stores eval_conv = the fused branches (the official code refreshes it)
    for m in model.modules():
        if hasattr(m, "update_params") and hasattr(m, "eval_conv"):
            m.update_params()
    return model.eval()


CASES = {
    "span": lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=4),
    "compact": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4, act_type="prelu"),
    "plksr": lambda: PLKSR(dim=16, n_blocks=2, upscaling_factor=4, kernel_size=9),
    "realplksr": lambda: RealPLKSR(dim=16, n_blocks=2, upscaling_factor=2, kernel_size=9),
    # families edgesr implements with the same key layout: loaded into edgesr's module
    "omnisr": lambda: OmniSR(num_in_ch=3, num_out_ch=3, num_feat=16, block_num=1, res_num=1, window_size=8,
                             up_scale=4),
    "safmn": lambda: SAFMN(dim=16, n_blocks=2, upscaling_factor=3),
    "swinir": lambda: SwinIR(upscale=2, img_size=64, window_size=8, img_range=1.0, depths=[2, 2], embed_dim=24,
                             num_heads=[2, 2], mlp_ratio=2, upsampler="pixelshuffledirect", resi_connection="1conv"),
}
EXPECT = {"span": ("SPAN", "edgesr:span"), "compact": ("Compact", "spandrel"), "plksr": ("PLKSR", "spandrel"),
          "realplksr": ("PLKSR", "spandrel"),  # spandrel files RealPLKSR under the PLKSR id
          "omnisr": ("OmniSR", "edgesr:omnisr"), "safmn": ("SAFMN", "edgesr:safmn"),
          "swinir": ("SwinIR", "edgesr:swinir")}



def _ort(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", CASES)
def test_bridge_loads_exports_and_matches_spandrel(name, tmp_path):
    torch.manual_seed(0)
    ref = _randomized(CASES[name](), seed=1)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    bm = load_with_spandrel(sd)
    assert (bm.arch_id, bm.via) == EXPECT[name]
    assert type(bm.spandrel_model).__name__ == type(ref).__name__
    assert bm.parity_vs_spandrel is not None and bm.parity_vs_spandrel < TOL
    if bm.via.startswith("edgesr:"):
        assert is_deploy_form(bm.module) and bm.spec.form == "deploy"
    res = export_spandrel(sd, tmp_path / f"{name}.onnx", simplify=False)
    assert res.metadata["spandrel_arch"] == f'{bm.arch_id}'
    sess = _ort(res.path)
    for i, (n, h, w) in enumerate([(1, 16, 16), (1, 23, 17), (2, 12, 30)]):
        x = np.random.default_rng(i).random((n, 3, h, w), dtype=np.float32)
        with torch.inference_mode():
            want = ref(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"input": x})[0]
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) < TOL, (name, (n, h, w))


def test_span_bridge_fuses_conv3xc():
    ref = _randomized(SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=2), seed=2)
    bm = load_with_spandrel(ref.state_dict())
    keys = set(bm.module.state_dict())
    assert not any(".sk." in k or ".conv.0." in k for k in keys)
    assert any(k.endswith("eval_conv.weight") for k in keys)


def test_unknown_checkpoint_is_a_clear_error():
    from edgesr.errors import UnknownArchitecture

    with pytest.raises(UnknownArchitecture, match="spandrel does not recognise"):
        load_with_spandrel({"foo.weight": torch.zeros(3, 3, 3, 3)})


def test_swinir_outside_edgesr_family_falls_back_and_its_fixed_size_graph_is_refused(tmp_path):
    """A SwinIR configuration edgesr does not implement (classical upsampler) runs through
    spandrel's module; tracing that module bakes the sample H/W into its Reshapes, so the dynamic
    export check fails with an ExportError naming ONNX Runtime and the Reshape node."""
    from edgesr.errors import ExportError

    ref = _randomized(SwinIR(upscale=2, img_size=16, window_size=8, img_range=1.0, depths=[1], embed_dim=12,
                             num_heads=[2], mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv"), 3)
    bm = load_with_spandrel(ref.state_dict())
    assert bm.via == "spandrel" and any("does not cover" in n for n in bm.notes)
    assert bm.parity_vs_spandrel == 0.0
    with pytest.raises(ExportError, match=r"ONNX Runtime.*Reshape"):
        export_spandrel(ref.state_dict(), tmp_path / "s.onnx", simplify=False)

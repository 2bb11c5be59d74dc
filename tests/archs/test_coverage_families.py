"""Coverage families (SCNet, GhostSR, recurrent, IGConv, RDB+ESA+CA, ELAN, ShuffleMixer, SAFMN):
training -> deploy exactness, dynamic-shape ONNX parity with ORT, registry round trips,
parameter counts against the papers, shift-op forms, and the unsupported-operator errors.

Small variants only; every export runs without onnxslim (tests/export/test_export.py covers that).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from edgesr import registry
from edgesr.errors import ExportError
from edgesr.export import export_onnx
from edgesr.reparam import is_deploy_form, reparameterize
from edgesr.shift import MODES, ChannelShift, elan_groups, groups_from_kernel, one_hot_kernel, shift, shift8_groups

SMALL = ["scnet-f16b4-x4", "ghostsr-f16b2-x4", "recurrent-c32t4-x4", "igconv-f16b2-x3", "rdbesa-f16m2-x4",
         "elan-c24m4-x4", "shufflemixer-f16b1-x4", "safmn-f16b2-x4", "omnisr-f16-x4", "swinir-d24-x4"]
# (N, H, W): square, odd non-square, batch 2 wide
SIZES = [(1, 16, 16), (1, 23, 17), (2, 15, 36)]
TOL = 1e-5


def _rand(shape, seed):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@torch.no_grad()
def _perturb(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial weights (identity-like inits would hide layout bugs); BN stats too."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.02)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 3)
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _models(name):
    arch, _ = registry.get_variant(name)
    torch.manual_seed(0)
    if "training" in arch.forms:
        lm = registry.build_variant(name, "training")
        _perturb(lm.module)
        return arch, lm.module.eval(), reparameterize(lm.module), lm.spec
    lm = registry.build_variant(name, "deploy")
    _perturb(lm.module)
    return arch, None, lm.module.eval(), lm.spec


def _ort(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", SMALL)
def test_family_exports_dynamic_with_parity(name, tmp_path):
    arch, train, dep, spec = _models(name)
    assert is_deploy_form(dep)
    if train is not None:  # training -> deploy is exact
        x = torch.from_numpy(_rand((1, 3, 19, 21), 7))
        with torch.inference_mode():
            err = (train(x) - dep(x)).abs().max().item()
        assert err < TOL, (name, "reparam", err)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_onnx(dep, spec, tmp_path / f"{name}.onnx", simplify=False, check=False)
    sess = _ort(res.path)
    for i, (n, h, w) in enumerate(SIZES):
        x = _rand((n, 3, h, w), i)
        with torch.inference_mode():
            ref = dep(torch.from_numpy(x)).numpy()
        out = sess.run(None, {"input": x})[0]
        assert out.shape == (n, 3, h * spec.scale, w * spec.scale)
        err = float(np.abs(out - ref).max())
        assert err < TOL, (name, (n, h, w), err)


@pytest.mark.parametrize("name", SMALL)
def test_registry_detects_and_reloads_both_forms(name):
    arch, train, dep, spec = _models(name)
    x = torch.from_numpy(_rand((1, 3, 17, 19), 3))
    for form, module in (("training", train), ("deploy", dep)):
        if module is None:
            continue
        sd = module.state_dict()
        a, f = registry.detect(sd)
        assert (a.name, f) == (arch.name, form)
        loaded = registry.load_model(sd, scale=spec.scale)
        assert loaded.spec.scale == spec.scale
        with torch.inference_mode():
            assert torch.equal(loaded.module(x), module(x))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch,hp,published", [
    ("elan", dict(scale=2), 582_000), ("elan", dict(scale=3), 590_000), ("elan", dict(scale=4), 601_000),
    ("safmn", dict(scale=2), 228_000), ("safmn", dict(scale=3), 233_000), ("safmn", dict(scale=4), 240_000),
    ("shufflemixer", dict(scale=2), 394_000), ("shufflemixer", dict(scale=4), 411_000),
    ("shufflemixer", dict(scale=4, n_feats=32, kernel_size=3), 113_000),
])
def test_param_counts_match_the_papers(arch, hp, published):
    a = registry.get_architecture(arch)
    base = {"elan": dict(m_elan=24, c_elan=60, n_share=1, r_expand=2), "safmn": dict(dim=36, n_blocks=8),
            "shufflemixer": dict(n_feats=64, kernel_size=7, n_blocks=5)}[arch]
    with torch.device("meta"):
        m = a.build({**base, "colors": 3, **hp}, a.forms[0])
    assert abs(_params(m) - published) <= 1000, _params(m)


@pytest.mark.parametrize("scale,published", [(2, 878_000), (3, 886_000), (4, 897_000)])
def test_swinir_light_param_count_matches_the_paper(scale, published):
    """The paper's counts leave out the relative-position bias tables (24 x 225 x 6 = 32,400)."""
    a = registry.get_architecture("swinir")
    hp = dict(registry.get_variant("swinir-light-x4")[1].hyperparams, scale=scale)
    with torch.device("meta"):
        m = a.build(hp, "deploy")
    tables = sum(p.numel() for n, p in m.named_parameters() if n.endswith("relative_position_bias_table"))
    assert tables == 32_400
    assert abs(_params(m) - tables - published) <= 1000, _params(m) - tables


def test_recurrent_is_under_75k_params():
    for v in ("recurrent-c48t6-x2", "recurrent-c48t6-x4", "recurrent-c32t4-x4"):
        n = _params(registry.build_variant(v, "deploy").module)
        assert n < 75_000, (v, n)
    # weights are shared across steps: more steps, same parameters
    a = registry.get_architecture("recurrent")
    hp = dict(colors=3, scale=4, channels=48)
    assert _params(a.build({**hp, "steps": 2}, "deploy")) == _params(a.build({**hp, "steps": 12}, "deploy")) == 63_696


# ---- shift ops ---------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [shift8_groups(16), elan_groups(23), [(0, 5, 1, -1), (5, 9, 0, 0), (9, 12, -2, 2)]])
def test_shift_forms_agree_and_match_a_direct_definition(groups):
    c = groups[-1][1]
    x = torch.randn(2, c, 7, 9)
    ref = torch.zeros_like(x)
    for a, b, dy, dx in groups:  # out[y, x] = in[y - dy, x - dx], zero outside
        for yy in range(7):
            for xx in range(9):
                sy, sx = yy - dy, xx - dx
                if 0 <= sy < 7 and 0 <= sx < 9:
                    ref[:, a:b, yy, xx] = x[:, a:b, sy, sx]
    for mode in MODES:
        assert torch.equal(shift(x, groups, mode), ref), mode
    assert groups_from_kernel(one_hot_kernel(groups)) == [tuple(g) for g in groups]


def test_groups_from_kernel_rejects_a_non_shift():
    k = one_hot_kernel(elan_groups(10))
    k[3, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="not one-hot"):
        groups_from_kernel(k)


@pytest.mark.parametrize("mode", MODES)
def test_every_shift_form_exports_with_dynamic_shapes(mode, tmp_path):
    from edgesr.spec import Spec

    m = nn.Sequential(nn.Conv2d(3, 16, 1), ChannelShift(shift8_groups(16), mode), nn.Conv2d(16, 3, 1))
    res = export_onnx(m, Spec(arch="t", scale=1), tmp_path / "s.onnx", simplify=False, check=False)
    x = _rand((1, 3, 13, 8), 0)
    with torch.inference_mode():
        ref = m(torch.from_numpy(x)).numpy()
    assert np.abs(_ort(res.path).run(None, {"input": x})[0] - ref).max() < 1e-6


# ---- family specifics ----------------------------------------------------------------------

def test_ghostsr_eval_direction_collapses_to_the_fixed_shift():
    from edgesr.archs.ghostsr import GhostConv

    g = GhostConv(8, 8).eval()
    with torch.no_grad():
        g.shift_logits.zero_()
        g.shift_logits[0, 0, 2, 0] = 5.0  # row 2, col 0 -> out[y, x] = in[y + 1, x - 1]
    dep = g.reparameterize()
    assert g.offset() == (-1, 1)
    x = torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        assert torch.equal(g(x), dep(x))
        y = g.primary_conv(x)
        assert torch.equal(dep(x)[:, 4:, :-1, 1:], y[:, :4, 1:, :-1])
    # the direction survives a state_dict round trip
    dep2 = type(dep)(8, 8)
    dep2.load_state_dict(dep.state_dict())
    assert dep2.shift.groups == dep.shift.groups


def test_igconv_one_model_serves_x2_x3_x4_and_a_scale_input_onnx(tmp_path):
    from edgesr.archs.igconv import IGConvSR, export_multiscale_onnx

    torch.manual_seed(0)
    model = IGConvSR(scale=4, num_feat=16, num_block=1, implicit_dim=32, latent_layers=2).eval()
    _perturb(model, 1)
    x = torch.from_numpy(_rand((1, 3, 11, 14), 2))
    for s in (2, 3, 4):
        dep = model.reparameterize(s)
        assert dep.upsample.weight.shape[0] == 3 * s * s
        with torch.inference_mode():
            assert (model(x, s) - dep(x)).abs().max().item() < TOL
            assert dep(x).shape == (1, 3, 11 * s, 14 * s)
    info = export_multiscale_onnx(model, tmp_path / "ms.onnx")
    assert set(info["max_abs_vs_torch"]) == {2, 3, 4}
    assert max(info["max_abs_vs_torch"].values()) < TOL
    assert "DepthToSpace" not in info["op_counts"] and "Range" in info["op_counts"]


def test_igconv_geo_ensemble_matches_the_eight_transform_average():
    from edgesr.archs.igconv import IGConv

    up = IGConv(4, 3, 16, 1, geo_ensemble=True).eval()
    k = up.kernel(2)
    assert torch.allclose(k, torch.rot90(k, 1, [2, 3]), atol=1e-6)
    assert torch.allclose(k, k.flip(3), atol=1e-6)


def test_safmn_exact_pool_equals_adaptive_max_pool():
    from edgesr.archs.safmn import adaptive_max_pool_exact

    for h, w in ((8, 8), (17, 23), (31, 9), (64, 40)):
        x = torch.randn(1, 3, h, w)
        for k in (2, 4, 8):
            assert torch.equal(adaptive_max_pool_exact(x, k), nn.functional.adaptive_max_pool2d(x, (h // k, w // k)))


def test_safmn_adaptive_pool_refuses_onnx_naming_the_operator(tmp_path):
    from edgesr.archs.safmn import set_pool

    lm = registry.build_variant("safmn-f16b2-x4", "deploy")
    set_pool(lm.module, "adaptive")
    with pytest.raises(ExportError, match=r"adaptive_max_pool2d.*ONNX"):
        export_onnx(lm.module, lm.spec, tmp_path / "a.onnx", simplify=False)


def test_elan_reparam_refuses_a_checkpoint_whose_shift_is_not_one_hot():
    lm = registry.build_variant("elan-c24m4-x4", "training")
    sd = lm.module.state_dict()
    key = next(k for k in sd if k.endswith("conv0.shift_conv.weight"))
    sd[key] = sd[key] * 0.5
    lm.module.load_state_dict(sd)
    with pytest.raises(ValueError, match="not one-hot"):
        reparameterize(lm.module)


def test_spandrel_bridge_without_spandrel_names_the_extra(monkeypatch):
    import sys

    from edgesr.errors import BackendUnavailable
    from edgesr.spandrel_bridge import load_with_spandrel

    monkeypatch.setitem(sys.modules, "spandrel", None)  # import spandrel -> ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgesr\[spandrel\]'"):
        load_with_spandrel({"conv.weight": torch.zeros(1, 1, 1, 1)})


def _coverage_module():
    import importlib.util
    from pathlib import Path

    p = Path(__file__).resolve().parents[2] / "benchmarks" / "coverage.py"
    spec = importlib.util.spec_from_file_location("edgesr_bench_coverage", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_coverage_readme_section_is_replaced_between_markers(tmp_path):
    cov = _coverage_module()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{cov.START}\nold table\n{cov.END}\nafter\n")
    cov.write_readme_section(readme, "| new | table |\n")
    assert readme.read_text() == f"# x\n\nbefore\n{cov.START}\n| new | table |\n{cov.END}\nafter\n"
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        cov.write_readme_section(tmp_path / "plain.md", "x")


def test_mac_counter_counts_convs_linears_and_matmuls():
    cov = _coverage_module()
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    with torch.inference_mode(), cov.MacCounter() as c:
        m(torch.rand(1, 3, 5, 7))
        torch.rand(2, 4, 6) @ torch.rand(6, 3)
        nn.functional.linear(torch.rand(10, 4), torch.rand(5, 4))
    assert c.macs == 35 * 8 * 27 + 35 * 8 * 9 + 2 * 4 * 3 * 6 + 10 * 5 * 4

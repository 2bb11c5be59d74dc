"""Training form == reparameterized deploy form, for every family and block kind.

Blocks: fp32 on images including 1x1 and odd non-square sizes (borders included),
random weights, randomised BatchNorm running statistics (eval mode), error measured as
|diff| / max(1, |ref|.max()) < 1e-5. Whole networks: float64 (reparameterization must
be exact, so the tolerance is tight), plus checkpoint round trips through the registry,
strict key checking, detection without false positives, and the receptive fields that
`describe` reports.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgesr import registry
from edgesr.archs.ecbsr import ECB, ECBSR
from edgesr.archs.etds import ETDS
from edgesr.archs.fmen import FMEN, HFAB, RRRB
from edgesr.archs.reprfn import RepBlock, RepRFN
from edgesr.archs.repsr import RepSRNet, RepVGGBlock
from edgesr.archs.rlfn import RLFN
from edgesr.archs.sesr import SESR, CollapsibleLinearBlock
from edgesr.archs.span import SPAN, Conv3XC
from edgesr.errors import KeyMismatch, ScaleMismatch
from edgesr.reparam import reparameterize, training_blocks

TOL = 1e-5
TOL64 = 1e-10
SIZES = [(1, 1), (17, 23), (2, 5), (6, 3)]
MINE = ("repsr", "sesr", "span", "fmen", "reprfn", "rlfn")

channels = st.integers(1, 6)
sizes = st.sampled_from(SIZES)
seeds = st.integers(0, 2**31 - 1)
fast = settings(max_examples=10, deadline=None)


# ---- helpers ------------------------------------------------------------------------------

def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return float((out - ref).abs().max() / max(1.0, float(ref.abs().max())))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random weights of O(1) effect, non-trivial BN statistics; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
            sign = torch.where(torch.rand(c, generator=g) < 0.2, -1.0, 1.0)
            m.weight.copy_((torch.rand(c, generator=g) + 0.5) * sign)
            m.bias.copy_(torch.randn(c, generator=g) * 0.5)
            continue
        for _, p in m.named_parameters(recurse=False):
            if isinstance(m, nn.PReLU):
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.05)
            elif p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def image(seed: int, c: int, hw, dtype=torch.float32, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return (torch.rand(batch, c, *hw, generator=g) * 2 - 1).to(dtype)


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def reparam_checked(model: nn.Module) -> nn.Module:
    """reparameterize() + the invariants: caller's model untouched, no training block left."""
    before, n_before, kind = snapshot(model), len(training_blocks(model)), type(model)
    assert n_before > 0
    deploy = reparameterize(model)
    assert training_blocks(deploy) == []
    assert type(model) is kind and len(training_blocks(model)) == n_before
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    return deploy


def n_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def check_block(block: nn.Module, cin: int, hw, seed: int, convs: int | None = 1) -> None:
    randomize_(block, seed)
    deploy = reparam_checked(block)
    if convs is not None:
        assert n_convs(deploy) == convs
    x = image(seed, cin, hw)
    with torch.no_grad():
        assert rel_err(deploy(x), block(x)) < TOL


# ---- every block kind, fp32 ---------------------------------------------------------------

@fast
@given(cin=channels, cout=channels, same=st.booleans(), with_idt=st.booleans(),
       act=st.sampled_from(["prelu", "relu", "linear"]), hw=sizes, seed=seeds)
def test_ecb_block(cin, cout, same, with_idt, act, hw, seed):
    cout = cin if same else cout
    check_block(ECB(cin, cout, act, with_idt=with_idt), cin, hw, seed)


@fast
@given(cin=channels, cout=channels, same=st.booleans(), act=st.sampled_from(["relu", "prelu", "linear"]),
       hw=sizes, seed=seeds)
def test_repvgg_block_with_random_bn(cin, cout, same, act, hw, seed):
    cout = cin if same else cout
    block = RepVGGBlock(cin, cout, act)
    assert (block.rbr_identity is not None) == (cin == cout)
    check_block(block, cin, hw, seed)


@fast
@given(cin=channels, cout=channels, residual=st.booleans(), k=st.sampled_from([3, 5]), tmp=st.integers(1, 12),
       act=st.sampled_from(["relu", "prelu", "identity"]), hw=sizes, seed=seeds)
def test_sesr_collapsible_block(cin, cout, residual, k, tmp, act, hw, seed):
    cout = cin if residual else cout
    check_block(CollapsibleLinearBlock(cin, cout, tmp, k, act, residual), cin, hw, seed)


@fast
@given(cin=channels, cout=channels, gain=st.integers(1, 3), relu=st.booleans(), hw=sizes, seed=seeds)
def test_span_conv3xc(cin, cout, gain, relu, hw, seed):
    block = Conv3XC(cin, cout, gain, relu=relu)
    check_block(block, cin, hw, seed)


@fast
@given(n=channels, ratio=st.integers(1, 3), hw=sizes, seed=seeds)
def test_fmen_rrrb(n, ratio, hw, seed):
    check_block(RRRB(n, ratio), n, hw, seed)


@fast
@given(n=channels, mid=channels, up=st.integers(0, 2), ratio=st.integers(1, 2), hw=sizes, seed=seeds)
def test_fmen_hfab_with_random_bn(n, mid, up, ratio, hw, seed):
    check_block(HFAB(n, up, mid, ratio), n, hw, seed, convs=2 + 2 * up)


@fast
@given(c=channels, hw=sizes, seed=seeds)
def test_reprfn_repblock(c, hw, seed):
    check_block(RepBlock(c), c, hw, seed)


@fast
@given(colors=st.integers(1, 3), extra=st.integers(0, 2), backbone=st.integers(1, 4), scale=st.sampled_from([2, 3, 4]),
       num_block=st.integers(1, 2), add=st.booleans(), advanced=st.booleans(),
       hw=st.sampled_from([(1, 1), (17, 23), (5, 2)]), seed=seeds)
def test_etds_dual_stream(colors, extra, backbone, scale, num_block, add, advanced, hw, seed):
    fr = colors + extra
    model = ETDS(colors, scale, num_block, fr + backbone, fr, add_residual=add, advanced_residual=advanced).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # perturb the identity-initialised model; keep outputs mostly inside [0, 1]
        for _name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.conv_last.weight.mul_(0.2)
    deploy = reparam_checked(model)
    x = torch.rand(2, colors, *hw, generator=g) * 0.8 + 0.1
    with torch.no_grad():
        ref, out = model(x), deploy(x)
    inside = ((ref > 0.01) & (ref < 0.99)).float().mean()
    assert inside > 0.3  # the comparison is not just two saturated clips
    # The deploy form ends in ETDS's ReLU clip: exact wherever the training output is in [0, 1].
    assert rel_err(out, ref.clamp(0, 1)) < TOL


# ---- whole networks, float64 --------------------------------------------------------------

NETWORKS = {
    "repsr": lambda: RepSRNet(colors=3, scale=3, num_block=2, num_feat=6, act_type="prelu"),
    "repsr-relu-x2": lambda: RepSRNet(colors=1, scale=2, num_block=1, num_feat=4, act_type="relu"),
    "sesr": lambda: SESR(colors=3, scale=2, num_channels=5, num_lblocks=2, tmp_channels=12, act="prelu"),
    "sesr-concat-clip": lambda: SESR(colors=1, scale=3, num_channels=4, num_lblocks=1, tmp_channels=8,
                                     concat_residual=True, clip_output=True),
    "span": lambda: SPAN(colors=3, scale=2, feature_channels=6, num_blocks=2),
    "span-no-norm": lambda: SPAN(colors=1, scale=3, feature_channels=4, num_blocks=1, norm=False),
    "fmen": lambda: FMEN(colors=3, scale=2, n_feats=6, mid_feats=7, down_blocks=2, up_blocks=(1, 2, 0)),
    "reprfn": lambda: RepRFN(colors=3, scale=2, feature_nums=5, num_blocks=2, esa_channels=3),
}
ARCH_OF = {"repsr-relu-x2": "repsr", "sesr-concat-clip": "sesr", "span-no-norm": "span"}


@pytest.mark.parametrize("case", sorted(NETWORKS))
def test_network_reparameterization_exact_in_float64(case):
    model = randomize_(NETWORKS[case](), seed=len(case)).double()
    deploy = reparam_checked(model)
    assert all(p.dtype == torch.float64 for p in deploy.parameters())
    shapes = [(17, 23), (15, 16)] if case == "reprfn" else [(17, 23), (1, 1), (3, 8)]  # ESA needs >= 15
    for shape in shapes:
        x = image(3, model_colors(model), shape, torch.float64).abs()
        with torch.no_grad():
            assert rel_err(deploy(x), model(x)) < TOL64, shape


def model_colors(model: nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


def test_ecbsr_network_reparameterization_fp32():
    model = randomize_(ECBSR(colors=3, scale=2, num_block=2, num_feat=6, with_idt=True), seed=5)
    deploy = reparam_checked(model)
    x = image(0, 3, (17, 23)).abs()
    with torch.no_grad():
        assert rel_err(deploy(x), model(x)) < TOL


# ---- checkpoints through the registry -----------------------------------------------------

def sample_state_dicts():
    """(arch, form, state_dict) of small models of every form, mine and ECBSR/ETDS."""
    out = []
    for case, make in sorted(NETWORKS.items()):
        model = randomize_(make(), seed=1)
        out.append((ARCH_OF.get(case, case), "training", model.state_dict()))
        out.append((ARCH_OF.get(case, case), "deploy", reparameterize(model).state_dict()))
    rlfn = randomize_(RLFN(colors=3, scale=2, feature_channels=6, mid_channels=5, num_blocks=2, esa_channels=3), 2)
    out.append(("rlfn", "deploy", rlfn.state_dict()))
    for make in (lambda: ECBSR(colors=3, scale=2, num_block=1, num_feat=4),
                 lambda: ETDS(colors=3, scale=2, num_block=1, num_feat=6, num_residual_feat=3)):
        model = make().eval()
        name = "ecbsr" if isinstance(model, ECBSR) else "etds"
        out.append((name, "training", model.state_dict()))
        out.append((name, "deploy", reparameterize(model).state_dict()))
    return out


SAMPLES = sample_state_dicts()
SAMPLE_IDS = [f"{a}-{f}-{i}" for i, (a, f, _) in enumerate(SAMPLES)]


@pytest.mark.parametrize("arch,form,sd", SAMPLES, ids=SAMPLE_IDS)
def test_detection_is_unique_across_all_registered_families(arch, form, sd):
    hits = {a.name: f for a in registry.architectures() if (f := a.detect(sd)) is not None}
    assert hits == {arch: form}
    assert registry.detect(sd)[0].name == arch


def test_my_families_claim_no_other_familys_checkpoints():
    mine = [registry.get_architecture(n) for n in MINE]
    checked = 0
    for other in registry.architectures():
        if other.name in MINE or not other.variants:
            continue
        for form in other.forms:
            try:
                with torch.device("meta"):
                    sd = other.build(dict(other.variants[0].hyperparams), form).state_dict()
            except Exception:  # a family that cannot be built on the meta device
                try:
                    sd = other.build(dict(other.variants[0].hyperparams), form).state_dict()
                except Exception:  # pragma: no cover - another family's own bug, tested there
                    continue
            assert [a.name for a in mine if a.detect(sd) is not None] == [], (other.name, form)
            checked += 1
    assert checked >= 4  # ecbsr + etds in both forms at least


@pytest.mark.parametrize("arch,form,sd", SAMPLES, ids=SAMPLE_IDS)
def test_registry_round_trip_gives_identical_outputs(arch, form, sd):
    loaded = registry.load_model(sd)
    assert (loaded.arch.name, loaded.spec.form) == (arch, form)
    again = registry.load_model(loaded.module.state_dict())
    assert again.spec.hyperparams == loaded.spec.hyperparams
    x = image(7, loaded.spec.in_channels, (17, 23)).abs()
    with torch.no_grad():
        assert torch.equal(again.module(x), loaded.module(x))


def check_extra_and_misshaped_keys_are_named(sd) -> None:
    extra = dict(sd, **{"zz_unexpected.weight": torch.zeros(2)})
    with pytest.raises(KeyMismatch, match=r"unexpected keys: zz_unexpected\.weight"):
        registry.load_model(extra)
    biases = sorted(k for k in sd if k.endswith(".bias") and sd[k].dim() == 1)
    k = biases[len(biases) // 2]
    misshaped = dict(sd, **{k: torch.zeros(sd[k].shape[0] + 1)})
    with pytest.raises(KeyMismatch, match=re.escape(k) + r": checkpoint"):
        registry.load_model(misshaped)


MINE_SAMPLES = [s for s in SAMPLES if s[0] in MINE]
MINE_IDS = [i for i, s in zip(SAMPLE_IDS, SAMPLES) if s[0] in MINE]


@pytest.mark.parametrize("arch,form,sd", MINE_SAMPLES, ids=MINE_IDS)
def test_strict_loading_names_missing_extra_and_misshaped_keys(arch, form, sd):
    a = registry.get_architecture(arch)
    keys = sorted(sd)
    # every key whose absence still leaves the checkpoint recognisable (detect keys excluded)
    removable = [k for k in keys if a.detect({kk: v for kk, v in sd.items() if kk != k}) == form]
    assert len(removable) >= len(keys) // 2
    for k in removable[:: max(1, len(removable) // 12)] + removable[-1:]:
        bad = {kk: v for kk, v in sd.items() if kk != k}
        with pytest.raises(KeyMismatch, match=re.escape(k)):
            registry.load_model(bad)
    check_extra_and_misshaped_keys_are_named(sd)


@pytest.mark.parametrize("arch,form,sd", [s for s in SAMPLES if s[0] not in MINE],
                         ids=[i for i, s in zip(SAMPLE_IDS, SAMPLES) if s[0] not in MINE])
def test_strict_loading_names_extra_and_misshaped_keys_ecbsr_etds(arch, form, sd):
    # (A missing first PReLU slope / first add_residual weight makes their `infer` guess another
    # configuration, so the error names a neighbouring key instead: reported, not covered here.)
    check_extra_and_misshaped_keys_are_named(sd)


@pytest.mark.parametrize("arch,form,sd", MINE_SAMPLES, ids=MINE_IDS)
def test_scale_is_inferred_and_a_wrong_hint_is_refused(arch, form, sd):
    loaded = registry.load_model(sd)
    s = loaded.spec.scale
    assert registry.load_model(sd, scale=s).spec.scale == s
    with pytest.raises(ScaleMismatch):
        registry.load_model(sd, scale=s + 1)


@pytest.mark.parametrize("name", MINE)
def test_every_variant_is_recognised_from_its_shapes(name):
    a = registry.get_architecture(name)
    assert a.variants
    for v in a.variants:
        for form in a.forms:
            with torch.device("meta"):
                sd = a.build(dict(v.hyperparams), form).state_dict()
            assert a.detect(sd) == form
            hp = a.infer(sd, form, None)
            assert registry.match_variant(a, hp) == v.name
            spec = a.describe(hp, form)
            assert spec.scale == v.hyperparams["scale"] and spec.receptive_field > 0
    assert a.reparameterizable == (name != "rlfn")


def test_rlfn_is_deploy_only_and_needs_15_pixels():
    a = registry.get_architecture("rlfn")
    assert a.forms == ("deploy",)
    with pytest.raises(KeyMismatch):
        registry.build_variant("rlfn-ntire-x4", "training")
    lm = registry.build_variant("rlfn-ntire-x4", "deploy")
    assert lm.spec.min_size == 15 and lm.spec.hyperparams["mid_channels"] == 48
    with torch.no_grad():
        assert lm.module(torch.rand(1, 3, 15, 16)).shape == (1, 3, 60, 64)


# ---- SPAN: full and slim checkpoints ------------------------------------------------------

def test_span_slim_and_full_checkpoints_of_the_same_weights_agree():
    model = randomize_(SPAN(colors=3, scale=4, feature_channels=6, num_blocks=3), seed=11)
    with torch.no_grad():  # trained SPANs undo the x255 input scaling in conv_1; random weights do not
        model.conv_1.sk.weight.div_(255)
        model.conv_1.conv[2].weight.div_(255)
    full = model.state_dict()  # its eval_conv copies are random, i.e. stale
    slim = reparameterize(model).state_dict()
    assert set(slim) < set(full)
    assert not any(".sk." in k or ".conv." in k for k in slim)
    # what the official code saves: eval_conv refreshed from the branches, then branches dropped
    fused = {f"{n}.eval_conv.weight": m.equivalent_kernel_bias()[0] for n, m in model.named_modules()
             if isinstance(m, Conv3XC)}
    fused.update({f"{n}.eval_conv.bias": m.equivalent_kernel_bias()[1] for n, m in model.named_modules()
                  if isinstance(m, Conv3XC)})
    refreshed = {k: fused.get(k, v).detach() for k, v in full.items()}
    official_slim = {k: refreshed[k] for k in slim}

    loaded = {name: registry.load_model(sd) for name, sd in
              (("full", full), ("refreshed", refreshed), ("slim", slim), ("official_slim", official_slim))}
    assert [lm.spec.form for lm in loaded.values()] == ["training", "training", "deploy", "deploy"]
    assert len({repr(lm.spec.hyperparams) for lm in loaded.values()}) == 1
    x = image(2, 3, (17, 23)).abs()
    with torch.no_grad():
        ref = loaded["full"].module(x)
        for name, lm in loaded.items():
            assert rel_err(lm.module(x), ref) < TOL, name

    # Exactly the same function: float64 checkpoints, loaded through the registry (which checks
    # detection, hyperparameters and keys), then given back their float64 weights.
    model = model.double()
    x = x.double()
    outs = []
    for sd in (model.state_dict(), reparameterize(model).state_dict()):
        lm = registry.load_model(sd)
        lm.module.double().load_state_dict(sd)
        with torch.no_grad():
            outs.append(lm.module(x))
    assert rel_err(outs[1], outs[0]) < TOL64


def test_span_no_norm_marker_round_trips():
    model = SPAN(colors=1, scale=2, feature_channels=4, num_blocks=1, norm=False)
    sd = model.state_dict()
    assert "no_norm" in sd
    assert registry.load_model(sd).spec.hyperparams["norm"] is False
    assert registry.load_model(SPAN(colors=3, scale=2, feature_channels=4, num_blocks=1).state_dict()) \
        .spec.hyperparams["norm"] is True


# ---- receptive fields reported by describe ------------------------------------------------

def support_radius(model: nn.Module, colors: int, scale: int, size: int) -> int:
    """Chebyshev radius of the LR pixels that influence the HR pixels of the centre LR pixel."""
    x = torch.rand(1, colors, size, size, dtype=torch.float64, requires_grad=True)
    c = size // 2
    model(x)[..., c * scale:(c + 1) * scale, c * scale:(c + 1) * scale].sum().backward()
    nz = (x.grad.abs().sum(1)[0] != 0).nonzero()
    return int((nz - c).abs().max())


RF_CASES = {
    "repsr": (lambda: RepSRNet(colors=3, scale=2, num_block=2, num_feat=4, act_type="prelu"), True),
    "sesr": (lambda: SESR(colors=3, scale=2, num_channels=4, num_lblocks=2, tmp_channels=6, act="prelu"), True),
    "span": (lambda: SPAN(colors=3, scale=2, feature_channels=4, num_blocks=2), True),
    "fmen": (lambda: FMEN(colors=3, scale=2, n_feats=4, mid_feats=6, down_blocks=1, up_blocks=(1, 1)), True),
    "reprfn": (lambda: RepRFN(colors=3, scale=2, feature_nums=4, num_blocks=1, esa_channels=3), False),
    "rlfn": (lambda: RLFN(colors=3, scale=2, feature_channels=4, num_blocks=1, esa_channels=3), False),
}


@pytest.mark.parametrize("name", sorted(RF_CASES))
def test_describe_receptive_field_matches_the_network(name):
    make, exact = RF_CASES[name]
    model = randomize_(make(), seed=4).double()
    lm = registry.load_model(model.state_dict())
    rf = lm.spec.receptive_field
    r = support_radius(model, 3, lm.spec.scale, 2 * rf + 7)
    # conv-only networks: exact; ESA (pooled, resized attention) networks: an upper bound
    assert r == rf if exact else 0 < r <= rf

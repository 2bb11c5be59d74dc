"""The generic Equivalent Transformation pass (edgesr.reparam.et) on synthetic networks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgesr.archs.abpn import ABPN, ABPN_ET
from edgesr.archs.ecbsr import ECBSR
from edgesr.archs.espcn import ESPCN
from edgesr.archs.et_forms import ECBSRET
from edgesr.archs.etds import ETDSForInference
from edgesr.archs.fsrcnn import FSRCNN
from edgesr.archs.plain import ETDSOnlyET, Plain
from edgesr.errors import EdgesrError
from edgesr.registry import build_variant, can_equivalent_transform, et_target
from edgesr.reparam import ReparamError, reparameterize
from edgesr.reparam.et import (
    ETNet,
    NotTransformable,
    carried_extra,
    equivalent_transform,
    equivalent_transform_loaded,
    extract_chain,
    original_width,
    padded_out,
)
from edgesr.spec import Spec


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights large enough that outputs leave [0, 1] (so the clamp matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # PReLU slopes: include negative ones
                p.copy_(torch.rand(p.shape, generator=g) * 1.2 - 0.6)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.25 if p.dim() > 1 else 0.2))
    return model.eval()


def _inputs(colors: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, colors, 13, 11, generator=g)
    x[1] = 0.0  # the extremes of the input range
    x[2, :, ::2] = 1.0
    return x


def _assert_equivalent(model: nn.Module, et: nn.Module, colors: int = 3) -> None:
    x = _inputs(colors)
    with torch.no_grad():
        ref = model(x)
        got = et(x)
    assert got.shape == ref.shape
    assert (ref < 0).any() or (ref > 1).any(), "test model never leaves [0, 1]; the clamp would be untested"
    # float32 rounding grows with the (pre-clamp) magnitude of the random nets' outputs
    assert (got - ref.clamp(0, 1)).abs().max() < 1e-5 * max(1.0, float(ref.abs().max()))


def _kinds(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if not list(m.children())}


PURE = {nn.Conv2d, nn.ReLU, nn.PReLU, nn.PixelShuffle}


# ---- families -> official ET layouts ------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 3, 4])
def test_ecbsr_deploy_becomes_ecbsr_et(scale):
    model = _randomize(ECBSR(3, scale, num_block=2, num_feat=8, form="deploy"))
    et = equivalent_transform(model)
    assert type(et) is ECBSRET
    _assert_equivalent(model, et)
    assert _kinds(et) <= PURE
    convs = [m for m in et.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 12  # 8 + 1 zero + 3 carried
    assert convs[-1].out_channels == padded_out(3 * scale * scale)  # x3: 28


def test_ecbsr_training_form_is_reparameterized_first():
    model = _randomize(ECBSR(3, 2, num_block=1, num_feat=8, form="training"))
    et = equivalent_transform(model)
    assert type(et) is ECBSRET
    x = _inputs(3)
    with torch.no_grad():
        assert (et(x) - model(x).clamp(0, 1)).abs().max() < 1e-4


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_abpn_becomes_abpn_et_and_reparameterize_does_it(scale):
    model = _randomize(ABPN(3, scale, num_block=2, num_feat=8))
    et = equivalent_transform(model)
    assert type(et) is ABPN_ET
    _assert_equivalent(model, et)
    assert _kinds(et) <= PURE
    # the conv after ABPN's last ReLU is kept: tail conv (3s^2 + carried) -> output conv -> clip
    convs = [m for m in et.modules() if isinstance(m, nn.Conv2d)]
    out = 3 * scale * scale
    assert convs[-3].out_channels == out + carried_extra(out, 3)  # x3: 30, x2: 16, x4: 52
    assert convs[-1].kernel_size == (1, 1)
    via_reparam = reparameterize(model)
    assert type(via_reparam) is ABPN_ET
    x = _inputs(3)
    with torch.no_grad():
        assert torch.equal(via_reparam(x), et(x))


def test_plain_and_only_et_become_etds_deploy():
    plain = _randomize(Plain(3, 4, num_block=2, num_feat=8))
    et = equivalent_transform(plain)
    assert type(et) is ETDSForInference and et.conv_first.out_channels == 8  # no residual: nothing carried
    _assert_equivalent(plain, et)
    only = _randomize(ETDSOnlyET(3, 4, num_block=2, num_feat=12, num_residual_feat=3))  # backbone 9
    et2 = reparameterize(only)
    assert type(et2) is ETDSForInference and et2.conv_first.out_channels == 12
    _assert_equivalent(only, et2)


def test_source_model_is_untouched():
    model = _randomize(ABPN(3, 2, num_block=1, num_feat=8))
    before = copy.deepcopy(model.state_dict())
    equivalent_transform(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_carried_channels_hold_the_input_and_stay_nonnegative():
    model = _randomize(ECBSR(3, 2, num_block=2, num_feat=8, form="deploy"))
    et = equivalent_transform(model, layout="generic")
    assert type(et) is ETNet
    x = _inputs(3)
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o: seen.append(o)) for blk in et.body[:-2]]
    with torch.no_grad():
        et(x)
    for h in hooks:
        h.remove()
    assert len(seen) == 3
    for out in seen:  # [8 features, 1 zero channel, 3 carried colours]
        assert out.shape[1] == 12
        assert torch.equal(out[:, 9:], x)
        assert (out[:, 9:] >= 0).all()
        assert (out[:, 8] == 0).all()


# ---- generic chains ---------------------------------------------------------------------------

class Chain(nn.Module):
    """A hand-written plain net exercising the functional forms the tracer accepts."""

    def __init__(self, colors=3, scale=2, widths=(6, 10), kernel=3, act="relu", residual=True, clamp=None,
                 groups=1, shared_prelu=False):
        super().__init__()
        self.scale, self.residual, self.clamp, self.act = scale, residual, clamp, act
        chans = [colors, *widths]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, kernel, padding=kernel // 2, groups=groups if i else 1)
            for i, (a, b) in enumerate(zip(chans, chans[1:])))
        self.prelus = nn.ModuleList(nn.PReLU(1 if shared_prelu else w) for w in widths)
        self.last = nn.Conv2d(widths[-1], colors * scale * scale, 3, padding=1)

    def forward(self, x):
        y = x
        for conv, prelu in zip(self.convs, self.prelus):
            y = conv(y)
            y = prelu(y) if self.act == "prelu" else F.relu(y) if self.act == "relu" else y
        y = self.last(y)
        if self.residual:
            y = y + x.repeat_interleave(self.scale ** 2, dim=1)
        if self.clamp == "before":
            y = torch.clamp(y, 0, 1)
        y = F.pixel_shuffle(y, self.scale)
        if self.clamp == "after":
            y = y.clamp(min=0.0, max=1.0)
        return y


@pytest.mark.parametrize("kw", [
    dict(),
    dict(act="prelu"),
    dict(act="prelu", shared_prelu=True),
    dict(act="linear"),
    dict(kernel=5),
    dict(groups=2, widths=(6, 10)),
    dict(scale=3, widths=(7, 9)),
    dict(residual=False),
    dict(colors=1, scale=3, widths=(4, 4)),
])
def test_generic_chain_equivalent(kw):
    model = _randomize(Chain(**kw))
    et = equivalent_transform(model)
    assert type(et) is ETNet
    assert _kinds(et) <= PURE
    _assert_equivalent(model, et, colors=kw.get("colors", 3))


@pytest.mark.parametrize("where", ["before", "after"])
def test_model_with_clamp(where):
    model = _randomize(Chain(clamp=where))
    et = equivalent_transform(model)
    x = _inputs(3)
    with torch.no_grad():
        assert (et(x) - model(x)).abs().max() < 1e-5


def test_pad_none_adds_only_the_colours():
    model = _randomize(ECBSR(3, 3, num_block=1, num_feat=8, form="deploy"))
    et = equivalent_transform(model, pad="none")
    assert type(et) is ETNet  # the official ECBSR_ET layout needs the padding
    widths = [m.out_channels for m in et.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [11, 11, 27, 27]
    _assert_equivalent(model, et)


def test_padding_rules():
    assert [carried_extra(w, 3) for w in (16, 28, 27, 29, 48, 12)] == [4, 4, 3, 3, 4, 4]
    assert carried_extra(16, 3, "none") == 3
    assert [padded_out(n) for n in (12, 27, 48)] == [12, 28, 48]
    assert [original_width(w, 3) for w in (20, 32, 44, 30)] == [16, 28, 40, 27]
    with pytest.raises(ValueError):
        carried_extra(16, 3, "bogus")


# ---- refusals ------------------------------------------------------------------------------

class Strided(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 12, 3, padding=1)
        self.ps = nn.PixelShuffle(2)

    def forward(self, x):
        return self.ps(self.b(F.relu(self.a(x))))


class ActAfterLast(Chain):
    def forward(self, x):
        h = F.relu(self.convs[1](F.relu(self.convs[0](x))))
        return F.pixel_shuffle(F.relu(self.last(h)) + x.repeat_interleave(4, dim=1), 2)


class WrongRepeat(Chain):
    def forward(self, x):
        y = self.last(F.relu(self.convs[1](F.relu(self.convs[0](x)))))
        return F.pixel_shuffle(y + x.repeat_interleave(2, dim=1).repeat(1, 2, 1, 1), 2)


class InnerSkip(Chain):
    def forward(self, x):
        h = F.relu(self.convs[0](x))
        h = F.relu(self.convs[1](h)) + h.sum(1, keepdim=True)
        return F.pixel_shuffle(self.last(h), 2)


@pytest.mark.parametrize("model, words", [
    (ESPCN(3, 2), "tanh"),
    (FSRCNN(3, 2), "ConvTranspose2d"),
    (Strided(), "stride"),
    (ActAfterLast(), "relu"),
    (WrongRepeat(), "repeat"),
    (InnerSkip(), "sum"),
])
def test_refuses_non_plain_networks(model, words):
    with pytest.raises(NotTransformable, match=words) as e:
        equivalent_transform(model.eval())
    assert isinstance(e.value, ReparamError) and isinstance(e.value, EdgesrError)


def test_spec_is_checked():
    model = _randomize(ABPN(3, 2, num_block=1, num_feat=8))
    with pytest.raises(NotTransformable, match="x4"):
        equivalent_transform(model, Spec(arch="abpn", scale=4))
    with pytest.raises(NotTransformable, match="range|\\[0, 1\\]"):
        equivalent_transform(model, Spec(arch="abpn", scale=2, value_range=(-1.0, 1.0)))
    et = equivalent_transform(model, Spec(arch="abpn", scale=2, size_multiple=4))
    _assert_equivalent(model, et)


# ---- registry awareness ---------------------------------------------------------------------

def test_registry_knows_which_families_transform():
    assert et_target("ecbsr", "deploy") == ("ecbsr-et", "deploy")
    assert et_target("ecbsr", "training") == ("ecbsr-et", "deploy")
    assert et_target("abpn", "training") == ("abpn", "deploy")
    assert et_target("plain", "deploy") == ("etds", "deploy")
    assert et_target("etds-only-et", "training") == ("etds", "deploy")
    for arch, form in [("espcn", "deploy"), ("fsrcnn", "deploy"), ("etds", "training"), ("abpn", "deploy"),
                       ("ecbsr-et", "deploy")]:
        assert not can_equivalent_transform(arch, form)


def test_transform_loaded_model_gets_target_spec():
    lm = build_variant("ecbsr-m4c16-x3", "deploy")
    _randomize(lm.module)
    out = equivalent_transform_loaded(lm)
    assert out.arch.name == "ecbsr-et" and out.spec.variant == "ecbsr-et-m4c16-x3" and out.spec.form == "deploy"
    assert type(out.module) is ECBSRET
    _assert_equivalent(lm.module, out.module)


def test_chain_reader_sees_residual_and_scale():
    ch = extract_chain(ABPN(3, 3, num_block=2, num_feat=8).eval())
    assert (ch.colors, ch.scale, ch.residual, ch.clamped) == (3, 3, True, False)
    assert [s.act for s in ch.steps] == ["relu"] * 4 + ["linear"]
    assert not extract_chain(Plain(3, 2, 1, 4).eval()).residual

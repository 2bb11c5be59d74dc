"""Generic reparameterization (edgesr.reparam.generic) against the hand-written one, and its traps.

Proof of generality: every registry training block and network (ECB, RepVGG, Conv3XC, RRRB +
BatchNorm, SESR collapsible blocks, RepRFN RepBlock) with random weights and random BN
statistics goes through `collapse_linear` untouched by any family knowledge; the result must
compute what `reparameterize` computes (fp32, odd sizes incl. 1x1 and non-square, borders),
with the same parameter count, the same number of convs and one collapsed region per fused
conv of the hand-written form. Traps: zero padding after a biased 1x1 (not border exact),
stacked padded 3x3s, spatially varying constants, strided convs, untraceable forwards.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_reparam_families import NETWORKS, image, randomize_, rel_err, snapshot
from torch import nn

from edgesr import registry
from edgesr.archs.ecbsr import ECB, ECBSR
from edgesr.archs.fmen import HFAB, RRRB
from edgesr.archs.reprfn import RepBlock
from edgesr.archs.repsr import RepVGGBlock
from edgesr.archs.sesr import SESR, CollapsibleLinearBlock
from edgesr.archs.span import Conv3XC
from edgesr.checkpoint import load_state_dict
from edgesr.pipeline import BUNDLED_CHECKPOINT
from edgesr.reparam import TrainingBlock, reparameterize
from edgesr.reparam.generic import GenericReparamError, collapse_linear, summary_lines

TOL = 1e-5
REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
SIZES = [(1, 1), (17, 23), (2, 5), (6, 3)]


def n_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tame_(model: nn.Module, seed: int) -> nn.Module:
    """Random weights (randomize_) at half gain, so deep fp32 activations stay O(1-10)."""
    randomize_(model, seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.mul_(0.5)
    return model


def conv_calls(model: nn.Module, x: torch.Tensor) -> int:
    """conv2d executions in one forward (modules and functional calls alike)."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (F.conv2d, torch.conv2d):
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count():
        model(x)
    return Count.n


def check_against_hand_written(model: nn.Module, cin: int, sizes=SIZES, seed: int = 0, example_hw=(9, 11),
                               **kw) -> dict:
    before = snapshot(model)
    res = collapse_linear(model, image(seed, cin, example_hw, batch=1).abs(), deploy_hooks=False, **kw)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before), "the caller's module was modified"
    assert res.module is not model
    hand = reparameterize(model)
    rep = res.report
    assert rep["verification"]["ok"], rep["verification"]
    assert rep["verification"]["max_rel_fp64"] < 1e-9
    assert json.loads(json.dumps(rep, default=str))["regions_collapsed"] == len(res.collapsed)
    worst = 0.0
    for hw in sizes:
        x = image(seed + 7, cin, hw)
        with torch.no_grad():
            err = rel_err(res.module(x), hand(x))
        worst = max(worst, err)
        assert err < TOL, (hw, err)
    assert rep["params_after"] == n_params(hand)
    x = image(seed + 9, cin, sizes[1])
    assert conv_calls(res.module, x) == conv_calls(hand, x)
    return {"res": res, "hand": hand, "worst": worst}


# ---- every training block kind, fp32 ----------------------------------------------------------

BLOCKS = {
    "ecb-idt-prelu": (lambda: ECB(4, 4, "prelu", with_idt=True), 4),
    "ecb-linear-3to5": (lambda: ECB(3, 5, "linear"), 3),
    "repvgg-identity-bn": (lambda: RepVGGBlock(4, 4, "relu"), 4),
    "repvgg-3to6-prelu": (lambda: RepVGGBlock(3, 6, "prelu"), 3),
    "sesr-residual-3x3": (lambda: CollapsibleLinearBlock(4, 4, 16, 3, "prelu", residual=True), 4),
    "sesr-5x5": (lambda: CollapsibleLinearBlock(3, 5, 24, 5, "relu"), 3),
    "conv3xc": (lambda: Conv3XC(4, 6, gain=2), 4),
    "conv3xc-relu": (lambda: Conv3XC(5, 5, gain=1, relu=True), 5),
    "rrrb": (lambda: RRRB(4, 2), 4),
    "hfab-bn": (lambda: HFAB(4, 1, 3, 2), 4),
    "reprfn-repblock": (lambda: RepBlock(4), 4),
}


@pytest.mark.parametrize("case", sorted(BLOCKS))
def test_block_equals_hand_written(case):
    make, cin = BLOCKS[case]
    block = randomize_(make(), seed=len(case))
    out = check_against_hand_written(block, cin, seed=len(case))
    res, hand = out["res"], out["hand"]
    assert len(res.collapsed) == n_convs(hand)  # one collapsed region per fused conv
    assert res.left == []
    for r in res.collapsed:
        assert r["max_abs_fp32"] <= TOL * max(1.0, r["ref_max_fp32"])
        assert [1, 1] in r["sizes"] and any(h != w for h, w in r["sizes"])  # 1x1 and non-square checked


# ---- the registry's training-form networks ----------------------------------------------------

NETS = dict(NETWORKS)
NETS["ecbsr"] = lambda: ECBSR(colors=3, scale=2, num_block=2, num_feat=6, with_idt=True)
NETS["ecbsr-relu-x3"] = lambda: ECBSR(colors=1, scale=3, num_block=1, num_feat=5, act_type="relu")


def outer_training_blocks(model: nn.Module) -> dict[str, nn.Module]:
    found: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, TrainingBlock) and not any(name.startswith(p + ".") for p in found):
            found[name] = m
    return found


def inside(region: dict, scope: str) -> bool:
    return all(p == scope or p.startswith(scope + ".") for p in region["modules"])


@pytest.mark.parametrize("case", sorted(NETS))
def test_network_equals_hand_written(case):
    model = tame_(NETS[case](), seed=len(case))
    cin = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    kw = {"only_if_cheaper": False} if case == "sesr-concat-clip" else {}
    sizes = SIZES
    if case == "reprfn":  # RepRFN's ESA needs >= 15 pixels
        sizes, kw["example_hw"] = [(17, 23), (15, 16), (19, 15)], (17, 16)
    out = check_against_hand_written(model, cin, sizes=sizes, seed=3, **kw)
    res = out["res"]
    blocks = outer_training_blocks(model)
    # the same blocks collapsed: each training block's fused convs are collapsed regions inside it
    for scope, block in blocks.items():
        mine = [r for r in res.collapsed if inside(r, scope)]
        assert len(mine) == n_convs(block.reparameterize()), scope
    # anything else collapsed only folded constants into a single conv (FMEN's x255 into its head)
    for r in res.collapsed:
        if not any(inside(r, s) for s in blocks):
            assert r["ops"].get("conv") == 1 and r["macs_per_pixel_after"] == r["macs_per_pixel_before"], r
    assert res.left == []


def test_costlier_collapse_is_left_and_reported():
    """SESR with a narrow expansion: 5x5 -> 1x1 as one 5x5 costs more; by default it stays."""
    model = tame_(SESR(colors=1, scale=3, num_channels=4, num_lblocks=1, tmp_channels=8, concat_residual=True), 1)
    res = collapse_linear(model, torch.rand(1, 1, 9, 10), deploy_hooks=False)
    left = [r for r in res.left if r["scope"] == "conv_last"]
    assert len(left) == 1 and "cost more" in left[0]["reason"]
    assert res.report["verification"]["ok"]
    assert any("conv_last" in line and "cost more" in line for line in summary_lines(res.report))


def test_bundled_ecbsr_training_form_equals_hand_written():
    lm = registry.load_model(load_state_dict(BUNDLED_CHECKPOINT))
    assert lm.spec.form == "training"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 21, 17, generator=g)
    res = collapse_linear(lm.module, x, deploy_hooks=False)
    hand = reparameterize(lm.module)
    assert len(res.collapsed) == 6 and res.left == []
    assert res.report["params_after"] == n_params(hand)
    for hw in [(1, 1), (23, 19), (4, 9)]:
        xx = torch.rand(2, 3, *hw, generator=g)
        with torch.no_grad():
            assert float((res.module(xx) - hand(xx)).abs().max()) < TOL


# ---- borders and other traps ------------------------------------------------------------------

class ZeroPadAfterBiased1x1(nn.Module):
    """1x1 (biased) -> zero pad -> 3x3 valid: NOT one zero-padded 3x3 at the border."""

    def __init__(self, c: int = 3, bias_pad: bool = False):
        super().__init__()
        self.a, self.b, self.bias_pad = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, c, 3), bias_pad

    def forward(self, x):
        y = self.a(x)
        if self.bias_pad:  # ECB / RRRB style: pad with the bias, border exact
            b = self.a.bias.view(1, -1, 1, 1)
            return torch.relu(self.b(F.pad(y - b, (1, 1, 1, 1)) + b))
        return torch.relu(self.b(F.pad(y, (1, 1, 1, 1))))


def test_zero_pad_after_biased_1x1_is_not_collapsed():
    model = randomize_(ZeroPadAfterBiased1x1(), 1)
    with torch.no_grad():
        model.a.bias.add_(1.0)  # a bias well away from zero
    res = collapse_linear(model, torch.rand(1, 3, 8, 9))
    assert not any(r["ops"].get("conv", 0) == 2 for r in res.collapsed)  # the two convs stay two
    assert conv_calls(res.module, torch.rand(1, 3, 5, 5)) == 2
    x = torch.rand(2, 3, 1, 1)  # at 1x1 every output pixel is border
    with torch.no_grad():
        assert torch.allclose(res.module(x), model(x), atol=1e-6)


def test_bias_padded_1x1_then_3x3_is_collapsed():
    model = randomize_(ZeroPadAfterBiased1x1(bias_pad=True), 2)
    res = collapse_linear(model, torch.rand(1, 3, 8, 9))
    assert len(res.collapsed) == 1 and res.collapsed[0]["kernel"] == [3, 3]
    assert conv_calls(res.module, torch.rand(1, 3, 5, 5)) == 1
    for hw in [(1, 1), (2, 7), (9, 4)]:
        x = torch.rand(2, 3, *hw)
        with torch.no_grad():
            assert rel_err(res.module(x), model(x)) < TOL


class Mixed(nn.Module):
    """Stacked padded 3x3s (not border exact), depthwise conv + BN + scaled identity (exact,
    stays grouped), a spatially varying constant (not translation invariant) and a strided conv."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.s1, self.s2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.dw, self.bn = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c)
        self.pos = nn.Parameter(torch.randn(1, c, 6, 7))
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.after_down = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = torch.relu(self.s2(self.s1(x)))
        y = torch.relu(self.bn(self.dw(y)) + 0.5 * y)
        y = torch.sigmoid(self.s1(y) + self.pos)
        return y, self.after_down(self.down(y))


def test_traps_keep_the_function_and_collapse_only_what_is_exact():
    model = randomize_(Mixed(), 4)
    x = torch.rand(1, 4, 6, 7)
    res = collapse_linear(model, x)
    (dw,) = [r for r in res.collapsed if r["ops"].get("bn")]
    assert dw["groups"] == 4 and dw["kernel"] == [3, 3]  # depthwise + BN + 0.5 x -> one depthwise conv
    assert not any({"s1", "s2"} <= {m.split(".")[-1] for m in r["modules"]} for r in res.collapsed)
    assert not any("down" in m for r in res.collapsed for m in r["modules"])
    with torch.no_grad():
        for a, b in zip(res.module(x), model(x)):
            assert rel_err(a, b) < TOL


class Untraceable(nn.Module):
    """Python control flow on a tensor value at the top: torch.fx cannot trace the whole model."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(RepVGGBlock(3, 4), RepVGGBlock(4, 4))
        self.tail = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        if x.mean() > 10:  # data-dependent branch
            x = x / 255
        return self.tail(self.body(x))


def test_untraceable_model_falls_back_to_submodules():
    model = randomize_(Untraceable(), 5)
    res = collapse_linear(model, torch.rand(1, 3, 7, 8), deploy_hooks=False)
    cap = res.report["capture"]
    assert cap["method"] == "fx-per-module" and "body" in cap["traced"]
    assert len(res.collapsed) == 2 and res.report["verification"]["ok"]
    x = torch.rand(2, 3, 5, 9)
    with torch.no_grad():
        assert rel_err(res.module(x), model(x)) < TOL


_GLOBAL_ACT = nn.LeakyReLU(0.1)


class GlobalActivation(nn.Module):
    """An activation module kept in a global, not a submodule (several NTIRE teams do this)."""

    def __init__(self):
        super().__init__()
        self.block = RepVGGBlock(3, 3)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(_GLOBAL_ACT(self.block(x)))


def test_modules_not_owned_by_the_model_are_traced_through():
    model = randomize_(GlobalActivation(), 6)
    res = collapse_linear(model, torch.rand(1, 3, 6, 6), deploy_hooks=False)
    assert res.report["capture"]["method"] == "fx" and len(res.collapsed) == 1


def test_example_must_be_nchw_and_run():
    with pytest.raises(GenericReparamError, match="NCHW"):
        collapse_linear(nn.Conv2d(3, 3, 1), torch.rand(3, 4, 4))
    with pytest.raises(GenericReparamError, match="does not run on the example"):
        collapse_linear(nn.Conv2d(3, 3, 1), torch.rand(1, 4, 4, 4))


# ---- the author's own deploy hooks -------------------------------------------------------------

def test_hand_written_hooks_are_used_when_present_and_agree():
    model = tame_(ECBSR(colors=3, scale=2, num_block=1, num_feat=4), 2)
    res = collapse_linear(model, torch.rand(1, 3, 8, 9))
    hooks = res.report["deploy_hooks"]
    assert hooks["kept"] == hooks["found"] == 3 and {h["hook"] for h in hooks["hooks"]} == {"reparameterize"}
    assert res.report["regions_collapsed"] == 0  # nothing linear left after the author's hooks
    x = torch.rand(2, 3, 7, 5)
    with torch.no_grad():
        assert rel_err(res.module(x), reparameterize(model)(x)) < TOL


class WrongHook(nn.Module):
    """A hook meant for a checkpoint saved before conversion (it folds an identity the forward
    does not have, as NTIRE 2022 team 08's switch_to_deploy does), and one that crashes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.tail = Crashing()

    def forward(self, x):
        return self.tail(torch.relu(self.conv(x)))

    def switch_to_deploy(self):
        with torch.no_grad():
            self.conv.weight[:, :, 1, 1] += torch.eye(3)


class Crashing(nn.Conv2d):
    def __init__(self):
        super().__init__(3, 3, 1)

    def fuse(self):
        return self.weight.cuda_only_attribute  # raises AttributeError


def test_hooks_that_change_the_function_or_fail_are_undone_and_reported():
    model = randomize_(WrongHook(), 3)
    res = collapse_linear(model, torch.rand(1, 3, 8, 9))
    hooks = {h["module"]: h for h in res.report["deploy_hooks"]["hooks"]}
    assert hooks["(root)"]["status"] == "undone" and "changes the function" in hooks["(root)"]["reason"]
    assert len(hooks) == 1  # the root's hook is the author's; submodule hooks are not called separately
    only_tail = collapse_linear(model.tail, torch.rand(1, 3, 5, 5))
    (h,) = only_tail.report["deploy_hooks"]["hooks"]
    assert h["status"] == "failed" and "AttributeError" in h["reason"]
    x = torch.rand(2, 3, 5, 6)
    with torch.no_grad():
        assert torch.equal(res.module(x), model(x))


# ---- real checkpoints --------------------------------------------------------------------------

def test_etds_training_checkpoints_have_nothing_single_input_to_collapse(ckpt_dir):
    """ETDS's reparameterization stacks two streams into one conv per layer; its linear parts all
    read two tensors (backbone and residual stream), so the generic pass, which collapses
    single-input regions, finds nothing there, and says so, with the function unchanged."""
    paths = sorted((ckpt_dir / "ETDS" / "ablations").glob("*.pth"))
    assert paths
    lm = registry.load_model(load_state_dict(paths[0]))
    res = collapse_linear(lm.module, torch.rand(1, 3, 12, 11))
    assert res.report["regions_collapsed"] == 0
    assert res.report["verification"]["ok"] and res.report["verification"]["max_abs_fp32"] == 0.0


class SharedTrunk(nn.Module):
    """One linear trunk read by two heads, and a chunk: regions with two outputs."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Conv2d(3, 8, 1, bias=False)  # bias-free: its zero-padded output is exact
        self.head_a, self.head_b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.split = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        t = self.trunk(x) * 2.0
        a, b = self.split(x).chunk(2, dim=1)
        return torch.relu(self.head_a(t)) + torch.sigmoid(self.head_b(t)) * torch.sigmoid(a) * torch.tanh(b + 1.0)


def test_regions_with_several_outputs():
    model = randomize_(SharedTrunk(), 8)
    res = collapse_linear(model, torch.rand(1, 3, 9, 7), deploy_hooks=False)
    (trunk,) = [r for r in res.collapsed if "trunk" in r["modules"]]
    # trunk * 2 feeds head_a (1x1) and head_b (3x3, bias-free): one region, two convs out
    assert trunk["kernel"] == [[1, 1], [3, 3]] and trunk["out_channels"] == [4, 4]
    (split,) = [r for r in res.regions if "split" in r["modules"]]  # conv -> chunk -> (a, b + 1)
    assert split["status"] == "left" and split["reason"].startswith("no gain")
    for hw in [(1, 1), (4, 9)]:
        x = torch.rand(2, 3, *hw)
        with torch.no_grad():
            assert rel_err(res.module(x), model(x)) < TOL


class DilatedResidual(nn.Module):
    """A dilated 3x3 plus identity (NTIRE 2022 team 13's blocks) and a non-leaf tensor attribute."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.gain = nn.Parameter(torch.tensor(0.5))
        self.scale = self.gain * 2  # computed from a parameter in __init__: deepcopy refuses it

    def forward(self, x):
        return torch.relu(self.conv(x) + x * self.scale.detach())


def test_dilated_conv_plus_identity_stays_dilated_and_non_leaf_attributes_are_copied():
    model = randomize_(DilatedResidual(), 9)
    res = collapse_linear(model, torch.rand(1, 4, 9, 8))
    (r,) = res.collapsed
    assert r["kernel"] == [3, 3] and r["dilation"] == [2, 2] and r["macs_per_pixel_after"] == r["macs_per_pixel_before"]
    for hw in [(1, 1), (2, 7), (10, 5)]:
        x = torch.rand(2, 4, *hw)
        with torch.no_grad():
            assert rel_err(res.module(x), model(x)) < TOL


# ---- the NTIRE ESR zoo: a training-form block shipped by a team, loaded with its own code ----------

ZOO_SCRIPT = r"""
import json, sys, torch
repo, module, cls, kwargs, weights, data_range, lr = sys.argv[1:8]
torch.set_num_threads(1)  # as conftest does: two shared cores
sys.path.insert(0, repo)
import importlib
from edgesr.imaging import read_image, to_tensor
from edgesr.reparam.generic import collapse_linear
model = getattr(importlib.import_module(module), cls)(**json.loads(kwargs))
model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
model.eval()
x = to_tensor(read_image(lr).rgb) * float(data_range)
res = collapse_linear(model, x[:, :, 20:52, 30:62].contiguous())
worst, ref = 0.0, 0.0
for top, left, h, w in [(0, 0, 17, 23), (5, 40, 31, 16), (60, 3, 15, 15)]:
    xx = x[:, :, top:top + h, left:left + w].contiguous()
    with torch.no_grad():
        a, b = res.module(xx), model(xx)
    worst, ref = max(worst, float((a - b).abs().max())), max(ref, float(b.abs().max()))
print(json.dumps({"regions": res.regions, "verification": res.report["verification"],
                  "params": [res.report["params_before"], res.report["params_after"]],
                  "max_abs": worst, "ref_max": ref}))
"""

# (test_demo.py id, module, class, kwargs, weights, data range, what the team shipped in training form,
#  (minimum number of branches a collapsed region joins, how many such regions))
ZOO_CASES = {
    "2022-team42-RLCSR": ("models.team42_rlcsr", "RLCSR", {"in_nc": 3, "nf": 32, "num_modules": 6, "out_nc": 3,
                                                            "upscale": 4}, "team42_rlcsr.pt", 255,
                          "ACNet-style parallel 1x3 + 3x1 + 3x3 convs (stem, tail, upsampler)", (3, 4)),
    "2022-baseline-RFDN": ("models.rfdn_baseline.RFDN", "RFDN", {}, "rfdn_baseline.pth", 255,
                           "shallow residual blocks conv3x3(x) + x (4 RFDB x 3)", (1, 12)),
}


@pytest.mark.parametrize("case", sorted(ZOO_CASES))
def test_zoo_training_form_blocks_collapse_with_the_teams_own_code(case, shared_dir, tmp_path):
    """NTIRE 2022 models built by the authors' code as test_demo.py builds them, with blocks shipped
    in training form; the generic pass collapses each into one verified conv."""
    import os
    import subprocess
    import sys

    module, cls, kwargs, weights, data_range, _what, (min_convs, count) = ZOO_CASES[case]
    repo = shared_dir / "ntire-esr" / "2022"
    if not (repo / "model_zoo" / weights).is_file():
        pytest.skip(f"{weights} not in ../shared/ntire-esr/2022")
    lr = shared_dir / "testsets" / "Set5" / "LR_bicubic" / "X4" / "babyx4.png"
    p = subprocess.run([sys.executable, "-c", ZOO_SCRIPT, str(repo), module, cls, json.dumps(kwargs),
                        str(repo / "model_zoo" / weights), str(data_range), str(lr)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    joined = [r for r in out["regions"] if r["status"] == "collapsed" and r["ops"].get("add")
              and r["ops"].get("conv", 0) >= min_convs]
    assert len(joined) == count, [(r["scope"], r["ops"]) for r in joined]
    assert all(r["kernel"] == [3, 3] and r["max_abs_fp32"] <= 1e-5 * max(1.0, r["ref_max_fp32"]) for r in joined)
    assert out["verification"]["ok"] and out["verification"]["max_rel_fp64"] < 1e-9
    assert out["params"][1] <= out["params"][0]  # identity branches fold for free, parallel convs shrink
    assert out["max_abs"] <= 1e-5 * max(1.0, out["ref_max"])  # data range 255: relative to the output scale

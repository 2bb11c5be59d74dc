"""Pure reparameterization math (edgesr.reparam.kernels) against the layers it replaces.

Every check runs the multi-layer reference with real torch ops (convs, BatchNorm in
eval mode with randomised running statistics, explicit padding) on images that
include 1x1 and odd non-square sizes, so borders are always part of the comparison.
fp32 error is measured relative to the output scale: |diff| / max(1, |ref|.max()).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgesr.archs.common import pad_with_bias
from edgesr.reparam import kernels as K

TOL = 1e-5
SIZES = [(1, 1), (17, 23), (2, 5), (6, 3), (1, 4)]
VALID_SIZES = [(9, 9), (17, 23), (9, 12), (11, 10)]  # big enough for unpadded 5x5 stacks

channels = st.integers(1, 6)
sizes = st.sampled_from(SIZES)
seeds = st.integers(0, 2**31 - 1)
fast = settings(max_examples=12, deadline=None)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    out, ref = out.detach(), ref.detach()
    return float((out - ref).abs().max() / max(1.0, float(ref.abs().max())))


def rand_kernel(g, cout, cin, kh, kw=None) -> torch.Tensor:
    kw = kh if kw is None else kw
    return torch.randn(cout, cin, kh, kw, generator=g) / (cin * kh * kw) ** 0.5


def rand_bias(g, c) -> torch.Tensor:
    return torch.randn(c, generator=g) * 0.5


def rand_bn(g, c) -> nn.BatchNorm2d:
    """An eval-mode BatchNorm with non-trivial running stats and affine parameters."""
    bn = nn.BatchNorm2d(c, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
        sign = torch.where(torch.rand(c, generator=g) < 0.2, -1.0, 1.0)
        bn.weight.copy_((torch.rand(c, generator=g) + 0.5) * sign)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.5)
    return bn.eval()


def bn_args(bn: nn.BatchNorm2d):
    return bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps


def image(g, c, hw) -> torch.Tensor:
    return torch.rand(1, c, *hw, generator=g) * 2 - 1


def conv(x, kb, groups=1):
    k, b = kb
    return F.conv2d(x, k, b, padding=(k.shape[-2] // 2, k.shape[-1] // 2), groups=groups)


# ---- BatchNorm fusion ---------------------------------------------------------------------

@fast
@given(cin=channels, cout=channels, k=st.sampled_from([1, 3, 5]), with_bias=st.booleans(), hw=sizes, seed=seeds)
def test_fuse_conv_bn_matches_conv_then_bn(cin, cout, k, with_bias, hw, seed):
    g = torch.Generator().manual_seed(seed)
    w, b = rand_kernel(g, cout, cin, k), (rand_bias(g, cout) if with_bias else None)
    bn = rand_bn(g, cout)
    x = image(g, cin, hw)
    with torch.no_grad():
        ref = bn(F.conv2d(x, w, b, padding=k // 2))
        out = conv(x, K.fuse_conv_bn(w, b, *bn_args(bn)))
    assert rel_err(out, ref) < TOL


@fast
@given(c=channels, hw=sizes, seed=seeds)
def test_bn_as_conv_and_scale_shift_match_batchnorm(c, hw, seed):
    g = torch.Generator().manual_seed(seed)
    bn = rand_bn(g, c)
    x = image(g, c, hw)
    with torch.no_grad():
        ref = bn(x)
        assert rel_err(conv(x, K.bn_as_conv(*bn_args(bn), size=3)), ref) < TOL
        assert rel_err(conv(x, K.bn_as_conv(*bn_args(bn), size=1)), ref) < TOL
        scale, shift = K.bn_scale_shift(*bn_args(bn))
        assert rel_err(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), ref) < TOL
        # the shift is what BN maps 0 to (FMEN pads with it)
        assert rel_err(shift.view(1, -1, 1, 1).expand(1, c, 1, 1), bn(torch.zeros(1, c, 1, 1))) < TOL


@fast
@given(cin=channels, cout=channels, k=st.sampled_from([1, 3, 5]), hw=sizes, seed=seeds)
def test_fuse_bn_conv_exact_with_bn_shift_padding(cin, cout, k, hw, seed):
    """BN -> conv, where the conv's input is padded with the BN shift (FMEN's HFAB)."""
    g = torch.Generator().manual_seed(seed)
    bn = rand_bn(g, cin)
    w, b = rand_kernel(g, cout, cin, k), rand_bias(g, cout)
    x = image(g, cin, hw)
    with torch.no_grad():
        _, shift = K.bn_scale_shift(*bn_args(bn))
        y = bn(x)
        p = k // 2
        padded = F.pad(y, (p, p, p, p))
        if p:
            mask = F.pad(torch.zeros_like(y), (p, p, p, p), value=1.0)
            padded = padded + mask * shift.view(1, -1, 1, 1)
        ref = F.conv2d(padded, w, b)
        out = conv(x, K.fuse_bn_conv(*bn_args(bn), w, b))
    assert rel_err(out, ref) < TOL
    if p:
        # with a zero-padded BN output instead, borders differ (documented semantics)
        zero_pad = F.conv2d(bn(x), w, b, padding=p)
        assert rel_err(zero_pad, ref) > TOL or shift.abs().max() < 1e-3


# ---- branch sums, identity ----------------------------------------------------------------

@fast
@given(cin=channels, cout=channels, hw=sizes, seed=seeds,
       shapes=st.lists(st.sampled_from([(3, 3), (1, 1), (3, 1), (1, 3), (5, 5), (1, 5)]), min_size=1, max_size=5))
def test_add_branches_sums_parallel_convs_including_asymmetric(cin, cout, hw, seed, shapes):
    g = torch.Generator().manual_seed(seed)
    branches = [(rand_kernel(g, cout, cin, kh, kw), rand_bias(g, cout)) for kh, kw in shapes]
    x = image(g, cin, hw)
    ref = sum(conv(x, kb) for kb in branches)
    k, b = K.add_branches(*branches)
    assert k.shape[-1] == k.shape[-2] == max(max(s) for s in shapes)
    assert rel_err(conv(x, (k, b)), ref) < TOL


def test_add_branches_vertical_and_horizontal_only():
    """Regression: sizing by the last dim only made 3x1 + 1x1 fail ("cannot centre-pad")."""
    g = torch.Generator().manual_seed(3)
    branches = [(rand_kernel(g, 2, 2, 3, 1), rand_bias(g, 2)), (rand_kernel(g, 2, 2, 1, 1), rand_bias(g, 2))]
    x = image(g, 2, (5, 4))
    k, b = K.add_branches(*branches)
    assert k.shape[-2:] == (3, 3)
    assert rel_err(conv(x, (k, b)), sum(conv(x, kb) for kb in branches)) < TOL


@fast
@given(c=channels, k=st.sampled_from([1, 3, 5]), hw=sizes, seed=seeds)
def test_add_identity_and_identity_kernel(c, k, hw, seed):
    g = torch.Generator().manual_seed(seed)
    w, b = rand_kernel(g, c, c, k), rand_bias(g, c)
    x = image(g, c, hw)
    assert rel_err(conv(x, K.add_identity(w, b)), conv(x, (w, b)) + x) < TOL
    assert rel_err(conv(x, (K.identity_kernel(c, k), K.zero_bias(w))), x) < TOL


def test_identity_kernel_grouped_and_errors():
    g = torch.Generator().manual_seed(0)
    x = image(g, 6, (4, 5))
    assert rel_err(conv(x, (K.identity_kernel(6, 3, groups=3), torch.zeros(6)), groups=3), x) < TOL
    with pytest.raises(ValueError):
        K.add_identity(torch.zeros(4, 3, 3, 3), torch.zeros(4))  # in != out
    with pytest.raises(ValueError):
        K.add_identity(torch.zeros(3, 3, 1, 3), torch.zeros(3))  # not square
    with pytest.raises(ValueError):
        K.pad_kernel(torch.zeros(1, 1, 3, 3), 4)  # cannot centre
    with pytest.raises(ValueError):
        K.pad_kernel(torch.zeros(1, 1, 5, 5), 3)  # shrinking


@fast
@given(c=channels, hw=sizes, seed=seeds)
def test_depthwise_to_dense(c, hw, seed):
    g = torch.Generator().manual_seed(seed)
    dw = rand_kernel(g, c, 1, 3)
    x = image(g, c, hw)
    ref = F.conv2d(x, dw, padding=1, groups=c)
    assert rel_err(F.conv2d(x, K.depthwise_to_dense(dw), padding=1), ref) < TOL


def test_edge_masks_are_the_published_filters():
    m = K.edge_mask("sobelx", 2)
    assert m.shape == (2, 1, 3, 3)
    assert torch.equal(m[1, 0], torch.tensor(K.SOBEL_X))
    assert torch.equal(K.edge_mask("sobely", 1)[0, 0], torch.tensor(K.SOBEL_X).t())
    assert float(K.edge_mask("laplacian", 1).sum()) == 0.0


# ---- sequential merges --------------------------------------------------------------------

@fast
@given(cin=channels, mid=channels, cout=channels, k=st.sampled_from([3, 5]), hw=sizes, seed=seeds)
def test_merge_1x1_kxk_exact_with_bias_padding(cin, mid, cout, k, hw, seed):
    g = torch.Generator().manual_seed(seed)
    k0, b0 = rand_kernel(g, mid, cin, 1), rand_bias(g, mid)
    k1, b1 = rand_kernel(g, cout, mid, k), rand_bias(g, cout)
    x = image(g, cin, hw)
    y0 = F.conv2d(x, k0, b0)
    p = k // 2
    for _ in range(p):  # pad by p with the bias value
        y0 = pad_with_bias(y0, b0)
    ref = F.conv2d(y0, k1, b1)
    assert rel_err(conv(x, K.merge_1x1_kxk(k0, b0, k1, b1)), ref) < TOL
    # Zero-padding the 1x1 *input* gives the same bias-padded intermediate (SPAN's Conv3XC).
    ref2 = F.conv2d(F.conv2d(F.pad(x, (p, p, p, p)), k0, b0), k1, b1)
    assert rel_err(ref2, ref) < TOL


@fast
@given(c=channels, cin=channels, kind=st.sampled_from(["sobelx", "sobely", "laplacian"]), hw=sizes, seed=seeds)
def test_merge_1x1_depthwise_edge_branch(c, cin, kind, hw, seed):
    g = torch.Generator().manual_seed(seed)
    k0, b0 = rand_kernel(g, c, cin, 1), rand_bias(g, c)
    scale, bias = torch.randn(c, 1, 1, 1, generator=g), rand_bias(g, c)
    dw = scale * K.edge_mask(kind, c)
    x = image(g, cin, hw)
    ref = F.conv2d(pad_with_bias(F.conv2d(x, k0, b0), b0), dw, bias, groups=c)
    assert rel_err(conv(x, K.merge_1x1_depthwise(k0, b0, dw, bias)), ref) < TOL


@fast
@given(cin=channels, mid=channels, cout=channels, k=st.sampled_from([1, 3, 5]), hw=sizes, seed=seeds)
def test_merge_kxk_1x1_exact_with_zero_padding(cin, mid, cout, k, hw, seed):
    g = torch.Generator().manual_seed(seed)
    k0, b0 = rand_kernel(g, mid, cin, k), rand_bias(g, mid)
    k1, b1 = rand_kernel(g, cout, mid, 1), rand_bias(g, cout)
    x = image(g, cin, hw)
    ref = F.conv2d(conv(x, (k0, b0)), k1, b1)
    assert rel_err(conv(x, K.merge_kxk_1x1(k0, b0, k1, b1)), ref) < TOL


@fast
@given(cin=channels, mid=channels, cout=channels, hw=sizes, seed=seeds)
def test_merge_1x1_kxk_1x1_is_conv3xc_chain(cin, mid, cout, hw, seed):
    g = torch.Generator().manual_seed(seed)
    k0, b0 = rand_kernel(g, mid, cin, 1), rand_bias(g, mid)
    k1, b1 = rand_kernel(g, mid + 1, mid, 3), rand_bias(g, mid + 1)
    k2, b2 = rand_kernel(g, cout, mid + 1, 1), rand_bias(g, cout)
    x = image(g, cin, hw)
    ref = F.conv2d(F.conv2d(F.conv2d(F.pad(x, (1, 1, 1, 1)), k0, b0), k1, b1), k2, b2)
    assert rel_err(conv(x, K.merge_1x1_kxk_1x1(k0, b0, k1, b1, k2, b2)), ref) < TOL


@fast
@given(cin=channels, mid=channels, cout=channels, hw=st.sampled_from(VALID_SIZES), seed=seeds,
       ka=st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 1), (5, 3)]),
       kb=st.sampled_from([(1, 1), (3, 3), (3, 1), (5, 5), (1, 3)]))
def test_merge_sequential_kxk_valid_padding(cin, mid, cout, hw, seed, ka, kb):
    """Two unpadded convs -> one unpadded conv; non-square kernels included (regression:
    the padding used the kernel width for both dims)."""
    g = torch.Generator().manual_seed(seed)
    k0, b0 = rand_kernel(g, mid, cin, *ka), rand_bias(g, mid)
    k1, b1 = rand_kernel(g, cout, mid, *kb), rand_bias(g, cout)
    x = image(g, cin, hw)
    ref = F.conv2d(F.conv2d(x, k0, b0), k1, b1)
    k, b = K.merge_sequential_kxk(k0, b0, k1, b1)
    assert k.shape[-2:] == (ka[0] + kb[0] - 1, ka[1] + kb[1] - 1)
    assert rel_err(F.conv2d(x, k, b), ref) < TOL


# ---- purity -------------------------------------------------------------------------------

def test_kernel_functions_do_not_mutate_their_inputs():
    g = torch.Generator().manual_seed(1)
    k3, k1, b = rand_kernel(g, 4, 4, 3), rand_kernel(g, 4, 4, 1), rand_bias(g, 4)
    bn = rand_bn(g, 4)
    args = [k3, k1, b, *bn_args(bn)[:4]]
    before = [a.detach().clone() for a in args]
    with torch.no_grad():
        K.fuse_conv_bn(k3, b, *bn_args(bn))
        K.fuse_bn_conv(*bn_args(bn), k3, b)
        K.bn_as_conv(*bn_args(bn))
        K.add_branches((k3, b), (k1, b))
        K.add_identity(k3, b)
        K.merge_1x1_kxk(k1, b, k3, b)
        K.merge_kxk_1x1(k3, b, k1, b)
        K.merge_1x1_kxk_1x1(k1, b, k3, b, k1, b)
        K.merge_sequential_kxk(k3, b, k3, b)
        K.merge_1x1_depthwise(k1, b, rand_kernel(g, 4, 1, 3), b)
    for a, a0 in zip(args, before):
        assert torch.equal(a, a0)

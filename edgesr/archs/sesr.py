"""SESR (Bhardwaj et al., MLSys 2022): collapsible linear blocks.

The official code (ARM-software/sesr) is TensorFlow. Key layout follows the best-known
PyTorch re-implementation, whose checkpoints are released: Qualcomm's AIMET model zoo
(quic/aimet-model-zoo, ``aimet_zoo_torch/common/super_resolution/{models,blocks}.py``,
``SESRRelease``): ``anchor.net`` (frozen 1x1 conv = channel-wise nearest upsampling),
``conv_first`` (5x5 expand to 256 -> 1x1 squeeze, ReLU), ``residual_block.N`` (3x3 expand ->
1x1 squeeze + identity, ReLU), ``conv_last`` (5x5 -> 1x1, linear), each block holding
``conv_expand`` (no bias) + ``conv_squeeze``. The collapsed (deploy) form keeps the name
``conv_expand`` for the single kxk conv (now with a bias) and drops ``conv_squeeze``, as
AIMET's ``collapse()`` does. Output: PixelShuffle(conv_last(res + first) + anchor(x)).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import KeyMismatch
from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..reparam import TrainingBlock
from ..reparam import kernels as K
from ..spec import Spec


def _activation(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "prelu":
        return nn.PReLU()  # one shared slope, as in the AIMET blocks
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"unsupported SESR activation {kind!r}")


class CollapsibleLinearBlock(TrainingBlock, nn.Module):
    """kxk expand (no bias) -> 1x1 squeeze (+ x when residual) -> activation."""

    def __init__(self, cin: int, cout: int, tmp: int, kernel_size: int, act: str = "relu",
                 residual: bool = False):
        super().__init__()
        if residual and cin != cout:
            raise ValueError("a residual collapsible block needs in == out channels")
        self.conv_expand = nn.Conv2d(cin, tmp, kernel_size, padding=kernel_size // 2, bias=False)
        self.conv_squeeze = nn.Conv2d(tmp, cout, 1)
        self.act, self.residual = act, residual
        self.activation = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_squeeze(self.conv_expand(x))
        if self.residual:
            y = y + x
        return self.activation(y)

    def equivalent_kernel_bias(self) -> K.KB:
        k0 = self.conv_expand.weight
        k, b = K.merge_kxk_1x1(k0, K.zero_bias(k0), self.conv_squeeze.weight, self.conv_squeeze.bias)
        if self.residual:
            k, b = K.add_identity(k, b)
        return k, b

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        k, b = self.equivalent_kernel_bias()
        block = CollapsedLinearBlock(k.shape[1], k.shape[0], k.shape[-1], self.act).to(k)
        block.conv_expand.weight.copy_(k)
        block.conv_expand.bias.copy_(b)
        block.activation.load_state_dict(self.activation.state_dict())
        return block.eval()


class CollapsedLinearBlock(nn.Module):
    """Deploy form: one kxk conv (named ``conv_expand``, as after AIMET's collapse) + activation."""

    def __init__(self, cin: int, cout: int, kernel_size: int, act: str = "relu"):
        super().__init__()
        self.conv_expand = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2)
        self.activation = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv_expand(x))


class AnchorOp(nn.Module):
    """1x1 conv initialised to channel-wise nearest upsampling (``anchor.net``; frozen in training)."""

    def __init__(self, colors: int, scale: int):
        super().__init__()
        self.net = nn.Conv2d(colors, colors * scale * scale, 1)
        with torch.no_grad():
            self.net.weight.zero_()
            self.net.bias.zero_()
            for c in range(colors):
                self.net.weight[c * scale * scale:(c + 1) * scale * scale, c] = 1.0
        self.net.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SESR(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 2, num_channels: int = 16, num_lblocks: int = 3,
                 tmp_channels: int = 256, kernel_first: int = 5, kernel_res: int = 3, kernel_last: int = 5,
                 act: str = "relu", concat_residual: bool = False, clip_output: bool = False,
                 form: str = "training"):
        super().__init__()
        self.concat_residual, self.clip_output = concat_residual, clip_output
        out = colors * scale * scale
        last_in = num_channels * (2 if concat_residual else 1)

        def block(cin, cout, k, a, residual=False):
            if form == "training":
                return CollapsibleLinearBlock(cin, cout, tmp_channels, k, a, residual)
            return CollapsedLinearBlock(cin, cout, k, a)

        self.anchor = AnchorOp(colors, scale)
        self.conv_first = block(colors, num_channels, kernel_first, act)
        self.residual_block = nn.Sequential(*(block(num_channels, num_channels, kernel_res, act, True)
                                              for _ in range(num_lblocks)))
        self.conv_last = block(last_in, out, kernel_last, "identity")
        self.depth_to_space = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv_first(x)
        res = self.residual_block(first)
        res = torch.cat([res, first], dim=1) if self.concat_residual else res + first
        y = self.depth_to_space(self.conv_last(res) + self.anchor(x))
        return y.clamp(0.0, 1.0) if self.clip_output else y


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if not ("anchor.net.weight" in sd and "conv_first.conv_expand.weight" in sd
            and "conv_last.conv_expand.weight" in sd):
        return None
    if "conv_first.conv_squeeze.weight" in sd:
        return "training"
    if "conv_first.conv_expand.bias" in sd:
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    try:
        anchor = sd["anchor.net.weight"]
        first, last = sd["conv_first.conv_expand.weight"], sd["conv_last.conv_expand.weight"]
        n = count_indexed(sd, "residual_block")
        res = sd["residual_block.0.conv_expand.weight"] if n else None
        if form == "training":
            num_channels = sd["conv_first.conv_squeeze.weight"].shape[0]
        else:
            num_channels = first.shape[0]
    except KeyError as e:
        raise KeyMismatch(f"sesr: checkpoint lacks {e.args[0]!r}") from None
    colors = anchor.shape[1]
    s = scale_from_channels(anchor.shape[0], colors, scale, arch="sesr")
    # PReLU slopes in any block but the linear last one (a single missing slope is then reported)
    act = "prelu" if any(k.endswith(".activation.weight") and not k.startswith("conv_last.") for k in sd) \
        else "relu"
    hp = dict(colors=colors, scale=s, num_channels=num_channels, num_lblocks=n,
              kernel_first=first.shape[-1], kernel_res=res.shape[-1] if res is not None else 3,
              kernel_last=last.shape[-1], act=act, concat_residual=last.shape[1] == 2 * num_channels)
    if form == "training":
        hp["tmp_channels"] = first.shape[0]
    return hp


def _build(hp: dict, form: str) -> nn.Module:
    return SESR(**hp, form=form)


def _describe(hp: dict, form: str) -> Spec:
    rf = hp.get("kernel_first", 5) // 2 + hp["num_lblocks"] * (hp.get("kernel_res", 3) // 2) \
        + hp.get("kernel_last", 5) // 2
    return Spec(arch="sesr", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=rf, fp16_safe=True, hyperparams=dict(hp))


_SIZES = {"m3": (16, 3), "m5": (16, 5), "m7": (16, 7), "m11": (16, 11), "xl": (32, 11)}
VARIANTS = tuple(
    Variant(f"sesr-{n}-x{s}", dict(num_channels=c, num_lblocks=m, scale=s, colors=3),
            f"AIMET model zoo sesr_{n}_{s}x")
    for n, (c, m) in _SIZES.items() for s in (2, 3, 4)
)

ARCH = Architecture(
    name="sesr",
    description="SESR: collapsible linear blocks (kxk expand -> 1x1 squeeze [+ identity]) -> one kxk conv",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="ARM-software/sesr (TensorFlow); PyTorch key layout of quic/aimet-model-zoo SESRRelease",
)

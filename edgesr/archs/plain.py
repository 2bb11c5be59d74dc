"""Plain baseline and the ETDS "only_ET" ablation: two networks with ONE key layout.

Both are ``conv_first`` -> ReLU -> ``backbone_convs.N`` (+ ReLU) -> ``conv_last`` ->
PixelShuffle (ECNUSR/ETDS ``Plain`` and ``ETDSOnlyET``); only_ET also adds the
residual ``repeat_interleave(x, s*s)`` before PixelShuffle, which leaves no trace in
the state_dict. Key names and shapes cannot tell them apart, so detection looks at
behaviour (`residual_verdict`):

    Run the body on a smooth synthetic image x (sinusoids + ramps, values in [0.1, 0.9]).
    A network trained WITH the residual learns only the missing detail: its body output
    is near 0 and body + nearest_upsample(x) is near the bicubic upsampling of x. A
    network trained WITHOUT it outputs the image itself. The interpretation whose output
    is closer (mean absolute difference, 4-pixel border excluded) to bicubic(x) wins.
    "Residual" needs clear evidence: 3x closer than the plain reading AND 3x closer than
    nearest upsampling alone (a trained residual body must add something); otherwise
    -- e.g. untrained weights, whose body outputs ~0 -- the Plain reading stays.

``plain`` detects on key names alone; ``etds-only-et`` additionally needs the verdict
"residual" and has the higher priority, so a checkpoint goes to it only when its
behaviour says so. ``--arch plain`` forces the Plain reading.

Plain's deploy form is itself; only_ET's training form is ``ETDSOnlyET`` and its
deploy form is the ETDS deploy layout (``ETDSForInference``): the Equivalent
Transformation folds the residual into 3 extra channels (29 + 3 = 32 for M6C32).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..reparam import TrainingBlock
from ..reparam.et import ETLayout, carried_extra, equivalent_transform, register_et_layout
from ..spec import Spec
from .common import conv3x3, repeat_shortcut
from .etds import ARCH as ETDS_ARCH
from .etds import ETDSForInference


class Plain(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, num_block: int = 6, num_feat: int = 32):
        super().__init__()
        self.colors, self.scale = colors, scale
        self.conv_first = conv3x3(colors, num_feat)
        self.backbone_convs = nn.ModuleList(conv3x3(num_feat, num_feat) for _ in range(num_block))
        self.conv_last = conv3x3(num_feat, colors * scale * scale)
        self.upsampler = nn.PixelShuffle(scale)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv_first(x))
        for conv in self.backbone_convs:
            x = F.relu(conv(x))
        return self.conv_last(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampler(self.body(x))


class ETDSOnlyET(TrainingBlock, Plain):
    """Plain + global repeat_interleave residual (ETDS ablation "only_ET").
    ``num_feat`` counts the channels after the ET (backbone width + num_residual_feat)."""

    def __init__(self, colors: int = 3, scale: int = 4, num_block: int = 6, num_feat: int = 32,
                 num_residual_feat: int = 3):
        super().__init__(colors, scale, num_block, num_feat - num_residual_feat)
        self.num_feat, self.num_residual_feat = num_feat, num_residual_feat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampler(self.body(x) + repeat_shortcut(x, self.scale))

    def reparameterize(self) -> nn.Module:
        """-> ETDSForInference (exact for inputs in [0, 1]; output clamped to [0, 1])."""
        return equivalent_transform(self)


# ---- behavioural check ------------------------------------------------------------------

PROBE_SIZE = 32
BORDER = 4
# The residual reading must be this many times closer to bicubic than both the plain
# reading and bare nearest upsampling (trained checkpoints: ~300x and ~20x). An untrained
# body outputs ~0, i.e. exactly nearest upsampling under the residual reading: no
# evidence, so it stays with the key-name reading (Plain).
RESIDUAL_MARGIN = 3.0


def smooth_probe(colors: int, size: int = PROBE_SIZE) -> torch.Tensor:
    """A deterministic smooth colour image in [0.1, 0.9] (no randomness, no files)."""
    t = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    chans = []
    for c in range(colors):
        ph = 2.1 * c
        v = 0.5 + 0.22 * torch.sin(2 * math.pi * (1.3 * xx + 0.7 * yy) + ph) * torch.cos(2 * math.pi * 0.9 * yy - ph)
        v = v + 0.15 * (xx - 0.5) - 0.1 * (yy - 0.5)
        chans.append(v)
    return torch.stack(chans).clamp(0.1, 0.9).unsqueeze(0)


@torch.no_grad()
def residual_errors(sd) -> tuple[float, float, float] | None:
    """Errors vs the bicubic upsampling of the smooth probe of: the Plain reading, the
    residual reading, and nearest upsampling alone (what the residual gives with a body
    that outputs 0). None when the state_dict cannot be run."""
    try:
        hp = _infer(sd, "deploy", None)
    except Exception:  # noqa: BLE001 - any malformed state_dict: no verdict
        return None
    net = Plain(**hp)
    own = net.state_dict()
    if any(k not in sd or own[k].shape != sd[k].shape for k in own):
        return None  # extra keys are ignored here; the strict load reports them
    net.load_state_dict({k: sd[k].float() for k in own})
    s = hp["scale"]
    x = smooth_probe(hp["colors"])
    body = net.body(x)
    ref = F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)
    plain = F.pixel_shuffle(body, s)
    resid = F.pixel_shuffle(body + repeat_shortcut(x, s), s)
    b = BORDER * s
    crop = (slice(None), slice(None), slice(b, -b), slice(b, -b))
    nearest = F.pixel_shuffle(repeat_shortcut(x, s), s)
    e_plain, e_resid, e_nearest = (float((y - ref)[crop].abs().mean()) for y in (plain, resid, nearest))
    return e_plain, e_resid, e_nearest


def residual_verdict(sd) -> bool | None:
    """True: trained with the repeat_interleave residual (only_ET); False: Plain or no clear
    evidence; None: the state_dict cannot be run (missing / misshaped keys)."""
    errs = residual_errors(sd)
    if errs is None or not all(math.isfinite(e) for e in errs):
        return None
    e_plain, e_res, e_nearest = errs
    return e_res * RESIDUAL_MARGIN < e_plain and e_res * RESIDUAL_MARGIN < e_nearest


# ---- registry entries -------------------------------------------------------------------

def _keys_match(sd) -> bool:
    return ("conv_first.weight" in sd and "conv_last.weight" in sd and "backbone_convs.0.weight" in sd
            and "conv_clip.weight" not in sd
            and not any(k.startswith(("conv_residual", "residual_convs", "add_residual", "advanced_residual"))
                        for k in sd))


def _detect_plain(sd) -> str | None:
    return "deploy" if _keys_match(sd) else None


def _detect_only_et(sd) -> str | None:
    return "training" if _keys_match(sd) and residual_verdict(sd) else None


def _infer(sd, form: str, scale: int | None, arch: str = "plain") -> dict:
    first = sd["conv_first.weight"]
    colors, width = first.shape[1], first.shape[0]
    s = scale_from_channels(sd["conv_last.weight"].shape[0], colors, scale, arch=arch)
    return dict(colors=colors, scale=s, num_block=count_indexed(sd, "backbone_convs"), num_feat=width)


def _infer_only_et(sd, form: str, scale: int | None) -> dict:
    # Detection only ever reports the training form (the deploy form is the ETDS layout).
    hp = _infer(sd, form, scale, arch="etds-only-et")
    extra = carried_extra(hp["num_feat"], hp["colors"])
    return {**hp, "num_feat": hp["num_feat"] + extra, "num_residual_feat": extra}


def _build_plain(hp: dict, form: str) -> nn.Module:
    return Plain(**hp)


def _build_only_et(hp: dict, form: str) -> nn.Module:
    if form == "training":
        return ETDSOnlyET(**hp)
    return ETDSForInference(**{k: hp[k] for k in ("colors", "scale", "num_block", "num_feat")})


def _describe_plain(hp: dict, form: str) -> Spec:
    return Spec(arch="plain", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=hp["num_block"] + 2, fp16_safe=True, hyperparams=dict(hp))


def _describe_only_et(hp: dict, form: str) -> Spec:
    return Spec(arch="etds-only-et", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=hp["num_block"] + 2, fp16_safe=True, hyperparams=dict(hp))


PLAIN = Architecture(
    name="plain",
    description="Plain: 3x3 convs + ReLU + PixelShuffle, no residual (ETDS baseline)",
    detect=_detect_plain, infer=_infer, build=_build_plain, describe=_describe_plain, forms=("deploy",),
    variants=(Variant("plain-m6c32-x4", dict(num_block=6, num_feat=32, scale=4, colors=3), "Plain_M6C32_x4"),),
    priority=0, source="ECNUSR/ETDS (Plain)", tags=("equivalent-transform",),
)

ONLY_ET = Architecture(
    name="etds-only-et",
    description="ETDS ablation only_ET: Plain + repeat_interleave residual (detected by behaviour) -> ETDS deploy",
    detect=_detect_only_et, infer=_infer_only_et, build=_build_only_et, describe=_describe_only_et,
    variants=(Variant("etds-only-et-m6c32-x4", dict(num_block=6, num_feat=32, num_residual_feat=3, scale=4,
                                                    colors=3), "ETDS_M6C32_x4_only_ET"),),
    priority=10, source="ECNUSR/ETDS (ETDSOnlyET)", tags=("equivalent-transform",),
)


def _to_etds(ch) -> dict:
    return dict(colors=ch.colors, scale=ch.scale, num_block=len(ch.steps) - 2,
                num_feat=ch.steps[0].out_channels + (carried_extra(ch.steps[0].out_channels, ch.colors)
                                                     if ch.residual else 0))


register_et_layout(ETLayout(source=Plain, sources=(("plain", "deploy"),), target=ETDS_ARCH,
                            target_form="deploy", hyperparams=_to_etds))
register_et_layout(ETLayout(source=ETDSOnlyET, sources=(("etds-only-et", "training"),), target=ETDS_ARCH,
                            target_form="deploy", hyperparams=_to_etds))

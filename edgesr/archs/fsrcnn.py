"""FSRCNN (Dong et al., ECCV 2016), the RGB version trained in ECNUSR/ETDS.

``first_part`` = 5x5 conv (colors -> d) + PReLU; ``mid_part`` = 1x1 shrink (d -> shrink)
+ PReLU, m x (3x3 conv + PReLU), 1x1 expand (shrink -> d) + PReLU; ``last_part`` =
ConvTranspose2d(d, colors, 9, stride=scale, padding=4, output_padding=scale-1), which
maps H x W to exactly sH x sW. No residual, no clamp. One form only (transposed conv
and PReLU-before-deconv rule out the Equivalent Transformation).

The scale is NOT in the weights: the deconv kernel is 9x9 for every scale. Without a
``scale`` hint it is found by behaviour (`scale_errors`): the checkpoint is run at each
candidate stride on a smooth synthetic image and the stride whose output is closest to
the bicubic upsampling of the image is taken. A network run at a stride it was not
trained for produces a badly aliased image, so the margin is large (real files: > 60x).
A hint that behaves clearly worse than the best stride (> 2x the error) is refused
with ScaleMismatch; weights whose behaviour singles out no stride (e.g. untrained)
need the hint.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ScaleMismatch
from ..architecture import Architecture, Variant, count_indexed
from ..spec import Spec

CANDIDATE_SCALES = (2, 3, 4)
HINT_TOLERANCE = 2.0


class FSRCNN(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, d: int = 56, shrink: int = 12, m: int = 4,
                 first_kernel: int = 5, last_kernel: int = 9):
        super().__init__()
        self.scale = scale
        self.first_part = nn.Sequential(nn.Conv2d(colors, d, first_kernel, padding=first_kernel // 2), nn.PReLU(d))
        mid: list[nn.Module] = [nn.Conv2d(d, shrink, 1), nn.PReLU(shrink)]
        for _ in range(m):
            mid += [nn.Conv2d(shrink, shrink, 3, padding=1), nn.PReLU(shrink)]
        mid += [nn.Conv2d(shrink, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(d, colors, last_kernel, stride=scale, padding=last_kernel // 2,
                                            output_padding=scale - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_part(self.mid_part(self.first_part(x)))


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    need = ("first_part.0.weight", "first_part.1.weight", "mid_part.0.weight", "last_part.weight")
    if all(k in sd for k in need) and sd["last_part.weight"].dim() == 4:
        return "deploy"
    return None


def _shape_hp(sd) -> dict:
    first, last = sd["first_part.0.weight"], sd["last_part.weight"]
    n_mid = count_indexed(sd, "mid_part")
    return dict(colors=first.shape[1], d=first.shape[0], shrink=sd["mid_part.0.weight"].shape[0],
                m=max(0, n_mid // 2 - 2), first_kernel=first.shape[-1], last_kernel=last.shape[-1])


@torch.no_grad()
def scale_errors(sd, scales=CANDIDATE_SCALES) -> dict[int, float] | None:
    """Mean |FSRCNN_s(x) - bicubic_s(x)| on a smooth probe for each stride s; None when the
    state_dict does not fit (missing / misshaped keys)."""
    from .plain import BORDER, smooth_probe

    hp = _shape_hp(sd)
    x = smooth_probe(hp["colors"])
    errs = {}
    for s in scales:
        net = FSRCNN(scale=s, **hp)
        own = net.state_dict()
        if any(k not in sd or own[k].shape != sd[k].shape for k in own):
            return None  # extra keys are ignored here; the strict load reports them
        net.load_state_dict({k: sd[k].float() for k in own})
        y = net(x)
        ref = F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)
        b = BORDER * s
        errs[s] = float((y - ref)[..., b:-b, b:-b].abs().mean())
    return errs


def _infer(sd, form: str, scale: int | None) -> dict:
    hp = _shape_hp(sd)
    errs = scale_errors(sd)
    if errs is None or not all(math.isfinite(e) for e in errs.values()):
        # Cannot run it (the strict load will say why); trust the hint, else the default.
        return dict(hp, scale=scale or 4)
    ranked = sorted(errs, key=errs.get)
    best = ranked[0]
    decisive = errs[ranked[1]] > HINT_TOLERANCE * errs[best]
    if scale is None:
        if not decisive:  # e.g. untrained weights: every stride is equally bad
            raise ScaleMismatch("this FSRCNN's scale is not in its weights (the 9x9 deconv fits every stride) and "
                                "its behaviour does not single one out (errors vs bicubic: "
                                + ", ".join(f"x{s} {e:.3f}" for s, e in errs.items()) + "); pass --scale")
        return dict(hp, scale=best)
    if scale != best and decisive:
        if scale not in errs:
            errs.update(scale_errors(sd, (scale,)) or {})
        if errs.get(scale, math.inf) > HINT_TOLERANCE * errs[best]:
            raise ScaleMismatch(f"--scale {scale} does not match the checkpoint: this FSRCNN behaves as x{best} "
                                f"(error vs bicubic {errs[best]:.4f}) and not as x{scale} "
                                f"({errs.get(scale, math.inf):.4f})")
    return dict(hp, scale=scale)


def _build(hp: dict, form: str) -> nn.Module:
    return FSRCNN(**hp)


def _describe(hp: dict, form: str) -> Spec:
    # LR radius: 5x5 (2) + m 3x3 (m) + 9x9 deconv (4 HR pixels, rounded up in LR pixels)
    rf = hp["first_kernel"] // 2 + hp["m"] + math.ceil((hp["last_kernel"] // 2) / hp["scale"])
    return Spec(arch="fsrcnn", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"],
                form=form, receptive_field=rf, fp16_safe=True, hyperparams=dict(hp))


VARIANTS = tuple(
    Variant(f"fsrcnn-x{s}", dict(colors=3, scale=s, d=56, shrink=12, m=4, first_kernel=5, last_kernel=9), f"FSRCNN_x{s}")
    for s in (2, 3, 4)
)

ARCH = Architecture(
    name="fsrcnn",
    description="FSRCNN: 5x5 conv, 1x1 shrink, m 3x3, 1x1 expand (PReLU), 9x9 transposed conv (scale found by behaviour)",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="Dong et al. 2016; RGB checkpoints from ECNUSR/ETDS",
)

"""IGConv (Lee et al., 2024, "Implicit Grid Convolution for Multi-Scale Image Super-Resolution"):
one encoder and one upsampler that serves every integer scale.

The upsampler stores no convolution kernel. An implicit network maps the sub-pixel grid of a
scale ``s`` (Fourier features of the ``s x s`` coordinates, a phase from the cell size, learned
``freq`` / ``amplitude``) through 1x1 convs (``query_kernel``) to the weights of a 3 x s^2-channel
conv followed by PixelShuffle(s). Key layout follows the official code (dslisleedh/IGConv,
``igconv/archs/edsr_ig_arch.py`` + ``arch_utils.py``): EDSR-baseline encoder ``conv_first``,
``body.N.{conv1,conv2}``, ``conv_after_body``; upsampler ``upsample.{phase, freq, amplitude,
query_kernel.N}``.

Forms: ``training`` is the multi-scale network (``forward(x, scale=None)``; None = the Spec's
scale). ``deploy`` is the network *instantiated* at one scale (the official
``InstantiatedIGConv``): the upsampler becomes a plain conv ``upsample.weight`` (no bias) +
PixelShuffle, one ONNX per scale. `export_multiscale_onnx` writes a single ONNX whose second
input is the scale: the kernel generator runs inside the graph (Range, Cos/Sin, 1x1 convs), the
upsampling conv becomes a fixed im2col conv + MatMul with the generated kernel (the exporter
refuses a Conv whose weight shape is computed), and PixelShuffle becomes Reshape/Transpose with
computed shapes, because ONNX DepthToSpace takes its block size as a fixed attribute.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed
from ..errors import ExportError, ScaleMismatch
from ..reparam import TrainingBlock
from ..spec import Spec

RGB_MEAN = (0.4488, 0.4371, 0.4040)
IMG_RANGE = 255.0
SCALES = (2, 3, 4)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x))) * self.res_scale


def _geo_average(k: torch.Tensor) -> torch.Tensor:
    """Mean of the kernel under the 8 flips/rotations (IGConv's geometric ensemble)."""
    r = torch.rot90(k, -1, [2, 3])
    ks = [k, k.flip(3), k.flip(2), k.flip([2, 3]), r, r.flip(3), r.flip(2), r.flip([2, 3])]
    return sum(ks) / 8.0


class IGConv(TrainingBlock, nn.Module):
    """Scale-conditioned upsampler (training form)."""

    def __init__(self, dim: int, kernel_size: int = 3, implicit_dim: int = 256, latent_layers: int = 4,
                 geo_ensemble: bool = False, max_s: int = 4, colors: int = 3):
        super().__init__()
        if implicit_dim % 2:
            raise ValueError("implicit_dim must be even")
        self.dim, self.kernel_size, self.max_s, self.colors = dim, kernel_size, max_s, colors
        self.geo_ensemble = geo_ensemble
        self.phase = nn.Conv2d(1, implicit_dim // 2, 1)
        self.freq = nn.Parameter(torch.randn(dim * kernel_size ** 2, implicit_dim, 1, 1) * 0.02)
        self.amplitude = nn.Parameter(torch.randn(dim * kernel_size ** 2, implicit_dim, 1, 1) * 0.02)
        layers: list[nn.Module] = []
        for _ in range(latent_layers):
            layers += [nn.Conv2d(implicit_dim, implicit_dim, 1), nn.ReLU()]
        layers.append(nn.Conv2d(implicit_dim, colors, 1))
        self.query_kernel = nn.Sequential(*layers)

    def kernel(self, scale) -> torch.Tensor:
        """(colors * s * s, dim, k, k) conv weight for scale `scale` (int, or a 0-d tensor in a graph)."""
        dt = self.freq.dtype
        if isinstance(scale, torch.Tensor):
            n_t = scale.reshape(())
            idx = torch.arange(n_t, device=self.freq.device).to(dt)
            nf = n_t.to(dt)
            cell = 2.0 / torch.clamp(nf, max=float(self.max_s))
        else:
            n = int(scale)
            idx = torch.arange(n, dtype=dt, device=self.freq.device)
            nf = float(n)
            cell = 2.0 / min(n, self.max_s)
        seq = -1.0 + (2.0 * idx + 1.0) / nf  # LIIF/LTE cell centres in (-1, 1)
        cy, cx = seq.reshape(1, 1, -1, 1), seq.reshape(1, 1, 1, -1)
        f1, f2 = self.freq.chunk(2, dim=1)
        freq = f1 * cx + f2 * cy  # (dim*k*k, D/2, n, n): x then y, as make_coord(...).flip(-1)
        phase = self.phase.weight.reshape(1, -1, 1, 1) * cell + self.phase.bias.reshape(1, -1, 1, 1)
        freq = freq + phase
        freq = torch.cat([torch.cos(math.pi * freq), torch.sin(math.pi * freq)], dim=1)
        k = self.query_kernel(freq * self.amplitude)  # (Cin*K*K, colors, n, n)
        K = self.kernel_size
        k = k.reshape(self.dim, K, K, self.colors, -1).permute(3, 4, 0, 1, 2).reshape(-1, self.dim, K, K)
        return _geo_average(k) if self.geo_ensemble else k

    def forward(self, x: torch.Tensor, scale) -> torch.Tensor:
        if isinstance(scale, torch.Tensor):
            return self._forward_dynamic(x, scale.reshape(()))
        return F.pixel_shuffle(F.conv2d(x, self.kernel(scale), padding=self.kernel_size // 2), int(scale))

    def _forward_dynamic(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Scale as a tensor. ONNX export of a Conv whose weight has a computed output-channel
        count is refused by the TorchScript exporter ("kernel of unknown shape"), so the conv is
        written as a fixed one-hot im2col conv (dim*k*k channels) followed by a MatMul with the
        generated kernel."""
        K = self.kernel_size
        q = self.dim * K * K
        unfold = torch.eye(q, dtype=x.dtype, device=x.device).reshape(q, self.dim, K, K)
        cols = F.conv2d(x, unfold, padding=K // 2)  # (B, dim*K*K, H, W)
        kq = self.kernel(s).reshape(-1, q).transpose(0, 1)  # (dim*K*K, colors*s*s)
        y = torch.matmul(cols.permute(0, 2, 3, 1), kq).permute(0, 3, 1, 2)
        return pixel_shuffle_dynamic(y, s, self.colors)

    @torch.no_grad()
    def instantiate(self, scale: int) -> nn.Module:
        k = self.kernel(scale)
        conv = InstantiatedIGConv(self.dim, k.shape[0], self.kernel_size, scale)
        conv.weight.copy_(k)
        return conv

    def reparameterize(self) -> nn.Module:  # pragma: no cover - the network-level method is used
        raise NotImplementedError("instantiate(scale) needs a scale; use IGConvSR.reparameterize()")


def pixel_shuffle_dynamic(y: torch.Tensor, s: torch.Tensor, colors: int) -> torch.Tensor:
    """PixelShuffle with a scale known only at run time (Reshape/Transpose in ONNX)."""
    b, _, h, w = y.shape
    return (y.reshape(b, colors, s, s, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, colors, h * s, w * s))


class InstantiatedIGConv(nn.Conv2d):
    """Deploy form of the upsampler at one scale: conv (no bias) + PixelShuffle."""

    def __init__(self, dim: int, out: int, kernel_size: int, scale: int):
        super().__init__(dim, out, kernel_size, padding=kernel_size // 2, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(super().forward(x), self.scale)


class IGConvSR(TrainingBlock, nn.Module):
    """EDSR-baseline encoder + IGConv upsampler (EDSRIG). Training form: any scale."""

    def __init__(self, colors: int = 3, scale: int = 4, num_feat: int = 64, num_block: int = 16,
                 sk_kernel_size: int = 3, implicit_dim: int = 256, latent_layers: int = 4,
                 geo_ensemble: bool = False, res_scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.register_buffer("mean", torch.tensor(RGB_MEAN[:colors]).view(1, colors, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(colors, num_feat, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.upsample = IGConv(num_feat, sk_kernel_size, implicit_dim, latent_layers, geo_ensemble, colors=colors)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first((x - self.mean) * IMG_RANGE)
        return self.conv_after_body(self.body(x)) + x

    def forward(self, x: torch.Tensor, scale=None) -> torch.Tensor:
        y = self.upsample(self.encode(x), self.scale if scale is None else scale)
        return y / IMG_RANGE + self.mean

    @torch.no_grad()
    def reparameterize(self, scale: int | None = None) -> nn.Module:
        """The network instantiated at `scale` (default: its Spec scale)."""
        s = self.scale if scale is None else int(scale)
        hp = dict(colors=self.mean.shape[1], scale=s, num_feat=self.conv_first.out_channels,
                  num_block=len(self.body), sk_kernel_size=self.upsample.kernel_size)
        dep = IGConvSRDeploy(**hp)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("upsample.")}
        dep.load_state_dict({**own, "upsample.weight": self.upsample.kernel(s)}, strict=True)
        for blk_d, blk_t in zip(dep.body, self.body):
            blk_d.res_scale = blk_t.res_scale
        return dep.eval()


class IGConvSRDeploy(nn.Module):
    """EDSRIG instantiated at one scale."""

    def __init__(self, colors: int = 3, scale: int = 4, num_feat: int = 64, num_block: int = 16,
                 sk_kernel_size: int = 3, res_scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.register_buffer("mean", torch.tensor(RGB_MEAN[:colors]).view(1, colors, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(colors, num_feat, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.upsample = InstantiatedIGConv(num_feat, colors * scale * scale, sk_kernel_size, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_first((x - self.mean) * IMG_RANGE)
        h = self.conv_after_body(self.body(h)) + h
        return self.upsample(h) / IMG_RANGE + self.mean


class MultiScaleIGConv(nn.Module):
    """forward(x, scale) with `scale` a 0-d int64 tensor: the graph that serves every scale."""

    def __init__(self, model: IGConvSR):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.model(x, scale)


def export_multiscale_onnx(model: IGConvSR, path: str | Path, *, opset: int = 17,
                           check_scales=SCALES, check_size=(17, 23), tol: float = 1e-4) -> dict:
    """One ONNX for every scale: inputs ``input`` (N,C,H,W float) and ``scale`` (0-d int64).

    Checked with ORT against PyTorch at each of `check_scales` on an odd, non-square size;
    returns {"path", "op_counts", "max_abs_vs_torch": {scale: err}}. Raises ExportError when the
    exporter or ORT fails, naming the operator where ORT reports one."""
    from collections import Counter

    import onnx

    from ..fsutil import atomic_path

    wrapper = MultiScaleIGConv(model.eval().float().cpu()).eval()
    c = model.mean.shape[1]
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (torch.rand(1, c, 16, 20), torch.tensor(4, dtype=torch.int64)), buf,
                              dynamo=False, opset_version=opset, input_names=["input", "scale"],
                              output_names=["output"],
                              dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                            "output": {0: "batch", 2: "out_height", 3: "out_width"}})
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"torch.onnx.export of the multi-scale IGConv failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:300]}") from None
    proto = onnx.load_model_from_string(buf.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    from ..backends.ort_session import ort_session

    try:
        sess = ort_session(buf.getvalue(), threads=1)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ONNX Runtime (CPU) cannot load the multi-scale IGConv: {str(e).splitlines()[0][:300]}") from None
    errs = {}
    x = np.random.default_rng(0).random((1, c, *check_size), dtype=np.float32)
    for s in check_scales:
        out = sess.run(None, {"input": x, "scale": np.array(s, dtype=np.int64)})[0]
        with torch.inference_mode():
            ref = model(torch.from_numpy(x), int(s)).numpy()
        if out.shape != ref.shape:
            raise ExportError(f"multi-scale ONNX output {out.shape} != PyTorch {ref.shape} at x{s}")
        errs[int(s)] = float(np.abs(out - ref).max())
    if max(errs.values()) > tol:
        raise ExportError(f"multi-scale ONNX differs from PyTorch by {max(errs.values()):.3g} (> {tol:g}): {errs}")
    with atomic_path(Path(path)) as tmp:
        onnx.save_model(proto, str(tmp))
    return {"path": str(path), "op_counts": dict(Counter(n.op_type for n in proto.graph.node)),
            "max_abs_vs_torch": errs}


# ---- registry entry ---------------------------------------------------------------------

def _detect(sd) -> str | None:
    if "conv_first.weight" in sd and "conv_after_body.weight" in sd and "body.0.conv1.weight" in sd:
        if "upsample.freq" in sd and "upsample.query_kernel.0.weight" in sd:
            return "training"
        if "upsample.weight" in sd and "upsample.bias" not in sd and sd["upsample.weight"].ndim == 4:
            return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    w = sd["conv_first.weight"]
    colors, num_feat = w.shape[1], w.shape[0]
    hp = dict(colors=colors, num_feat=num_feat, num_block=count_indexed(sd, "body"))
    if form == "training":
        fr = sd["upsample.freq"]
        k = int(round(math.sqrt(fr.shape[0] / num_feat)))
        hp.update(scale=scale or 4, sk_kernel_size=k, implicit_dim=fr.shape[1],
                  latent_layers=count_indexed(sd, "upsample.query_kernel") // 2)
        return hp
    up = sd["upsample.weight"]
    s2 = up.shape[0] // colors
    s = int(round(math.sqrt(s2)))
    if s * s * colors != up.shape[0]:
        raise ScaleMismatch(f"igconv: instantiated upsampler has {up.shape[0]} outputs; fits no scale")
    if scale is not None and scale != s:
        raise ScaleMismatch(f"--scale {scale} does not match the checkpoint (igconv instantiated at x{s})")
    hp.update(scale=s, sk_kernel_size=up.shape[-1])
    return hp


def _build(hp: dict, form: str) -> nn.Module:
    if form == "training":
        return IGConvSR(**hp)
    return IGConvSRDeploy(**{k: hp[k] for k in ("colors", "scale", "num_feat", "num_block", "sk_kernel_size")
                             if k in hp})


def _describe(hp: dict, form: str) -> Spec:
    return Spec(arch="igconv", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"], form=form,
                receptive_field=2 * hp["num_block"] + 3, fp16_safe=False, hyperparams=dict(hp))


def _v(name, nf, nb, imp, ll, s, note):
    return Variant(name, dict(num_feat=nf, num_block=nb, implicit_dim=imp, latent_layers=ll, scale=s, colors=3,
                              sk_kernel_size=3), note)


# The official EDSRIG defaults (EDSR-baseline encoder). Not a Variant: with random weights its
# outputs reach ~1e3, too large for the 1e-5 absolute export checks every variant goes through.
PAPER_CONFIG = dict(num_feat=64, num_block=16, implicit_dim=256, latent_layers=4, scale=4, colors=3,
                    sk_kernel_size=3)

VARIANTS = tuple(
    [_v("igconv-f32b4-x4", 32, 4, 64, 2, 4, "light")]
    + [_v(f"igconv-f16b2-x{s}", 16, 2, 32, 2, s, "small, for tests") for s in SCALES]
)

ARCH = Architecture(
    name="igconv",
    description="IGConv: one encoder + implicit-grid upsampler for x2/x3/x4 -> per-scale plain conv + PixelShuffle",
    detect=_detect, infer=_infer, build=_build, describe=_describe, variants=VARIANTS,
    source="dslisleedh/IGConv (EDSRIG: EDSR-baseline encoder + IGConv upsampler)",
)

"""SwinIR (Liang et al., ICCVW 2021), the lightweight configuration: residual Swin transformer
blocks (window self-attention with relative position bias, cyclic shift by half a window in
every other block, MLP), a 3x3 conv per group, and a one-step PixelShuffle upsampler
("pixelshuffledirect"). Key layout follows the official code (JingyunLiang/SwinIR
``models/network_swinir.py``, as in spandrel): ``conv_first``, ``patch_embed.norm``,
``layers.N.residual_group.blocks.M.{norm1, attn.{relative_position_bias_table,
relative_position_index, qkv, proj}, norm2, mlp.{fc1, fc2}, attn_mask}``, ``layers.N.conv``,
``norm``, ``conv_after_body``, ``upsample.0``.

One form. The official model recomputes the shifted-window attention mask in Python for every
new input size (slice assignment into an image of region ids, i.e. ScatterND in ONNX); here the
region id of each row/column is computed arithmetically from its index and the padded size
(Range + comparisons), so one graph serves every H/W. ``attn_mask`` buffers are kept (as in
official checkpoints, for the training size) but not used. Input is reflect-padded to a
multiple of the window and the output cropped, as the official test code does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import Architecture, Variant, count_indexed, scale_from_channels
from ..spec import Spec

RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _relative_position_index(ws: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def _region_ids(n, ws: int, shift: int, device) -> torch.Tensor:
    """Official slices (0:-ws), (-ws:-shift), (-shift:) as ids 0/1/2 along one axis of length n."""
    i = torch.arange(n, device=device)
    return (i >= n - ws).to(torch.int64) + (i >= n - shift).to(torch.int64)


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _window_reverse(win: torch.Tensor, ws: int, b, h, w) -> torch.Tensor:
    c = win.shape[-1]
    x = win.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def attention_mask(h, w, ws: int, shift: int, device=None) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) mask of the shifted windows: 0 within a region, -100 across."""
    ids = _region_ids(h, ws, shift, device)[:, None] * 3 + _region_ids(w, ws, shift, device)[None, :]
    win = _window_partition(ids[None, :, :, None].to(torch.float32), ws).squeeze(-1)  # (nW, N)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads, self.ws = num_heads, window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", _relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b_, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 img_size: int):
        super().__init__()
        self.ws, self.shift = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift_size > 0:  # as in official checkpoints (training size); forward computes its own
            self.register_buffer("attn_mask", attention_mask(img_size, img_size, window_size, shift_size))
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor, hw) -> torch.Tensor:
        h, w = hw
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = attention_mask(h, w, self.ws, self.shift, x.device).to(x.dtype)
        else:
            mask = None
        y = _window_reverse(self.attn(_window_partition(y, self.ws), mask), self.ws, b, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, -1, c)
        return x + self.mlp(self.norm2(x))


class RSTB(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, img_size: int):
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                                 img_size) for i in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, hw) -> torch.Tensor:
        y = x
        for blk in self.residual_group.blocks:
            y = blk(y, hw)
        b, _, c = y.shape
        y = self.conv(y.transpose(1, 2).reshape(b, c, hw[0], hw[1]))
        return y.flatten(2).transpose(1, 2) + x


class SwinIR(nn.Module):
    def __init__(self, colors: int = 3, scale: int = 4, embed_dim: int = 60, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size: int = 8, mlp_ratio: float = 2.0, img_size: int = 64,
                 img_range: float = 1.0):
        super().__init__()
        self.scale, self.ws, self.img_range = scale, window_size, img_range
        mean = RGB_MEAN if colors == 3 else (0.0,) * colors
        self.register_buffer("mean", torch.tensor(mean).view(1, colors, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(colors, embed_dim, 3, padding=1)
        self.patch_embed = nn.Module()
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.layers = nn.ModuleList(RSTB(embed_dim, d, h, window_size, mlp_ratio, img_size)
                                    for d, h in zip(depths, num_heads))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(embed_dim, colors * scale * scale, 3, padding=1),
                                      nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0, w0 = x.shape[2:]
        m = self.ws
        x = F.pad(x, (0, (m - w0 % m) % m, 0, (m - h0 % m) % m), mode="reflect")
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        b, c, h, w = x.shape
        t = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        for layer in self.layers:
            t = layer(t, (h, w))
        t = self.norm(t).transpose(1, 2).reshape(b, c, h, w)
        x = self.conv_after_body(t) + x
        x = self.upsample(x) / self.img_range + self.mean
        return x[:, :, : h0 * self.scale, : w0 * self.scale]


# ---- registry entry ---------------------------------------------------------------------

_B0 = "layers.0.residual_group.blocks.0."


def _detect(sd) -> str | None:
    if ("conv_first.weight" in sd and _B0 + "attn.relative_position_bias_table" in sd
            and "upsample.0.weight" in sd and "conv_after_body.weight" in sd and "upsample.1.weight" not in sd
            and "conv_before_upsample.0.weight" not in sd):
        return "deploy"
    return None


def _infer(sd, form: str, scale: int | None) -> dict:
    w = sd["conv_first.weight"]
    colors, dim = w.shape[1], w.shape[0]
    s = scale_from_channels(sd["upsample.0.weight"].shape[0], colors, scale, arch="swinir")
    n_layers = count_indexed(sd, "layers")
    depths = tuple(count_indexed(sd, f"layers.{i}.residual_group.blocks") for i in range(n_layers))
    heads = tuple(sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1]
                  for i in range(n_layers))
    ws = (int(round(sd[_B0 + "attn.relative_position_bias_table"].shape[0] ** 0.5)) + 1) // 2
    mask = sd.get("layers.0.residual_group.blocks.1.attn_mask")
    img = int(round(mask.shape[0] ** 0.5)) * ws if mask is not None else 64
    return dict(colors=colors, scale=s, embed_dim=dim, depths=depths, num_heads=heads, window_size=ws,
                mlp_ratio=sd[_B0 + "mlp.fc1.weight"].shape[0] / dim, img_size=img)


def _build(hp: dict, form: str) -> nn.Module:
    hp = dict(hp)
    hp["depths"], hp["num_heads"] = tuple(hp["depths"]), tuple(hp["num_heads"])
    return SwinIR(**hp)


def _describe(hp: dict, form: str) -> Spec:
    ws = hp.get("window_size", 8)
    # reflect padding to the window multiple needs pad < size
    return Spec(arch="swinir", scale=hp["scale"], in_channels=hp["colors"], out_channels=hp["colors"], form=form,
                min_size=ws // 2 + 1, receptive_field=None, fp16_safe=False, hyperparams=dict(hp))


VARIANTS = (
    Variant("swinir-light-x4", dict(embed_dim=60, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6), window_size=8,
                                    mlp_ratio=2.0, img_size=64, scale=4, colors=3),
            "SwinIR lightweight (official: 60 dim, 4 x 6 blocks, pixelshuffledirect)"),
    Variant("swinir-d24-x4", dict(embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=8, mlp_ratio=2.0,
                                  img_size=64, scale=4, colors=3), "small, for tests"),
)

ARCH = Architecture(
    name="swinir",
    description="SwinIR (lightweight): shifted-window transformer groups, one-step PixelShuffle; dynamic-size mask",
    detect=_detect, infer=_infer, build=_build, describe=_describe, forms=("deploy",), variants=VARIANTS,
    source="JingyunLiang/SwinIR (ICCVW 2021); spandrel architectures/SwinIR",
)

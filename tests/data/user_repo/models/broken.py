"""User code with the problems edgesr must name (not trained: used for error paths only)."""
import torch
from torch import nn
from torch.nn import functional as F


class FFTNet(nn.Module):
    """Uses an operator the ONNX exporter has no conversion for (a complex FFT; edgesr rewrites
    only the real rfft/irfft family)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 48, 3, padding=1)
        self.up = nn.PixelShuffle(4)

    def forward(self, x):
        spectrum = torch.fft.fft2(x)
        x = x + spectrum.abs().mean() * 0
        return self.up(self.conv(x))


class SizeBakedNet(nn.Module):
    """Takes Python ints from the input's shape: a traced export fixes the size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        h, w = int(x.shape[2]), int(x.shape[3])
        return F.interpolate(self.conv(x), size=(h * 4, w * 4), mode="bilinear", align_corners=False)


class NeedsArgs(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)


class WarmsUpOnGPU(nn.Module):
    """Research code that moves itself to CUDA and runs a warm-up pass in __init__."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.cuda()(torch.randn(1, 3, 8, 8).cuda())

    def forward(self, x):
        return self.conv(x)

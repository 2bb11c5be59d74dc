"""A user's SR model, written the way research code is: it imports `models.block` (the repository
root must be importable) and has its own conventions. The layers are ECBSR-M4C16's deploy form,
so edgesr's bundled (trained, [0, 1] RGB) ECBSR x4 weights fit it once renamed (see tests).

data_range: the input range this variant expects (the weights were trained on [0, 1]; the code
rescales so that the model behaves as if trained on [0, data_range]). bgr: expects BGR input.
"""
import torch
from torch import nn

from models.block import ConvAct


class TinySR(nn.Module):
    def __init__(self, num_feat=16, num_block=4, scale=4, data_range=1.0, bgr=False):
        super().__init__()
        self.scale, self.data_range, self.bgr = scale, float(data_range), bgr
        layers = [ConvAct(3, num_feat)] + [ConvAct(num_feat, num_feat) for _ in range(num_block)]
        layers.append(ConvAct(num_feat, 3 * scale * scale, act=False))
        self.body = nn.Sequential(*layers)
        self.upsample = nn.PixelShuffle(scale)

    def forward(self, x):
        if self.bgr:
            x = x.flip(1)
        x = x / self.data_range
        y = self.upsample(self.body(x) + torch.repeat_interleave(x, self.scale ** 2, dim=1))
        y = y * self.data_range
        return y.flip(1) if self.bgr else y


def make_tinysr(**kwargs):
    """A factory function, as some repos expose instead of the class."""
    return TinySR(**kwargs)

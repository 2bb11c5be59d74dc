"""Helper module of a user's model package (imported as `models.block`, as research repos do)."""
import torch
from torch import nn


class ConvAct(nn.Module):
    def __init__(self, cin, cout, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.act = nn.PReLU(cout) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.conv(x))

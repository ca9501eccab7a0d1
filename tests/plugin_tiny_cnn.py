"""A two-stage CNN small enough for inner pytest runs (also written into pytester projects as their conftest)."""

import torch
import torch.nn as nn


class Tiny(nn.Module):
    """Two stride-2 stages. ``offset`` shifts the input, so zero padding writes a border step of that size."""

    def __init__(self, padding=1, offset=0.0, feature_info=True):
        super().__init__()
        self.offset = offset
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=padding), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=padding), nn.ReLU())
        if feature_info:  # what timm models carry: the stages' module names and strides
            self.feature_info = [dict(module="stage1", reduction=2, num_chs=8),
                                 dict(module="stage2", reduction=4, num_chs=16)]

    def forward(self, x):
        return self.stage2(self.stage1(x + self.offset))


def make_tiny(**kwargs):
    """The same weights on every call."""
    torch.manual_seed(0)
    return Tiny(**kwargs)

"""A small, fast CNN for CPU studies: `create_model("small_cnn", 4)` (~0.3 M parameters).

    python -c "from ipb.models import create_model; print(create_model('small_cnn', 4))"

Not a network of the paper: the paper's VGG19/HRNet stay the `paper` profile's default. This
one exists so that a study of many (fold, seed) pairs runs thousands of steps per trial on one
CPU core (benchmarks/train_step.py prints its step time next to vgg19's). A 5x5 stride-2 stem,
then conv3x3+BN+ReLU blocks that halve the resolution three more times (48 px -> 3 px), global
average pooling, and the paper's embedding + classifier head (128 -> 128 -> C, dropout).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import check_input, classifier, init_weights, scaled
from .registry import register_model

# (channels, stride) after the stem; four stride-2 stages in all
SMALL_PLAN = ((32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1))
STEM = 16
MIN_SIZE = 16


def _conv_bn(c_in: int, c_out: int, k: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    multi_scale = False

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.5,
                 in_chans: int = 1, plan=SMALL_PLAN):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        chans = scaled(STEM, width)
        layers = _conv_bn(in_chans, chans, 5, 2)
        for out, stride in plan:
            layers += _conv_bn(chans, scaled(out, width), 3, stride)
            chans = scaled(out, width)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = scaled(128, width)
        self.embedding = nn.Linear(chans, self.embed_dim)
        self.classifier = classifier(self.embed_dim, num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, self.in_chans, MIN_SIZE, "small_cnn")
        embedding = self.embedding(self.features(x))
        return self.classifier(embedding), embedding


@register_model(family="small", multi_scale=False, min_size=MIN_SIZE, paper_params=0.0)
def small_cnn(num_classes: int, width: float = 1.0, dropout: float = 0.5, in_chans: int = 1):
    return SmallCNN(num_classes, width, dropout, in_chans)

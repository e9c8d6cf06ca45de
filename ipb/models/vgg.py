"""VGG19-BN for single-scale colony patches (PAPER.md section 5): `create_model("vgg19", 4)`.

    python -c "from ipb.models import create_model; print(create_model('vgg19', 4))"

The paper flattens 2x2x512 = 2048 features, but VGG19's five pools leave 4x4 at its 128 px
input; an adaptive average pool to 2x2 keeps the paper's 2048-wide layer for any input >= 32 px.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import check_input, classifier, init_weights, scaled
from .registry import register_model

VGG19_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
MIN_SIZE = 32  # five 2x2 max pools: 32 px -> 1 px


class VGGFeatures(nn.Module):
    """conv3x3 + BN + ReLU blocks with max pools, then an adaptive pool to 2x2 and flatten."""

    def __init__(self, plan, width: float, in_chans: int):
        super().__init__()
        layers: list[nn.Module] = []
        chans = in_chans
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = scaled(item, width)
            layers += [nn.Conv2d(chans, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            chans = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten())
        self.out_dim = chans * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class VGG(nn.Module):
    """features -> 2048 -> 512 -> 128 (embedding) -> classifier 128-128-C."""

    multi_scale = False

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.5,
                 in_chans: int = 1, plan=VGG19_PLAN):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.embed_dim = scaled(128, width)
        self.features = VGGFeatures(plan, width, in_chans)
        hidden = scaled(512, width)
        self.embedding = nn.Sequential(nn.Linear(self.features.out_dim, hidden),
                                       nn.ReLU(inplace=True), nn.Linear(hidden, self.embed_dim))
        self.classifier = classifier(self.embed_dim, num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, self.in_chans, MIN_SIZE, "vgg19")
        embedding = self.embedding(self.features(x))
        return self.classifier(embedding), embedding


@register_model(family="vgg", multi_scale=False, min_size=MIN_SIZE, paper_params=23.5e6)
def vgg19(num_classes: int, width: float = 1.0, dropout: float = 0.5, in_chans: int = 1):
    return VGG(num_classes, width, dropout, in_chans)

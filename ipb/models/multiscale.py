"""Multi-scale networks (PAPER.md section 5, paper Fig. 3): `create_model("ms_vgg19", 4)`.

    python -c "from ipb.models import create_model; print(create_model('ms_hrnet_w18', 4, width=0.125))"

forward(x) takes the large patch only (224 px in the paper) and cuts its centre half itself, so
the small view always shares the large view's augmentation. The small view goes through a
lighter stream; both streams are fused into one embedding.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import centre_half, check_input, classifier, init_weights, scaled
from .hrnet import HRNET_W18, HRNetTrunk, embedding_head
from .hrnet import MIN_SIZE as HRNET_MIN
from .registry import register_model
from .vgg import VGG19_PLAN, VGGFeatures
from .vgg import MIN_SIZE as VGG_MIN

# The small-view stream of the multi-scale VGG: 10 conv layers at half VGG's widths, sized so
# the whole network lands on the paper's ~24.3 M parameters.
SMALL_VGG_PLAN = (32, 32, "M", 64, 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M")
# The small-view stream of the multi-scale HRNet: 3 branches, 2 blocks each, one module per
# stage (hrnet_w18_small-like), sized for the paper's ~22.5 M parameters in all.
SMALL_HRNET = dict(stem=64, layer1=(1, 32),
                   stages=((1, 2, (18, 36)), (1, 2, (18, 36, 72))),
                   head=(32, 48, 96), features=1024, hidden=None)


class MultiScaleVGG(nn.Module):
    """Large and small VGG streams -> 512 each -> concat 1024 -> BN -> 256 -> 128 -> classifier."""

    multi_scale = True

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.5,
                 in_chans: int = 1):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.embed_dim = scaled(128, width)
        vec = scaled(512, width)
        self.large = VGGFeatures(VGG19_PLAN, width, in_chans)
        self.small = VGGFeatures(SMALL_VGG_PLAN, width, in_chans)
        self.large_fc = nn.Sequential(nn.Linear(self.large.out_dim, vec), nn.ReLU(inplace=True))
        self.small_fc = nn.Sequential(nn.Linear(self.small.out_dim, vec), nn.ReLU(inplace=True))
        fused = scaled(256, width)
        self.embedding = nn.Sequential(nn.BatchNorm1d(2 * vec), nn.Linear(2 * vec, fused), nn.ReLU(inplace=True),
                                       nn.Linear(fused, self.embed_dim))
        self.classifier = classifier(self.embed_dim, num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, self.in_chans, 2 * VGG_MIN, "ms_vgg19")
        both = torch.cat([self.large_fc(self.large(x)),
                          self.small_fc(self.small(centre_half(x)))], dim=1)
        embedding = self.embedding(both)
        return self.classifier(embedding), embedding


class MultiScaleHRNet(nn.Module):
    """HRNet-W18 on the large view, a 3-branch HRNet on the small view, 128-d embedding each;
    concat 256 (the embedding) -> BN -> Linear C."""

    multi_scale = True

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.5,
                 in_chans: int = 1):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        stream_dim = scaled(128, width)
        self.embed_dim = 2 * stream_dim
        self.large = HRNetTrunk(HRNET_W18, width, in_chans)
        self.small = HRNetTrunk(SMALL_HRNET, width, in_chans)
        self.large_fc = embedding_head(self.large.out_dim, scaled(HRNET_W18["hidden"], width),
                                       stream_dim)
        self.small_fc = embedding_head(self.small.out_dim, None, stream_dim)
        self.classifier = nn.Sequential(nn.BatchNorm1d(self.embed_dim), nn.Dropout(dropout),
                                        nn.Linear(self.embed_dim, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, self.in_chans, 2 * HRNET_MIN, "ms_hrnet_w18")
        embedding = torch.cat([self.large_fc(self.large(x)),
                               self.small_fc(self.small(centre_half(x)))], dim=1)
        return self.classifier(embedding), embedding



@register_model(family="vgg", multi_scale=True, min_size=2 * VGG_MIN, paper_params=24.3e6)
def ms_vgg19(num_classes: int, width: float = 1.0, dropout: float = 0.5, in_chans: int = 1):
    return MultiScaleVGG(num_classes, width, dropout, in_chans)


@register_model(family="hrnet", multi_scale=True, min_size=2 * HRNET_MIN, paper_params=22.5e6)
def ms_hrnet_w18(num_classes: int, width: float = 1.0, dropout: float = 0.5, in_chans: int = 1):
    return MultiScaleHRNet(num_classes, width, dropout, in_chans)

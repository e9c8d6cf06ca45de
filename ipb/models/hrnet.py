"""HRNet-W18 with a width multiplier (PAPER.md section 5): `create_model("hrnet_w18", 4)`.

    python -c "from ipb.models import create_model; print(create_model('hrnet_w18', 4, width=0.125))"

Same layers as timm's `hrnet_w18` classification network (tests check the parameter count
against it), written out here because timm fixes the stem (64), the head (32/64/128/256 x4,
2048) and fuses branches with a fixed x2 upsampling, which needs inputs divisible by 32. Here
every channel count scales with `width` and the fusion resizes to the target branch, so any
input >= 32 px works (48 px -> branches of 12/6/3/2 px).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import check_input, init_weights, scaled
from .registry import register_model

MIN_SIZE = 32

# Stage plans: (modules, blocks per branch, branch widths); stage 1 is a Bottleneck layer.
HRNET_W18 = dict(stem=64, layer1=(4, 64),
                 stages=((1, 4, (18, 36)), (4, 4, (18, 36, 72)), (3, 4, (18, 36, 72, 144))),
                 head=(32, 64, 128, 256), features=2048, hidden=512)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True, bias=False):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, planes, 3, stride),
                                  conv_bn(planes, planes, 3, relu=False))
        self.shortcut = (nn.Identity() if stride == 1 and cin == planes
                         else conv_bn(cin, planes, 1, stride, relu=False))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * 4
        self.body = nn.Sequential(conv_bn(cin, planes, 1), conv_bn(planes, planes, 3, stride),
                                  conv_bn(planes, cout, 1, relu=False))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else conv_bn(cin, cout, 1, stride, relu=False))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


def make_layer(block, cin: int, planes: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[block(cin if i == 0 else planes * block.expansion, planes)
                           for i in range(blocks)])


class HRModule(nn.Module):
    """Parallel branches of BasicBlocks, then every branch receives the sum of all branches."""

    def __init__(self, chans: tuple[int, ...], blocks: int):
        super().__init__()
        n = len(chans)
        self.branches = nn.ModuleList(make_layer(BasicBlock, c, c, blocks) for c in chans)
        self.fuse = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:   # lower resolution: 1x1 conv here, resized in forward
                    row.append(conv_bn(chans[j], chans[i], 1, relu=False))
                elif j == i:
                    row.append(nn.Identity())
                else:       # higher resolution: i - j stride-2 convs, ReLU between them
                    steps = [conv_bn(chans[j], chans[j], 3, 2) for _ in range(i - j - 1)]
                    row.append(nn.Sequential(*steps, conv_bn(chans[j], chans[i], 3, 2, relu=False)))
            self.fuse.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if len(xs) == 1:
            return xs
        out = []
        for i, row in enumerate(self.fuse):
            y = xs[i]
            for j, f in enumerate(row):
                if j > i:
                    y = y + F.interpolate(f(xs[j]), size=xs[i].shape[-2:], mode="nearest")
                elif j < i:
                    y = y + f(xs[j])
            out.append(F.relu(y))
        return out


class Transition(nn.Module):
    """Adapt existing branches to the next stage's widths and open a new, half-size branch."""

    def __init__(self, prev: tuple[int, ...], cur: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(
            (nn.Identity() if prev[i] == cur[i] else conv_bn(prev[i], cur[i], 3))
            if i < len(prev) else conv_bn(prev[-1], cur[i], 3, 2)
            for i in range(len(cur)))
        self.n_prev = len(prev)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [layer(xs[i] if i < self.n_prev else xs[-1]) for i, layer in enumerate(self.layers)]


class HRNetTrunk(nn.Module):
    """Stem, stages of 1..K branches, and the classification head of increasing channels,
    globally pooled to a `out_dim` vector."""

    def __init__(self, plan: dict, width: float, in_chans: int):
        super().__init__()
        stem = scaled(plan["stem"], width)
        l1_blocks, l1_planes = plan["layer1"]
        l1_planes = scaled(l1_planes, width)
        self.stem = nn.Sequential(conv_bn(in_chans, stem, 3, 2), conv_bn(stem, stem, 3, 2),
                                  make_layer(Bottleneck, stem, l1_planes, l1_blocks))
        prev: tuple[int, ...] = (l1_planes * Bottleneck.expansion,)
        stages: list[nn.Module] = []
        for modules, blocks, chans in plan["stages"]:
            cur = tuple(scaled(c, width) for c in chans)
            stages.append(Transition(prev, cur))
            stages += [HRModule(cur, blocks) for _ in range(modules)]
            prev = cur
        self.stages = nn.ModuleList(stages)
        head = [scaled(c, width) for c in plan["head"][:len(prev)]]
        self.incre = nn.ModuleList(make_layer(Bottleneck, c, h, 1) for c, h in zip(prev, head))
        self.down = nn.ModuleList(conv_bn(a * 4, b * 4, 3, 2, bias=True)
                                  for a, b in zip(head[:-1], head[1:]))
        self.out_dim = scaled(plan["features"], width)
        self.final = conv_bn(head[-1] * 4, self.out_dim, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [self.stem(x)]
        for stage in self.stages:
            xs = stage(xs)
        y = self.incre[0](xs[0])
        for incre, down, x_i in zip(self.incre[1:], self.down, xs[1:]):
            y = incre(x_i) + down(y)
        return self.final(y).mean(dim=(-2, -1))


def embedding_head(in_dim: int, hidden: int | None, embed_dim: int) -> nn.Module:
    """Pooled features -> (hidden -> ReLU ->) embedding; dropout is left to the classifier."""
    if hidden is None:
        return nn.Linear(in_dim, embed_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, embed_dim))


class HRNet(nn.Module):
    """trunk -> pooled 2048 -> 512 -> 128 (embedding) -> Linear C."""

    multi_scale = False

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.5,
                 in_chans: int = 1, plan: dict = HRNET_W18):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.embed_dim = scaled(128, width)
        self.trunk = HRNetTrunk(plan, width, in_chans)
        hidden = scaled(plan["hidden"], width) if plan.get("hidden") else None
        self.embedding = embedding_head(self.trunk.out_dim, hidden, self.embed_dim)
        self.classifier = nn.Sequential(nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(self.embed_dim, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, self.in_chans, MIN_SIZE, "hrnet_w18")
        embedding = self.embedding(self.trunk(x))
        return self.classifier(embedding), embedding


@register_model(family="hrnet", multi_scale=False, min_size=MIN_SIZE, paper_params=20.4e6)
def hrnet_w18(num_classes: int, width: float = 1.0, dropout: float = 0.5, in_chans: int = 1):
    return HRNet(num_classes, width, dropout, in_chans)

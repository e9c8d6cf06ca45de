"""Pieces shared by every architecture: width scaling, init, the paper's classifier, centre crop.

    used by ipb/models/{vgg,hrnet,multiscale}.py through `create_model`
"""
from __future__ import annotations

import torch
import torch.nn as nn


def scaled(channels: int, width: float, minimum: int = 8) -> int:
    """Channel count at a width multiplier; the floor keeps tiny CPU models trainable."""
    return max(minimum, int(round(channels * width)))


def init_weights(module: nn.Module) -> None:
    """Kaiming (fan_out, relu) for convolutions, BN weight 1 / bias 0 (PAPER.md section 5).

    Linear layers keep PyTorch's default init.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def classifier(embed_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The paper's classifier on the embedding: 128 -> 128 -> C with dropout (scaled with width)."""
    return nn.Sequential(nn.ReLU(inplace=False), nn.Dropout(dropout),
                         nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))


def centre_half(x: torch.Tensor) -> torch.Tensor:
    """The centre S/2 x S/2 of a B x C x S x S patch: the small view of the multi-scale models.

    Cut here, after augmentation, so the two views always share the same geometry (PAPER.md 3).
    """
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"multi-scale models need an even patch side, got {h}x{w}; "
                         "set patch.ms_size to an even number")
    return x[..., h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2]


def check_input(x: torch.Tensor, in_chans: int, min_size: int, arch: str) -> None:
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{arch} expects a B x {in_chans} x S x S tensor, got {tuple(x.shape)}")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"{arch} needs patches of at least {min_size} px, got "
                         f"{tuple(x.shape[-2:])}; raise patch.size / patch.ms_size")

"""SimTriplet (Liu et al., MICCAI 2021), the paper's Table 5 row: SimSiam + a spatial triplet.

    ipb train --method simtriplet --arch vgg19 --fold 0

Pre-training epochs (`method.pretext.epochs`, as every self-supervised row) take, per U+L
colony, two strong views x_1, x_2 of one patch and a strong view x_n of a NEIGHBOURING patch of
the same colony (half to one patch side away, inside its crop: the engine's `triplet` batch).
Through a projector z (2-layer MLP with BN -> `method.pretext.proj_dim`) and a bottleneck
predictor p, with D(p, z) = -cos(p, stop-gradient(z)):
  SimSiam    (D(p_1, z_2) + D(p_2, z_1)) / 2                the two views of one patch
  neighbour  (D(p_1, z_n) + D(p_n, z_1)) / 2                SimTriplet's cross-patch positive
  triplet    max(0, |z_1 - z_n| - |z_1 - z_o| + MARGIN) on unit vectors, z_o the anchor of
             another colony of the batch (the batch rolled by one): the issue's negative term
  loss = SimSiam + neighbour + TRIPLET_W * triplet
then `train.epochs` of supervised fine-tuning on L (the ground-truth-balanced sampler), as SimCLR.
SimTriplet's own loss has no negative (its triplet is anchor, view, neighbour, all positives);
the triplet term is what PAPER.md section 9 asks for. "Another colony" may be of
the same class: the negative is weak by construction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ipb.methods.base import register_method
from ipb.methods.heads import in_graph
from ipb.methods.pretext import PretextThenFinetune

MARGIN = 0.5
TRIPLET_W = 1.0


def neg_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


class _SimTripletNet(nn.Module):
    """The architecture with SimSiam's projector and predictor on its embedding: (z, p)."""

    def __init__(self, model: nn.Module, dim: int):
        super().__init__()
        self.model = model
        d = model.embed_dim
        self.projector = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                                       nn.Linear(d, dim), nn.BatchNorm1d(dim))
        h = max(4, dim // 4)      # SimSiam's bottleneck predictor (2048 -> 512 -> 2048)
        self.predictor = nn.Sequential(nn.Linear(dim, h), nn.BatchNorm1d(h),
                                       nn.ReLU(inplace=True), nn.Linear(h, dim))

    def forward(self, x):
        logits, emb = self.model(x)
        z = self.projector(emb)
        return in_graph(z, logits), self.predictor(z)


@register_method
class SimTriplet(PretextThenFinetune):
    """SimTriplet (Liu et al., MICCAI 2021): SimSiam plus a triplet of neighbouring patches, then L."""
    name = "simtriplet"
    phases = ("triplet", "supervised")

    def build_net(self, model):
        return _SimTripletNet(model, self.cfg.method.pretext.proj_dim)

    def pretext_loss(self, batch):
        n = len(batch["x_1"])
        with self.autocast():
            z, p = self.net(torch.cat([batch["x_1"], batch["x_2"], batch["x_n"]]))
        z1, z2, zn = z[:n], z[n:2 * n], z[2 * n:]
        p1, p2, pn = p[:n], p[n:2 * n], p[2 * n:]
        simsiam = (neg_cosine(p1, z2) + neg_cosine(p2, z1)) / 2
        neighbour = (neg_cosine(p1, zn) + neg_cosine(pn, z1)) / 2
        a, pos = F.normalize(z1.float(), dim=1), F.normalize(zn.float(), dim=1)
        triplet = F.triplet_margin_loss(a, pos, a.roll(1, dims=0), margin=MARGIN)
        loss = simsiam + neighbour + TRIPLET_W * triplet
        return loss, {"train.simtriplet": loss.item(), "train.simsiam": simsiam.item(),
                      "train.neighbour": neighbour.item(), "train.triplet": triplet.item()}

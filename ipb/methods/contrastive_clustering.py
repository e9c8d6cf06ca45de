"""Contrastive Clustering (Li et al., AAAI 2021), the paper's Table 5 row, evaluated two ways.

    ipb train --method contrastive_clustering --arch vgg19 --fold 0                       # fine-tuned
    ipb train --method contrastive_clustering --arch vgg19 --fold 0 \
        method.contrastive_clustering.classifier=hungarian

Clustering epochs (`method.pretext.epochs`, the pre-training budget of every self-supervised row)
take two strong views of U+L patches through two heads on the embedding:
  instance head  2-layer MLP -> `method.pretext.proj_dim`; NT-Xent over the 2B views at
                 INSTANCE_T (0.5, the reference code's)
  cluster head   the architecture's classifier head (dropout off) -> softmax over K = C
                 clusters; NT-Xent between the 2K cluster columns of the two views at
                 CLUSTER_T (1.0), plus the cluster-entropy term log K - H(mean assignment) per
                 view (weight ENTROPY_W, 1 in the reference code) against one-cluster collapse
Each step also assigns the labeled batch to clusters (eval mode, no gradient); before each
evaluation the cluster x class counts of the epoch, summed over workers, are matched one to one
by the Hungarian algorithm, and the cluster head with its rows permuted accordingly IS a
classifier: the architecture with that head, evaluated on val (and, with classifier=hungarian, on
test as the row's result). classifier=finetune (default) then fine-tunes that network on L for
`train.epochs` as SimCLR is, starting from the selected clustering epoch. Two sweep rows report
both. The entropy term pushes clusters toward equal sizes: on the paper's 56 %-Spread mix this
is one reason Contrastive Clustering scores so low in its Table 5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ipb.config.settings import knob, method_settings
from ipb.dist import all_reduce_sum
from ipb.methods.base import register_method, unwrap
from ipb.methods.heads import fresh_head, in_graph, last_linear, projector, with_head
from ipb.methods.pretext import PretextThenFinetune
from ipb.methods.simclr import nt_xent


@method_settings("contrastive_clustering")
@dataclass(frozen=True)
class CCSettings:
    """Contrastive Clustering's keys."""
    # the row's result: the encoder fine-tuned on L, or the cluster head mapped to classes by
    # Hungarian matching on L (no fine-tuning)
    classifier: Literal["finetune", "hungarian"] = knob("finetune", legacy="cc_eval")


INSTANCE_T = 0.5
CLUSTER_T = 1.0
ENTROPY_W = 1.0


def cluster_entropy_term(c: torch.Tensor) -> torch.Tensor:
    """log K - H(p), p = the batch's mean cluster assignment: 0 when clusters are used evenly."""
    p = c.mean(dim=0).clamp(min=1e-8)
    return math.log(c.shape[1]) + (p * p.log()).sum()


class _CCNet(nn.Module):
    """The architecture with an instance head and a cluster head on its embedding."""

    def __init__(self, model: nn.Module, proj_dim: int):
        super().__init__()
        self.model = model
        self.instance = projector(model.embed_dim, proj_dim)
        self.cluster = fresh_head(model, dropout=0.0)

    def forward(self, x):
        logits, emb = self.model(x)
        return in_graph(self.instance(emb), logits), torch.softmax(self.cluster(emb).float(), 1)


def hungarian(counts: np.ndarray) -> np.ndarray:
    """class of each cluster: the one-to-one map with the most (cluster, class) agreements."""
    rows, cols = linear_sum_assignment(-counts)
    out = np.arange(counts.shape[0])
    out[rows] = cols
    return out


@register_method
class ContrastiveClustering(PretextThenFinetune):
    """Contrastive Clustering (Li et al., AAAI 2021): instance and cluster contrast on U+L; then L."""
    name = "contrastive_clustering"
    phases = ("clustering", "supervised")

    def __init__(self, cfg, num_classes, device, wrap):
        super().__init__(cfg, num_classes, device, wrap)
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        self.view: nn.Module | None = None     # the Hungarian classifier, rebuilt when stale

    def build_net(self, model):
        return _CCNet(model, self.cfg.method.pretext.proj_dim)

    def finetune_epochs(self):
        finetune = self.cfg.method.contrastive_clustering.classifier == "finetune"
        return self.cfg.train.epochs if finetune else 0

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        if self.phase(epoch) == "clustering":
            self.counts.zero_()

    def pretext_loss(self, batch):
        n = len(batch["x_1"])
        with self.autocast():
            z, c = self.net(torch.cat([batch["x_1"], batch["x_2"]]))
        inst = nt_xent(z[:n], z[n:], INSTANCE_T)
        clus = nt_xent(c[:n].t(), c[n:].t(), CLUSTER_T)
        ent = cluster_entropy_term(c[:n]) + cluster_entropy_term(c[n:])
        loss = inst + clus + ENTROPY_W * ent
        return loss, {"train.cc": loss.item(), "train.cc_instance": inst.item(),
                      "train.cc_cluster": clus.item(), "train.cc_entropy": ent.item()}

    @torch.no_grad()
    def after_pretext_step(self, batch):
        """cluster x class counts of the labeled batch, as evaluation would assign them."""
        net = unwrap(self.net)
        net.eval()
        _, c = net(batch["x_l"])
        net.train()
        y = batch["y_l"].cpu()
        k = c.argmax(dim=1).cpu()
        keep = y >= 0
        self.counts.index_put_((k[keep], y[keep]), torch.ones(int(keep.sum()), dtype=torch.float64),
                               accumulate=True)
        self.view = None

    def hungarian_model(self) -> nn.Module:
        """The architecture whose classifier is the cluster head with its outputs permuted to
        classes by Hungarian matching on L (counts summed over workers)."""
        if self.view is None:
            mapping = torch.from_numpy(hungarian(all_reduce_sum(self.counts.clone()).numpy()))
            cluster = unwrap(self.net).cluster
            head = fresh_head(self.model)
            head.load_state_dict(cluster.state_dict())
            src, dst = last_linear(cluster), last_linear(head)
            with torch.no_grad():
                dst.weight[mapping] = src.weight
                dst.bias[mapping] = src.bias
            self.view = with_head(self.model, head.to(self.device))
        return self.view

    def begin_final_stage(self, pretrained):
        # fine-tuning starts from the selected clustering epoch, the matched head included
        if pretrained is not None:
            self.model.load_state_dict(pretrained)

    def phase_model(self, phase):
        return self.hungarian_model() if phase == "clustering" else self.model

    def eval_model(self):
        return self.phase_model(self.phase(self.num_epochs() - 1))

    def extra_state(self):
        return {"cluster_counts": self.counts.clone()}

    def load_extra_state(self, state):
        if "cluster_counts" in state:
            self.counts.copy_(state["cluster_counts"])
        self.view = None

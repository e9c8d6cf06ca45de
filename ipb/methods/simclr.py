"""SimCLR baseline: NT-Xent pre-training on U+L, then supervised fine-tuning on L.

    ipb train --method simclr --arch vgg19 --fold 0

Contrastive epochs (`method.pretext.epochs`) take two strong views of every patch, project the
model's embedding through a 2-layer head and minimise NT-Xent at `method.simclr.temperature`
(0.5, as in the paper); then `train.epochs` of supervised fine-tuning on the labeled set with
the ground-truth-balanced sampler. Negatives are the worker's own batch (no cross-worker
gather): with DDP the effective batch for the loss is the per-worker batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ipb.config.settings import knob, method_settings
from ipb.methods.base import Method, make_optimizer, register_method, set_lr


@method_settings("simclr")
@dataclass(frozen=True)
class SimCLRSettings:
    """SimCLR's keys (its budget and head: `method.pretext.*`)."""
    temperature: float = knob(0.5, "(0, inf)", legacy="simclr_temperature")   # NT-Xent's, the paper's


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross entropy over 2B views; positives are (i, i + B)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    n = len(z1)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class _WithHead(nn.Module):
    """Model + projection head, so DDP sees one module per optimizer."""

    def __init__(self, model: nn.Module, proj_dim: int):
        super().__init__()
        self.model = model
        d = model.embed_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, proj_dim))

    def forward(self, x):
        logits, emb = self.model(x)
        # logits join the graph at zero weight: DDP wants every parameter to get a gradient
        return self.head(emb) + 0.0 * logits.sum()


@register_method
class SimCLR(Method):
    """SimCLR: NT-Xent pre-training on U+L, then supervised fine-tuning on L."""
    name = "simclr"
    phases = ("contrastive", "supervised")
    uses_unlabeled = True

    def __init__(self, cfg, num_classes, device, wrap):
        super().__init__(cfg, num_classes, device, wrap)
        from ipb.models import create_model
        m = cfg.model
        base = create_model(m.arch, num_classes=num_classes, width=m.width,
                            dropout=m.dropout).to(device)
        self.contrastive = wrap(_WithHead(base, cfg.method.pretext.proj_dim).to(device))
        self.model = base            # fine-tuning wraps the same weights separately
        self.model_ddp = None
        self.opt_c = make_optimizer(cfg, self.contrastive.parameters())
        self.opt = make_optimizer(cfg, base.parameters())

    def phase(self, epoch):
        return "contrastive" if epoch < self.cfg.method.pretext.epochs else "supervised"

    def start_epoch(self, epoch):
        ft_epoch = epoch - self.cfg.method.pretext.epochs
        set_lr(self.opt_c, epoch, self.cfg)
        set_lr(self.opt, max(ft_epoch, 0), self.cfg)

    def _finetune_model(self):
        if self.model_ddp is None:
            self.model_ddp = self.wrap(self.model)
        return self.model_ddp

    def train_step(self, batch, epoch):
        if self.phase(epoch) == "contrastive":
            self.contrastive.train()
            n = len(batch["x_1"])
            with self.autocast():
                z = self.contrastive(torch.cat([batch["x_1"], batch["x_2"]]))
            loss = nt_xent(z[:n], z[n:], self.cfg.method.simclr.temperature)
            self.opt_c.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_c.step()
            self.step_count += 1
            return {"train.nt_xent": loss.item()}
        return {"train.loss": self.supervised_step(self._finetune_model(), self.opt, batch)}

    def eval_model(self):
        return self.model

    def train_model(self):
        return self._finetune_model()

    def modules(self):
        return {"contrastive": self.contrastive, "opt_c": self.opt_c, "opt": self.opt}

    def num_epochs(self):
        return self.cfg.method.pretext.epochs + self.cfg.train.epochs

"""The shape of the self-supervised rows: pretext epochs on U+L, then fine-tuning on L.

    python -c "from ipb.methods.pretext import PretextThenFinetune; help(PretextThenFinetune)"

`method.pretext.epochs` pretext epochs (the pre-training budget of every self-supervised row)
train the architecture with the pretext heads of `build_net` (DDP-wrapped) on the batches of
the first of `phases`; then `train.epochs` of supervised fine-tuning on L with the
ground-truth-balanced sampler train the architecture itself, wrapped for DDP on first use.
Used by Contrastive Clustering and SimTriplet (SimCLR predates it: ipb/methods/simclr.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ipb.config.settings import knob, method_settings
from ipb.methods.base import Method, make_optimizer, set_lr


@method_settings("pretext")
@dataclass(frozen=True)
class PretextSettings:
    """The self-supervised rows' pre-training (SimCLR, Contrastive Clustering, SimTriplet)."""
    epochs: int = knob(100, "[0, inf)", legacy="simclr_epochs")   # the pretext budget
    proj_dim: int = knob(64, "[1, inf)", legacy="simclr_proj_dim")   # the projection head's width


class PretextThenFinetune(Method):
    uses_unlabeled = True
    phases = ("contrastive", "supervised")    # (the pretext batch, then fine-tuning on L)

    def __init__(self, cfg, num_classes, device, wrap):
        super().__init__(cfg, num_classes, device, wrap)
        from ipb.models import create_model
        m = cfg.model
        self.model = create_model(m.arch, num_classes=num_classes, width=m.width,
                                  dropout=m.dropout).to(device)
        self.net = wrap(self.build_net(self.model).to(device))
        self.model_ddp = None
        self.opt_c = make_optimizer(cfg, self.net.parameters())
        self.opt = make_optimizer(cfg, self.model.parameters())

    # -- what a subclass says ------------------------------------------------------------------
    def build_net(self, model: nn.Module) -> nn.Module:
        """`model` with the pretext heads (one module, so DDP sees one per optimizer)."""
        raise NotImplementedError

    def pretext_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The pretext loss of one batch of the pretext phase, and what to log."""
        raise NotImplementedError

    def after_pretext_step(self, batch: dict[str, torch.Tensor]) -> None:
        """Anything to do once the step is taken (Contrastive Clustering's cluster counts)."""

    def finetune_epochs(self) -> int:
        return self.cfg.train.epochs

    # -- the contract ----------------------------------------------------------------------------
    def phase(self, epoch):
        return self.phases[0] if epoch < self.cfg.method.pretext.epochs else "supervised"

    def num_epochs(self):
        return self.cfg.method.pretext.epochs + self.finetune_epochs()

    def start_epoch(self, epoch):
        set_lr(self.opt_c, epoch, self.cfg)
        set_lr(self.opt, max(epoch - self.cfg.method.pretext.epochs, 0), self.cfg)

    def train_step(self, batch, epoch):
        if self.phase(epoch) == "supervised":
            return {"train.loss": self.supervised_step(self.train_model(), self.opt, batch)}
        self.net.train()
        loss, logs = self.pretext_loss(batch)
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_c.step()
        self.step_count += 1
        self.after_pretext_step(batch)
        return logs

    def eval_model(self):
        return self.model

    def train_model(self):
        if self.model_ddp is None:
            self.model_ddp = self.wrap(self.model)
        return self.model_ddp

    def modules(self):
        return {"net": self.net, "opt_c": self.opt_c, "opt": self.opt}

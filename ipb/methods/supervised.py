"""Supervised CNN on the labeled set (the paper's supervised rows and teacher pre-training).

    ipb train --method supervised --arch vgg19 --fold 0

Ground-truth-balanced sampler (the engine draws len(L) labeled patches per epoch with weights
1 / class count), SGD 0.005 / 0.9 / 1e-4, lr / 10 at `train.lr_step_epoch`.
"""
from __future__ import annotations

from ipb.methods.base import Method, make_optimizer, register_method, set_lr


@register_method
class Supervised(Method):
    """The CNN on the labeled set alone (the paper's supervised rows; the MPL family's teacher)."""
    name = "supervised"
    phases = ("supervised",)

    def __init__(self, cfg, num_classes, device, wrap):
        super().__init__(cfg, num_classes, device, wrap)
        self.model = self.new_model()
        self.opt = make_optimizer(cfg, self.model.parameters())

    def phase(self, epoch):
        return "supervised"

    def start_epoch(self, epoch):
        set_lr(self.opt, epoch, self.cfg)

    def train_step(self, batch, epoch):
        return {"train.loss": self.supervised_step(self.model, self.opt, batch)}

    def eval_model(self):
        return self.model

    def modules(self):
        return {"model": self.model, "opt": self.opt}

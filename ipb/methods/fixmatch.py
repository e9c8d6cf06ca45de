"""FixMatch (Sohn et al., NeurIPS 2020): weak/strong consistency above a confidence threshold.

    ipb train --method fixmatch --arch vgg19 --fold 0

One network. Stage 1 is the MPL family's teacher pre-training (`method.teacher_pretrain_epochs`
on L; a sweep reuses the supervised row's selected model, ipb.lineage.teacher_key), so
FixMatch, MPL and IPB start from the same network and then spend the same `train.epochs` of
unlabeled epochs.
Stage 2, one step as USB runs it (semilearn/algorithms/fixmatch, its defaults):
  logits of cat(x_l, x_uw, x_us) in one forward (USB's use_cat)
  supervised loss on x_l (cross-entropy; the partial-label loss with multi_label_loss=partial)
  pseudo-label = argmax softmax(x_uw) (hard labels, so USB's T=0.5 plays no part),
  mask = max softmax >= `method.fixmatch.threshold` (USB's p_cutoff 0.95)
  loss = supervised + `method.lambda_u` (USB's ulb_loss_ratio 1.0) * mean(mask * CE(x_us, label))
An EMA of the network is evaluated and saved (USB evaluates its ema_model, ema_m 0.999), its
decay warmed up as min(EMA_M, (1 + n) / (10 + n)) over the n steps of stage 2: a plain 0.999
would still be mostly its starting point after the few hundred steps of a CPU budget.
Not USB: the optimiser and schedule are the harness's (`train.*`, as for every row), and the
unlabeled batch is `train.unlabeled_batch_size` (USB's uratio=7 would give FixMatch seven times
the unlabeled patches per step that MPL and IPB get).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ipb.config.settings import knob, method_settings
from ipb.methods.base import Method, make_optimizer, register_method, set_lr, unwrap
from ipb.methods.stabilize import ModelEMA

EMA_M = 0.999          # USB's ema_m
EMA_WARMUP = 10        # decay = min(EMA_M, (1 + n) / (EMA_WARMUP + n))


@method_settings("fixmatch")
@dataclass(frozen=True)
class FixMatchSettings:
    """FixMatch's keys (also ABC's and FixMatch + IPB's)."""
    threshold: float = knob(0.95, "[0, 1]", legacy="fixmatch_threshold")   # USB's p_cutoff


@register_method
class FixMatch(Method):
    """FixMatch (Sohn et al., NeurIPS 2020): weak/strong consistency above a confidence cut-off."""
    name = "fixmatch"
    phases = ("supervised", "mpl")     # the supervised CNN, then weak/strong unlabeled steps
    uses_unlabeled = True
    pretrains_teacher = True      # stage 1 = the supervised row (ipb.lineage.teacher_key)

    def __init__(self, cfg, num_classes, device, wrap):
        super().__init__(cfg, num_classes, device, wrap)
        self.model = self.new_model()
        self.opt = make_optimizer(cfg, self.model.parameters())
        self.ema = ModelEMA(self.eval_source(), EMA_M)
        self.ssl_steps = 0

    def eval_source(self) -> torch.nn.Module:
        """The network whose average is evaluated (ABC: the one answering with its aux head)."""
        return unwrap(self.model)

    def net(self) -> torch.nn.Module:
        """The (DDP-wrapped) module stage 2 trains; its output[0] is the FixMatch logits."""
        return self.model

    # -- stages ------------------------------------------------------------------------------
    def phase(self, epoch):
        return "supervised" if epoch < self.cfg.method.teacher_pretrain_epochs else "mpl"

    def num_epochs(self):
        return self.cfg.method.teacher_pretrain_epochs + self.cfg.train.epochs

    def start_epoch(self, epoch):
        pre = self.cfg.method.teacher_pretrain_epochs
        set_lr(self.opt, epoch if epoch < pre else epoch - pre, self.cfg)

    def begin_final_stage(self, pretrained):
        if pretrained is not None:
            unwrap(self.model).load_state_dict(pretrained)
        self.opt = make_optimizer(self.cfg, self.net().parameters())
        self.ema.reset(self.eval_source())
        self.ssl_steps = 0

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, batch, epoch):
        if self.phase(epoch) == "supervised":
            return {"train.loss": self.supervised_step(self.model, self.opt, batch)}
        m = self.cfg.method
        n_l, n_u = len(batch["x_l"]), len(batch["x_uw"])
        net = self.net()
        net.train()
        with self.autocast():
            out = net(torch.cat([batch["x_l"], batch["x_uw"], batch["x_us"]]))
        logits = out[0].float()
        sup = self.labeled_loss(logits[:n_l], batch)
        p = torch.softmax(logits[n_l:n_l + n_u].detach(), dim=1)
        conf, pseudo = p.max(dim=1)
        mask = (conf >= m.fixmatch.threshold).float()
        # mean of mask * loss (not a masked mean): an empty mask still backprops zeros (DDP)
        unsup = (mask * F.cross_entropy(logits[n_l + n_u:], pseudo, reduction="none")).mean()
        extra, logs = self.extra_loss(out, batch, epoch, n_l, n_u)
        loss = sup + m.lambda_u * unsup + extra
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.ema.decay = min(EMA_M, (1 + self.ssl_steps) / (EMA_WARMUP + self.ssl_steps))
        self.ema.update(self.eval_source())
        self.step_count += 1
        self.ssl_steps += 1
        return {"train.loss": loss.item(), "train.sup": sup.item(), "train.unsup": unsup.item(),
                "train.mask_rate": mask.mean().item(), **logs}

    def extra_loss(self, out, batch, epoch, n_l, n_u) -> tuple[torch.Tensor, dict]:
        """Loss terms a subclass adds to FixMatch's (ABC's balanced head)."""
        return torch.zeros((), device=out[0].device), {}

    # -- models and checkpoints --------------------------------------------------------------
    def eval_model(self):
        return self.ema

    def train_model(self):
        return self.model

    def phase_model(self, phase):
        return self.model if phase == "supervised" else self.ema

    def modules(self):
        return {"model": self.model, "opt": self.opt, "ema": self.ema}

    def extra_state(self):
        return {"ssl_steps": self.ssl_steps}

    def load_extra_state(self, state):
        self.ssl_steps = state.get("ssl_steps", 0)

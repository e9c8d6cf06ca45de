"""Meta Pseudo Labels with UDA (the paper's "MPL (Imbalanced)" row), PAPER.md section 6.

    ipb train --method mpl --arch vgg19 --fold 0

One step, in the reference code's order made explicit:
 1 teacher forward on labeled, weak and strong unlabeled in one batch
 2 teacher supervised loss            3 UDA consistency, masked by confidence >= threshold
 4 student loss on the strong view against the teacher's (hard, masked) pseudo-labels
 5 student step; its labeled loss before (from 4) and after (a no-grad forward)
 6 MPL feedback h = (after - before) [h_sign] times CE(T(x_us), argmax T(x_us))
 7 teacher step on supervised + UDA + MPL losses.
Every rank runs the same graph even when its confidence mask is empty (DDP needs that).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ipb.methods.base import Method, make_optimizer, register_method, set_lr


@register_method
class MPL(Method):
    name = "mpl"
    uses_unlabeled = True

    def __init__(self, cfg, num_classes, device, wrap):
        super().__init__(cfg, num_classes, device, wrap)
        self.teacher = self.new_model()
        self.student = self.new_model()
        self.opt_t = make_optimizer(cfg, self.teacher.parameters())
        self.opt_s = make_optimizer(cfg, self.student.parameters())
        self.h_baseline = 0.0
        self.mpl_steps = 0   # steps since the MPL phase began (UDA ramp)

    def phase(self, epoch):
        # the teacher is pre-trained on L first (the paper's supervised stage)
        return "supervised" if epoch < self.cfg.method.teacher_pretrain_epochs else "mpl"

    def num_epochs(self):
        return self.cfg.method.teacher_pretrain_epochs + self.cfg.train.epochs

    def start_epoch(self, epoch):
        m = self.cfg.method
        mpl_epoch = epoch - m.teacher_pretrain_epochs
        # each stage runs its own step schedule (the paper: 200 pre-training epochs, lr / 10
        # at 100, then 200 MPL/IPB epochs), as SimCLR's fine-tuning does
        set_lr(self.opt_t, epoch if mpl_epoch < 0 else mpl_epoch, self.cfg)
        # student warm-up: a low student lr for the first epochs of MPL
        scale = m.student_warmup_lr_scale if 0 <= mpl_epoch < m.student_warmup_epochs else 1.0
        set_lr(self.opt_s, max(mpl_epoch, 0), self.cfg, scale)

    def train_step(self, batch, epoch):
        if self.phase(epoch) == "supervised":
            return {"train.teacher_sup": self.supervised_step(self.teacher, self.opt_t, batch)}
        return self._mpl_step(batch)

    def student_targets(self, p_uw: torch.Tensor):
        """(targets, per-sample weight) for the student from the teacher's weak-view softmax."""
        m = self.cfg.method
        conf, hard = p_uw.max(dim=1)
        mask = (conf >= m.threshold).float()
        weight = mask if m.student_mask else torch.ones_like(mask)
        return (p_uw if m.soft_targets else hard), weight, mask

    def feedback(self, s_loss_l_old: torch.Tensor, s_loss_l_new: torch.Tensor) -> float:
        """The MPL signal h; its sign is disputed (MPL issue 602 / MPL-pytorch issue 6)."""
        m = self.cfg.method
        diff = (s_loss_l_new - s_loss_l_old).item()
        h = diff if m.h_sign == "new_minus_old" else -diff
        if m.h_baseline_ema > 0:
            self.h_baseline = m.h_baseline_ema * self.h_baseline + (1 - m.h_baseline_ema) * h
            h = h - self.h_baseline
        return h

    def _mpl_step(self, batch):
        m = self.cfg.method
        x_l, y_l, x_uw, x_us = batch["x_l"], batch["y_l"], batch["x_uw"], batch["x_us"]
        n_l, n_u = len(x_l), len(x_uw)
        self.teacher.train()
        self.student.train()
        # 1-3: teacher
        with self.autocast():
            t_logits, _ = self.teacher(torch.cat([x_l, x_uw, x_us]))
        t_logits = t_logits.float()
        t_l, t_uw, t_us = t_logits[:n_l], t_logits[n_l:n_l + n_u], t_logits[n_l + n_u:]
        t_sup = F.cross_entropy(t_l, y_l)
        p_uw = torch.softmax(t_uw.detach() / m.temperature, dim=1)
        targets, weight, mask = self.student_targets(p_uw)
        uda = (mask * -(p_uw * F.log_softmax(t_us, dim=1)).sum(dim=1)).mean()
        lambda_u = m.lambda_u * min(1.0, (self.mpl_steps + 1) / max(1, m.uda_steps))
        # 4: student on labeled + strong unlabeled (labeled part only measured)
        with self.autocast():
            s_logits, _ = self.student(torch.cat([x_l, x_us]))
        s_logits = s_logits.float()
        s_l, s_us = s_logits[:n_l], s_logits[n_l:]
        s_loss_l_old = F.cross_entropy(s_l.detach(), y_l)
        if m.soft_targets:
            per = -(targets * F.log_softmax(s_us, dim=1)).sum(dim=1)
        else:
            per = F.cross_entropy(s_us, targets, reduction="none")
        # mean of weight * loss (not a masked mean): an empty mask still backprops zeros
        s_loss = (weight * per).mean()
        # 5: student step, then its labeled loss after the step
        self.opt_s.zero_grad(set_to_none=True)
        s_loss.backward()
        self.opt_s.step()
        with torch.no_grad(), self.autocast():
            s_l_new, _ = self.student(x_l)
        s_loss_l_new = F.cross_entropy(s_l_new.float(), y_l)
        # 6: MPL feedback on the teacher
        h = self.feedback(s_loss_l_old, s_loss_l_new)
        t_mpl = h * F.cross_entropy(t_us, t_us.detach().argmax(dim=1))
        # 7: teacher step
        t_loss = t_sup + lambda_u * uda + t_mpl
        self.opt_t.zero_grad(set_to_none=True)
        t_loss.backward()
        self.opt_t.step()
        self.step_count += 1
        self.mpl_steps += 1
        return {"train.teacher": t_loss.item(), "train.teacher_sup": t_sup.item(),
                "train.uda": uda.item(), "train.mpl": t_mpl.item(), "train.h": h,
                "train.student": s_loss.item(), "train.student_l_new": s_loss_l_new.item(),
                "train.mask_rate": mask.mean().item()}

    def eval_model(self):
        return self.student

    def pseudo_model(self):
        return self.teacher

    def modules(self):
        return {"teacher": self.teacher, "student": self.student,
                "opt_t": self.opt_t, "opt_s": self.opt_s}

    def extra_state(self):
        return {"h_baseline": self.h_baseline, "mpl_steps": self.mpl_steps}

    def load_extra_state(self, state):
        self.h_baseline = state.get("h_baseline", 0.0)
        self.mpl_steps = state.get("mpl_steps", 0)

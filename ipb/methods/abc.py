"""ABC: FixMatch with an Auxiliary Balanced Classifier (Lee et al., NeurIPS 2021), as USB ships it.

    ipb train --method abc --arch vgg19 --fold 0

Why ABC of USB's imbalance-aware methods (ABC, DARP, DASO, ACR, SimPro): it balances in the loss
what IPB balances in the data -- the closest rival to IPB's question. It needs only L's class
counts, which we have; DARP, DASO, ACR and SimPro estimate or assume U's class distribution
(U holds the multi-label and unlabeled colonies here, whose classes nobody knows). It is one
extra head on the shared embedding with Bernoulli masks that multiply the loss (every rank runs
the same graph under DDP), so it costs FixMatch plus a linear layer on 2 CPU cores.

FixMatch's step (ipb/methods/fixmatch.py) plus a second head `aux` on the same embedding, as in
USB's semilearn/imb_algorithms/abc (abc_p_cutoff = method.fixmatch.threshold, abc_loss_ratio):
  labeled    CE(aux(x_l), y) * Bernoulli(q_min / q_y), q = the class mix of the labeled batches
  unlabeled  CE(aux(x_us), y') * [max softmax aux(x_uw) >= cut-off] * Bernoulli(k_y'),
             k = 1 - t (1 - n_min / n), y' = argmax aux(x_uw), n = L's class counts,
             t = progress through stage 2 (0 -> 1)
  loss = FixMatch's loss + ABC_LOSS_RATIO * (labeled + unlabeled)
In USB the labeled batches are drawn uniformly, so q = n and the labeled mask is n_min / n_y.
Here they come from the ground-truth-balanced sampler of PAPER.md section 6: q is uniform and
the labeled mask is 1 (masking again would over-weight the minority classes).
The aux head is what is evaluated and saved (USB evaluates logits_aux), through an EMA like
FixMatch's. It is a copy of the architecture's own classifier head (USB: one linear layer on
the features), so the saved student is a plain <arch> that `ipb predict` loads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ipb.methods.base import make_optimizer, register_method, unwrap
from ipb.methods.fixmatch import EMA_M, FixMatch
from ipb.methods.heads import fresh_head, with_head
from ipb.methods.stabilize import ModelEMA

ABC_LOSS_RATIO = 1.0     # USB's abc_loss_ratio


class _ABCNet(nn.Module):
    """The architecture and the auxiliary head on its embedding: (logits, embedding, aux)."""

    def __init__(self, model: nn.Module, aux: nn.Module):
        super().__init__()
        self.model, self.aux = model, aux

    def forward(self, x):
        logits, emb = self.model(x)
        return logits, emb, self.aux(emb)


@register_method
class ABC(FixMatch):
    """FixMatch with an auxiliary class-balanced head (Lee et al., NeurIPS 2021), as USB ships it."""
    name = "abc"

    def __init__(self, cfg, num_classes, device, wrap):
        super().__init__(cfg, num_classes, device, wrap)
        base = unwrap(self.model)
        self.aux = fresh_head(base).to(device)
        self.view = with_head(base, self.aux)
        self.abc_net = wrap(_ABCNet(base, self.aux))
        self.opt = make_optimizer(cfg, self.abc_net.parameters())
        self.ema = ModelEMA(self.view, EMA_M)

    def eval_source(self):
        # FixMatch.__init__ asks before the aux head exists
        view = getattr(self, "view", None)
        return unwrap(self.model) if view is None else view

    def net(self):
        return self.abc_net

    def extra_loss(self, out, batch, epoch, n_l, n_u):
        aux = out[2].float()
        counts = batch["n_l"].to(aux.device).float()
        n_dist = counts.min().clamp(min=1) / counts.clamp(min=1)
        lab = self.labeled_loss(aux[:n_l], batch)      # the batch is balanced: mask 1
        with torch.no_grad():
            p = torch.softmax(aux[n_l:n_l + n_u], dim=1)
            conf, pseudo = p.max(dim=1)
            stage = self.cfg.method.teacher_pretrain_epochs
            t = min(1.0, max(0.0, (epoch - stage) / max(1, self.cfg.train.epochs)))
            keep = 1 - t * (1 - n_dist)
            mask = (conf >= self.cfg.method.fixmatch.threshold).float() * \
                torch.bernoulli(keep[pseudo])
        unlab = (mask * F.cross_entropy(aux[n_l + n_u:], pseudo, reduction="none")).mean()
        loss = lab + unlab
        return ABC_LOSS_RATIO * loss, {"train.abc": loss.item(),
                                       "train.abc_mask": mask.mean().item()}

    def modules(self):
        return {"model": self.abc_net, "opt": self.opt, "ema": self.ema}

"""Partial labels for multi-label colonies: `method.multi_label_loss=partial`.

    ipb train --method supervised method.multi_label_loss=partial        # + method.multi_label=true: ML

Today (`ignore`) a colony labelled `A|B` only ever joins U. With `partial` a labeled fraction of
them joins L (ipb/data/splits.py) and its label is a candidate set S = {A, B}: the loss teaches
"one of A or B, none of the others". Following Witmer & Bhanu (PLoS One 17:e0263656, 2022), a
class-asymmetric loss combined with Dice, on the softmax p of the network:

  candidate term  -(1 - P(S))^GAMMA_POS * log P(S),  P(S) = sum of p over S: for a single
                  label this is cross-entropy; for `A|B` any split of the mass between A and B
                  costs the same
  negative term   sum over c not in S of  m_c^GAMMA_NEG * -log(1 - m_c),  m_c = max(p_c - CLIP, 0):
                  the asymmetric focusing of ASL (Ridnik et al., ICCV 2021): the classes a colony
                  is NOT are pushed down, easy negatives cost ~nothing, so the many confident
                  negatives do not drown the rare positives
  Dice term       1 - mean over the classes present of the batch's soft Dice between p and the
                  target, the target of an `A|B` colony being p renormalised over {A, B}
                  (detached: the network's own current choice between the candidates). Dice
                  weighs every class alike whatever its count, the imbalance-aware part.

The engine puts the candidates in the labeled batch as `c_l` (B, C multi-hot) only in this
mode, so `ignore` runs the plain cross-entropy exactly as before. Plain torch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GAMMA_POS = 0.0     # ASL's recommended positive focusing (none)
GAMMA_NEG = 4.0     # ASL's default negative focusing
CLIP = 0.05         # ASL's probability margin on negatives
DICE_WEIGHT = 1.0
EPS = 1e-6


def candidate_nll(logits: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """-log P(S) averaged over the batch: cross-entropy for single labels, the partial-label
    likelihood for candidate sets (MPL's labeled loss before/after the student step)."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -torch.logsumexp(logp.masked_fill(cand <= 0, float("-inf")), dim=1).mean()


def partial_label_loss(logits: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Candidate + asymmetric negative + Dice terms (module docstring); `cand` (B, C) is 1 on
    each colony's candidate classes. Every sample enters every term: no data-dependent graph."""
    logits = logits.float()
    cand = cand.to(logits.dtype)
    p = torch.softmax(logits, dim=1)
    logp = F.log_softmax(logits, dim=1)
    log_ps = torch.logsumexp(logp.masked_fill(cand <= 0, float("-inf")), dim=1)
    pos = -((1 - log_ps.exp()).clamp(min=0) ** GAMMA_POS) * log_ps
    m = (p - CLIP).clamp(min=0)
    neg = ((1 - cand) * m.pow(GAMMA_NEG) * -torch.log((1 - m).clamp(min=EPS))).sum(dim=1)
    with torch.no_grad():
        target = p * cand
        target = target / target.sum(dim=1, keepdim=True).clamp(min=EPS)
    inter = (p * target).sum(dim=0)
    dice = (2 * inter + EPS) / (p.sum(dim=0) + target.sum(dim=0) + EPS)
    present = (target.sum(dim=0) > 0).to(p.dtype)
    dice_loss = (present * (1 - dice)).sum() / present.sum().clamp(min=1)
    return (pos + neg).mean() + DICE_WEIGHT * dice_loss


def candidates(labels, classes: list[str]) -> np.ndarray:
    """(n, C) float32 multi-hot of each label's classes (`A|B` -> A and B; unknown -> none)."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), np.float32)
    for i, lab in enumerate(labels):
        if isinstance(lab, str):
            for part in lab.split("|"):
                if part in index:
                    out[i, index[part]] = 1.0
    return out

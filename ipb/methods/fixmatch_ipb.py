"""FixMatch whose unlabeled epochs are pseudo-class balanced: IPB's balancing without MPL.

    ipb train --method fixmatch_ipb --arch small_cnn --fold 0

Issue 18 asked for this row if IPB's MPL term could not be made to help: on the study set it
was made to matter (method.mpl.h_normalize: 34 % of the teacher's gradient norm) and taking it out
left IPB (learn) level or better (README, "What each switch of the learn preset does"). So the
paper's mechanism, the pseudo-class balanced unlabeled epoch, is measured here on a student
that needs no teacher: FixMatch's step unchanged (ipb/methods/fixmatch.py), and at the start of
every unlabeled epoch the network that makes FixMatch's pseudo-labels (eval mode; not its EMA,
which only is evaluated) predicts every unlabeled colony of this worker on the epoch's patch
(method.pseudo_patches=K: the mean softmax of K patches inside its mask), and the epoch is drawn
with weight 1 / global pseudo-class count exactly as IPB's (ipb/methods/ipb.py). Everything
else is the FixMatch row's, so on the same (fold, seed) pairs the difference between the two
rows is the balancing's own effect.
"""
from __future__ import annotations

from ipb.methods.base import register_method, unwrap
from ipb.methods.fixmatch import FixMatch
from ipb.methods.ipb import pseudo_balanced_epoch


@register_method
class FixMatchIPB(FixMatch):
    """FixMatch whose unlabeled epochs are balanced by its own pseudo-classes (IPB without MPL)."""
    name = "fixmatch_ipb"

    def unlabeled_epoch(self, epoch, pool):
        proba = pool.colony_proba(unwrap(self.model), self.cfg.method.pseudo_patches)
        return pseudo_balanced_epoch(proba, pool)

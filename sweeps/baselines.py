"""Every method on the same folds: the paper's rows and the related ones (issue 12).

    python sweeps/baselines.py [--profile smoke|paper|FILE] [--data DIR] [key=value ...]
    ray job submit --working-dir . -- python sweeps/baselines.py --profile paper --data s3://...

Rows: every registered method (`ipb methods`: the paper's supervised, MPL (imbalanced), MPL
(balanced), IPB and SimCLR; FixMatch, FixMatch + IPB balancing, ABC, Contrastive Clustering,
SimTriplet, GAN minority balancing), plus Contrastive Clustering mapped by Hungarian matching
and the supervised CNN with partial labels (multi-label colonies in L). Every trial is an MLflow child run of one parent run in
experiment `ipb-baselines`; the comparison table (per-class TPR and F1) ends up on the parent
run and is printed at the end. The study's `--related` rows are the same methods on paired
(fold, seed) runs with equal budgets (sweeps/study.py).
"""
import sys

from ipb.config import apply
from ipb.method_catalog import names as method_names
from ipb.sweep import configuration_label
from ipb.sweep_cli import main

METHODS = tuple(method_names())     # every registered method, supervised first
# variants that need their own row name (configuration_label names method and arch only)
VARIANTS = ((" (Hungarian)", {"method.name": "contrastive_clustering",
                              "method.contrastive_clustering.classifier": "hungarian"}),
            (" (partial labels)", {"method.name": "supervised",
                                   "method.multi_label_loss": "partial"}))


def configurations(cfg):
    rows = [{"method.name": m} for m in METHODS]
    return rows + [{**over, "_label": configuration_label(apply(cfg, over)) + suffix}
                   for suffix, over in VARIANTS]


if __name__ == "__main__":
    sys.exit(main("baselines", __doc__, configurations))

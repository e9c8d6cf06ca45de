"""Supervised, MPL (imbalanced), MPL (balanced), IPB and SimCLR on the same folds.

    python sweeps/baselines.py [--profile smoke|paper|FILE] [--data DIR] [key=value ...]
    ray job submit --working-dir . -- python sweeps/baselines.py --profile paper --data s3://...

Every trial is an MLflow child run of one parent run in experiment `ipb-baselines`; the
comparison table ends up on the parent run and is printed at the end.
"""
import sys

from ipb.sweep import main

METHODS = ("supervised", "mpl", "mpl_balanced", "ipb", "simclr")


def configurations(cfg):
    return [{"method.name": m} for m in METHODS]


if __name__ == "__main__":
    sys.exit(main("baselines", __doc__, configurations))

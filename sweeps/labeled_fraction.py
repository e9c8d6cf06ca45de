"""Fig. 8: IPB and SimCLR at labeled fractions 1, 5, 10, 50 and 80%.

    python sweeps/labeled_fraction.py [--profile smoke|paper|FILE] [--data DIR] [key=value ...]

`sweep.fractions=[0.1,0.5]` narrows the fractions. The report draws mean test TPR against the
labeled fraction per method (labeled_fraction.png on the parent run).
"""
import sys

from ipb.sweep_cli import main

FRACTIONS = (0.01, 0.05, 0.10, 0.50, 0.80)


def configurations(cfg):
    fracs = cfg.sweep.fractions or FRACTIONS
    return [{"method.name": m, "split.labeled_fraction": f}
            for m in ("ipb", "simclr") for f in fracs]


if __name__ == "__main__":
    sys.exit(main("labeled_fraction", __doc__, configurations))

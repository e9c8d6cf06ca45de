"""The ablation of the paper's Table 2: IPB over arch x scales x multi-label, plus supervised CNNs.

    python sweeps/ablation.py [--profile smoke|paper|FILE] [--data DIR] [key=value ...]
    ray job submit --working-dir . -- python sweeps/ablation.py --profile paper --data s3://...

Grid (Tune grid search, every cell over sweep.folds x sweep.seeds):
  ipb x {vgg19, hrnet_w18} x {single, multi-scale} x {multi_label off, on}   (8 rows)
  supervised x {vgg19, hrnet_w18, ms_hrnet_w18}                               (3 rows)
`sweep.archs=[vgg19]` narrows the architectures (e.g. for a quick CPU check).
"""
import sys

from ipb.sweep import main

ARCHS = ("vgg19", "hrnet_w18")


def configurations(cfg):
    archs = [a for a in ARCHS if not cfg.sweep.archs or a in cfg.sweep.archs]
    rows = []
    for arch in archs:
        for ms in (False, True):
            for ml in (False, True):
                rows.append({"method.name": "ipb", "model.arch": ("ms_" if ms else "") + arch,
                             "method.multi_label": ml})
    for arch in archs + [f"ms_{a}" for a in archs if a == "hrnet_w18"]:
        rows.append({"method.name": "supervised", "model.arch": arch})
    return rows


if __name__ == "__main__":
    sys.exit(main("ablation", __doc__, configurations))

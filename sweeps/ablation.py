"""The ablation of the paper's Table 2: IPB over arch x scales x multi-label, plus supervised CNNs.

    python sweeps/ablation.py [--profile smoke|paper|FILE] [--data DIR] [key=value ...]
    ray job submit --working-dir . -- python sweeps/ablation.py --profile paper --data s3://...

Grid (Tune grid search, every cell over sweep.folds x sweep.seeds):
  ipb x {vgg19, hrnet_w18} x {single, multi-scale} x {multi_label off, on}   (8 rows)
  supervised x {vgg19, hrnet_w18, ms_hrnet_w18}                               (3 rows)
`sweep.archs=[vgg19]` narrows the architectures (e.g. for a quick CPU check); an arch that is
not in the grid is an error before anything starts.
"""
import sys

from ipb.config import ConfigError
from ipb.sweep_cli import main

ARCHS = ("vgg19", "hrnet_w18")


def grid_archs(cfg):
    """The grid's archs that sweep.archs keeps. One the grid lacks is an error: dropped
    quietly, a typo (or `small_cnn`) would run a smaller grid, or none, and call it FINISHED."""
    wanted = list(cfg.sweep.archs)
    unknown = [a for a in wanted if a not in ARCHS]
    if unknown:
        raise ConfigError(f"sweep.archs={wanted}: {unknown} not in the ablation grid, whose "
                          f"archs are {list(ARCHS)} (each with its ms_ variants); name some of "
                          "those, or leave sweep.archs empty for all")
    return [a for a in ARCHS if not wanted or a in wanted]


def configurations(cfg):
    archs = grid_archs(cfg)
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

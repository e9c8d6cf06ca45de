"""The study that can tell IPB from its baselines: paired runs, enough test colonies, a verdict.

    python sweeps/study.py [--profile study] [--data TABLE] [--ablation] [key=value ...]
    ray job submit --working-dir . -- python sweeps/study.py --data s3://bucket/table

Every row runs on the same (fold, seed) pairs (sweep.folds x sweep.seeds), one Tune trial and
one MLflow child run each, under one parent run in experiment `ipb-study`:
  supervised                 the CNN on L; it is also the teacher every MPL-family row starts
                             from (the same split, seed and budget: its selected model is reused)
  MPL (imbalanced)           method.name=mpl, the paper's switches
  MPL (balanced, oracle)     mpl_balanced: U resampled by its TRUE classes (fails before training,
                             naming why, on data whose U has unknown classes; the sweep goes on)
  IPB (paper)                method.name=ipb, the paper's switches
  IPB (robust)               method.preset=robust (ipb/config.py PRESETS)
  IPB (robust) + fine-tune   the same, its selected student fine-tuned on L (train.finetune_epochs)
The labeled-fraction curve adds supervised, MPL and IPB (robust) at sweep.fractions (default
1 % and 5 %; the rows above are split.labeled_fraction, 10 %). `--ablation` adds MPL with the
robust preset (IPB without its balancing) and IPB (robust) with each switch put back to the
paper's value, one row per switch. `--related` adds the related methods of issue 12 on the
same pairs (`related_rows`): FixMatch and ABC from the supervised row's model like MPL/IPB,
SimCLR, Contrastive Clustering (fine-tuned, and Hungarian-mapped) and SimTriplet fine-tuned and
GAN balancing trained as long as the supervised row, and the supervised row and IPB (robust)
with partial labels. The default (profile `study`: 17.9k SYNTHETIC colonies,
>= 55 test colonies of every class per fold, the small_cnn network) is sized for ~30 min on 2
CPU cores. The report (ipb/study.py) ends with one line:
  study: ipb-supervised <+d> (p=<p>), ipb-mpl <+d> (p=<p>), minority <+d>, collapsed <k>/<n>, wall <m> min
"""
import sys
import tempfile
import time
from pathlib import Path

from ipb.config import PRESETS, MethodConfig, to_yaml
from ipb.study import IPB_FINETUNE, IPB_PAPER, IPB_ROBUST, MPL, MPL_BALANCED, SUPERVISED, \
    curve_label, study_report
from ipb.inputs import resolve_table
from ipb.sweep import config_from_args, mlflow_ui, parser, run_grid, start_command

CURVE = (0.01, 0.05)
CURVE_FOLDS = 3
FINETUNE_EPOCHS = 3


def related_rows(sup_epochs: int) -> list[dict]:
    """Issue 12's rows; every classifier trains as long as the supervised row."""
    robust = {"method.name": "ipb", "method.preset": "robust"}
    sup_partial = {"_label": "supervised + partial labels", "method.name": "supervised",
                   "train.epochs": sup_epochs, "method.multi_label_loss": "partial"}
    return [sup_partial,      # first: the teacher of IPB (robust) + partial labels
            {"_label": "FixMatch", "method.name": "fixmatch"},
            {"_label": "ABC (FixMatch + balanced head)", "method.name": "abc"},
            {"_label": "SimCLR", "method.name": "simclr", "train.epochs": sup_epochs},
            {"_label": "Contrastive Clustering (fine-tuned)",
             "method.name": "contrastive_clustering", "train.epochs": sup_epochs},
            {"_label": "Contrastive Clustering (Hungarian)",
             "method.name": "contrastive_clustering", "method.cc_eval": "hungarian"},
            {"_label": "SimTriplet", "method.name": "simtriplet", "train.epochs": sup_epochs},
            {"_label": "GAN-balanced", "method.name": "gan_balanced",
             "train.epochs": sup_epochs},
            {"_label": f"{IPB_ROBUST} + partial labels", **robust,
             "method.multi_label_loss": "partial"}]


def configurations(cfg, ablation: bool = False, related: bool = False) -> list[dict]:
    """The rows; supervised ones first, so the teachers exist when MPL-family trials start."""
    robust = {"method.name": "ipb", "method.preset": "robust"}
    sup = {"_label": SUPERVISED, "method.name": "supervised",
           "train.epochs": cfg.method.teacher_pretrain_epochs or cfg.train.epochs}
    mpl = {"_label": MPL, "method.name": "mpl"}
    ipb = {"_label": IPB_ROBUST, **robust}
    fractions = [f for f in (cfg.sweep.fractions or CURVE) if f != cfg.split.labeled_fraction]
    # the curve's extra fractions on the first CURVE_FOLDS pairs only: the 30-minute budget
    curve = [{**row, "_label": curve_label(row["_label"], f), "split.labeled_fraction": f,
              "_folds": list(cfg.sweep.folds[:CURVE_FOLDS])}
             for f in fractions for row in (sup, mpl, ipb)]
    rows = [sup] + [r for r in curve if r["method.name"] == "supervised"]
    rows += [mpl, {"_label": MPL_BALANCED, "method.name": "mpl_balanced"},
             {"_label": IPB_PAPER, "method.name": "ipb"}, ipb,
             {"_label": IPB_FINETUNE, **robust, "train.finetune_epochs": FINETUNE_EPOCHS}]
    rows += [r for r in curve if r["method.name"] != "supervised"]
    if ablation:
        rows.append({"_label": "MPL (robust): IPB without balancing", "method.name": "mpl",
                     "method.preset": "robust"})
        paper = MethodConfig()
        for key in PRESETS["robust"]:
            name = key.split(".")[1]
            rows.append({**ipb, key: getattr(paper, name),
                         "_label": f"{IPB_ROBUST} without {name}={PRESETS['robust'][key]}"})
        rows.append({**ipb, "augment.jitter_space": "normalized",
                     "_label": f"{IPB_ROBUST} + jitter_space=normalized"})
    if related:
        rows += related_rows(sup["train.epochs"])
    return rows


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--ablation", action="store_true",
                    help="add one row per robust switch (and MPL with the robust preset)")
    ap.add_argument("--related", action="store_true",
                    help="add issue 12's related methods (FixMatch, ABC, SimCLR, Contrastive "
                         "Clustering, SimTriplet, GAN balancing, partial labels)")
    args = ap.parse_args(argv)
    t0 = time.time()
    cfg = config_from_args(args)
    start_command(cfg)
    print(f"ipb study; resolved base config:\n{to_yaml(cfg)}", flush=True)
    out = run_grid("study", cfg, configurations(cfg, args.ablation, args.related),
                   resolve_table(cfg))
    from ipb.data.table import read_manifest
    from ipb.tracking import client, tracking_uri
    counts = read_manifest(out["table"])["classes"]
    minority = min(counts, key=lambda c: counts[c]) if counts else None
    uri = tracking_uri(cfg)
    c = client(uri)
    with tempfile.TemporaryDirectory() as d:
        rep = study_report(out["experiment"], uri, out["parent_run_id"], Path(d), minority,
                           cfg.split.labeled_fraction, (time.time() - t0) / 60,
                           log_artifact=lambda f: c.log_artifact(out["parent_run_id"], str(f),
                                                                 artifact_path="study"),
                           hashes=[t.hash for t in out["trials"]])
    print("\n" + rep["markdown"].split("\n\n![](")[0])
    print(f"\nMLflow: experiment {out['experiment']!r}, parent run {out['parent_run_id']} "
          f"(report and figures under its artifacts study/).\n"
          + mlflow_ui(out))
    print(rep["line"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The study that can tell IPB from its baselines: paired runs, enough test colonies, a verdict.

    python sweeps/study.py [--calibrate] [--data TABLE] [--ablation | --switches] [--related] [key=value ...]
    python sweeps/study.py --profile smoke           # a quick check of the whole path
    ray job submit --working-dir . -- python sweeps/study.py --data s3://bucket/table

Profile `study` by default: 17.9k SYNTHETIC colonies where labels are the bottleneck (issue 18:
difficulty 0.5 plus per-well nuisance, ideal-observer ceiling 0.990, test wells unseen), the
small_cnn network. Every row runs on the same (fold, seed) pairs (sweep.folds x sweep.seeds),
one Tune trial and one MLflow child run each, under one parent run in experiment `ipb-study`:
  supervised                 the CNN on L; it is also the teacher every MPL-family row and
                             FixMatch/ABC start from (same split, seed and budget: reused)
  supervised (50% labeled)   the same at 50 % (first 3 pairs): the headroom the fraction leaves
  IPB (robust)               method.preset=robust: the stable reference (MplSettings.PRESETS, ipb/methods/mpl.py)
  IPB (learn)                method.preset=learn: robust + a student that can move (colony-level
                             sharpened targets, full lr, 2 passes over U, normalised h, fine-tune)
  MPL (learn)                the same switches without the pseudo-class balancing
  FixMatch, ABC              the anchors, from the supervised row's model like MPL/IPB
  FixMatch + IPB balancing   FixMatch whose unlabeled epochs are balanced by its own
                             pseudo-classes (ipb/methods/fixmatch_ipb.py): the balancing's
                             effect on a student without MPL, against the FixMatch row
`--calibrate` runs only supervised at 1/2/5/10/50 % labelled on a development partition
(split seed 1) and names the fraction the rule picks (CALIBRATION, HEADROOM below): run it on
new data before any SSL row. `--curve` adds supervised, MPL and IPB (learn) at sweep.fractions
(default 2, 5 and 10 %). `--switches` adds one row per switch of the learn preset put back to
robust's value, on the first 3 pairs (part of --ablation). `--ablation` adds the paper's MPL (imbalanced) and IPB (paper), the
oracle MPL (balanced by true classes), MPL
(robust), IPB (robust) + fine-tune and one row per preset switch put back (robust's against
the paper, learn's against robust). `--related` adds the other related methods of issue 12
(SimCLR, Contrastive Clustering, SimTriplet, GAN balancing, partial labels). Statistics: the
corrected resampled paired t-test (Nadeau & Bengio 2003). The report (ipb/study.py) ends with:
  study: ipb-supervised <+d> (p=<p>), ipb-mpl <+d> (p=<p>), minority <+d>, collapsed <k>/<n>, headroom <+h>, wall <m> min
"""
import sys
import tempfile
import time
from pathlib import Path

from ipb.config import PRESETS, Config, flatten, to_dict
from ipb.study import ABC, FIXMATCH, FIXMATCH_IPB, IPB_FINETUNE, IPB_LEARN, IPB_PAPER, IPB_ROBUST, MPL, \
    MPL_BALANCED, MPL_LEARN, MPL_ROBUST, SUPERVISED, TOP_FRACTION, curve_label, study_report
from ipb.inputs import resolve_table
from ipb.sweep import run_grid
from ipb.sweep_cli import config_from_args, config_summary, mlflow_ui, parser, start_command, \
    stoppable

CURVE = (0.02, 0.05, 0.10)
CURVE_FOLDS = 3
FINETUNE_EPOCHS = 3
# --calibrate (issue 18): supervised only, on a development partition of the table (another
# split seed: other test colonies than the study's), at these fractions; the rule, fixed before
# any run: the largest fraction whose mean test TPR is at least HEADROOM below the 50 % one
CALIBRATION = (0.01, 0.02, 0.05, 0.10, 0.50)
CALIBRATION_SPLIT_SEED = 1
HEADROOM = 0.08


def calibration_rows(cfg) -> list[dict]:
    """Supervised at every CALIBRATION fraction on the first CURVE_FOLDS folds of split seed
    CALIBRATION_SPLIT_SEED (trained as long as the study's supervised row)."""
    epochs = cfg.method.teacher_pretrain_epochs or cfg.train.epochs
    return [{"_label": curve_label(SUPERVISED, f) + " [calibration]", "method.name":
             "supervised", "train.epochs": epochs, "split.labeled_fraction": f,
             "split.seed": CALIBRATION_SPLIT_SEED, "_folds": list(cfg.sweep.folds[:CURVE_FOLDS])}
            for f in CALIBRATION]


def choose_fraction(curve: dict[float, float], headroom: float = HEADROOM) -> float | None:
    """The rule: the largest fraction below 50 % whose supervised mean TPR is at least
    `headroom` below the 50 % score; None if none is."""
    top = curve.get(0.5)
    if top is None:
        return None
    ok = [f for f, v in curve.items() if f < 0.5 and v <= top - headroom]
    return max(ok) if ok else None


def calibrate(cfg, table) -> int:
    out = run_grid("study", cfg, calibration_rows(cfg), table)
    from ipb.report import trial_runs
    from ipb.tracking import tracking_uri
    df = trial_runs(out["experiment"], tracking_uri(cfg), out["parent_run_id"],
                    [t.hash for t in out["trials"]])
    synthetic = bool(len(df) and df["synthetic"].any())
    print(("SYNTHETIC data - " if synthetic else "") + "calibration: supervised mean test TPR "
          f"on split seed {CALIBRATION_SPLIT_SEED} (a development partition), mean (std) over "
          "folds")
    from ipb.data.table import read_manifest
    counts = read_manifest(table)["classes"]
    minority = min(counts, key=counts.get) if counts else None
    curve = {}
    for f, g in df.groupby("labeled_fraction"):
        v = g["test.tpr.mean"]
        curve[float(f)] = float(v.mean())
        col = f"test.tpr.{minority}"
        print(f"  {f * 100:5g} % labeled: {v.mean():.3f} ({v.std(ddof=1):.3f}), n={len(v)}; "
              f"{minority} (the rarest class) "
              f"{g[col].mean() if col in g else float('nan'):.3f}; validation "
              f"{g['best.val.tpr.mean'].mean():.3f}")
    below = [g for g, v in curve.items() if g < 0.5 and v > curve.get(0.5, float("inf"))]
    if below:     # the rule's reference is not a plateau: it measures the budget, not labels
        print(f"calibration: WARNING supervised at 50 % scores below {len(below)} smaller "
              f"fraction(s) ({', '.join(f'{g * 100:g} %' for g in sorted(below))}): the "
              "network or its training budget, not the labels, limits it on this table; "
              "give it a budget where more labels help (train.epochs, model.arch) before "
              "reading the headroom")
    f = choose_fraction(curve)
    print(f"calibration: split.labeled_fraction={f} (the largest fraction at least {HEADROOM} "
          f"below the 50 % score {curve.get(0.5, float('nan')):.3f})" if f is not None else
          f"calibration: no fraction is {HEADROOM} below the 50 % score: labels are not the "
          "bottleneck on this table")
    print(mlflow_ui(out))
    return 0


def related_rows(sup_epochs: int) -> list[dict]:
    """Issue 12's rows beyond FixMatch and ABC (which are in the default study); every
    classifier trains as long as the supervised row."""
    robust = {"method.name": "ipb", "method.preset": "robust"}
    sup_partial = {"_label": "supervised + partial labels", "method.name": "supervised",
                   "train.epochs": sup_epochs, "method.multi_label_loss": "partial"}
    return [sup_partial,      # first: the teacher of IPB (robust) + partial labels
            {"_label": "SimCLR", "method.name": "simclr", "train.epochs": sup_epochs},
            {"_label": "Contrastive Clustering (fine-tuned)",
             "method.name": "contrastive_clustering", "train.epochs": sup_epochs},
            {"_label": "Contrastive Clustering (Hungarian)",
             "method.name": "contrastive_clustering",
             "method.contrastive_clustering.classifier": "hungarian"},
            {"_label": "SimTriplet", "method.name": "simtriplet", "train.epochs": sup_epochs},
            {"_label": "GAN-balanced", "method.name": "gan_balanced",
             "train.epochs": sup_epochs},
            {"_label": f"{IPB_ROBUST} + partial labels", **robust,
             "method.multi_label_loss": "partial"}]


def switch_rows(base: dict, label: str, preset: str, reference: str | None) -> list[dict]:
    """One row per key of PRESETS[preset] that differs from PRESETS[reference] (or from the
    paper's defaults), put back to that value. student_init=random takes the student's lr
    back with it: a random network at a tenth of the lr measures the lr, not the init."""
    ref = PRESETS[reference] if reference else {}
    default = flatten(to_dict(Config()))
    rows = []
    for key, value in PRESETS[preset].items():
        back = ref.get(key, default[key])
        if back == value:
            continue
        row = {**base, key: back, "_label": f"{label} without {key.rsplit('.', 1)[1]}={value}"}
        if key == "method.mpl.student_init":
            row["method.mpl.student_lr_scale"] = 1.0
        rows.append(row)
    return rows


def configurations(cfg, ablation: bool = False, related: bool = False,
                   curve: bool = False, switches: bool = False) -> list[dict]:
    """The rows; supervised ones first, so the teachers exist when MPL-family trials start."""
    robust = {"method.name": "ipb", "method.preset": "robust"}
    learn = {"method.name": "ipb", "method.preset": "learn"}
    sup = {"_label": SUPERVISED, "method.name": "supervised",
           "train.epochs": cfg.method.teacher_pretrain_epochs or cfg.train.epochs}
    mpl = {"_label": MPL, "method.name": "mpl"}
    ipb = {"_label": IPB_LEARN, **learn}
    # the headroom: the supervised row at 50 % labelled on the same pairs
    rows = [sup]
    if cfg.split.labeled_fraction != TOP_FRACTION:   # on CURVE_FOLDS pairs: the budget
        rows.append({**sup, "_label": curve_label(SUPERVISED, TOP_FRACTION),
                     "split.labeled_fraction": TOP_FRACTION,
                     "_folds": list(cfg.sweep.folds[:CURVE_FOLDS])})
    fractions = [f for f in (cfg.sweep.fractions or CURVE) if f != cfg.split.labeled_fraction]
    # the curve's extra fractions on the first CURVE_FOLDS pairs only: the 30-minute budget
    extra = [{**row, "_label": curve_label(row["_label"], f), "split.labeled_fraction": f,
              "_folds": list(cfg.sweep.folds[:CURVE_FOLDS])}
             for f in fractions for row in (sup, mpl, ipb)] if curve else []
    rows += [r for r in extra if r["method.name"] == "supervised"]
    # the paper's MPL and IPB (which do not learn here: README) are --ablation rows
    rows += [{"_label": IPB_ROBUST, **robust}, ipb,
             {"_label": MPL_LEARN, "method.name": "mpl", "method.preset": "learn"},
             {"_label": FIXMATCH, "method.name": "fixmatch"},
             {"_label": ABC, "method.name": "abc"},
             {"_label": FIXMATCH_IPB, "method.name": "fixmatch_ipb"}]
    rows += [r for r in extra if r["method.name"] != "supervised"]
    if ablation:
        rows += [mpl, {"_label": IPB_PAPER, "method.name": "ipb"},
                 {"_label": MPL_BALANCED, "method.name": "mpl_balanced"},
                 {"_label": MPL_ROBUST, "method.name": "mpl", "method.preset": "robust"},
                 {"_label": IPB_FINETUNE, **robust, "train.finetune_epochs": FINETUNE_EPOCHS}]
        rows += switch_rows({"_label": IPB_ROBUST, **robust}, IPB_ROBUST, "robust", None)
        rows.append({**robust, "augment.jitter_space": "normalized",
                     "_label": f"{IPB_ROBUST} + jitter_space=normalized"})
        rows += switch_rows(ipb, IPB_LEARN, "learn", "robust")
    elif switches:    # the learn preset's switches alone, on the first CURVE_FOLDS pairs
        rows += [{**r, "_folds": list(cfg.sweep.folds[:CURVE_FOLDS])}
                 for r in switch_rows(ipb, IPB_LEARN, "learn", "robust")]
    if related:
        rows += related_rows(sup["train.epochs"])
    return rows


@stoppable
def main(argv=None) -> int:
    ap = parser(__doc__, profile="study")
    ap.add_argument("--calibrate", action="store_true",
                    help="supervised only at 1/2/5/10/50 %% labelled on a development "
                         "partition, and the fraction with headroom (run before any SSL row)")
    ap.add_argument("--ablation", action="store_true",
                    help="add one row per robust switch (and MPL with the robust preset)")
    ap.add_argument("--switches", action="store_true",
                    help="add one row per switch of the learn preset put back to robust's "
                         "value, on the first 3 pairs (what each switch does; in --ablation)")
    ap.add_argument("--curve", action="store_true",
                    help="add supervised, MPL and IPB (learn) at sweep.fractions (default 2, 5, 10 %% "
                         "on the first 3 pairs")
    ap.add_argument("--related", action="store_true",
                    help="add issue 12's related methods (FixMatch, ABC, SimCLR, Contrastive "
                         "Clustering, SimTriplet, GAN balancing, partial labels)")
    args = ap.parse_args(argv)
    t0 = time.time()
    cfg = config_from_args(args)
    start_command(cfg)
    rows = calibration_rows(cfg) if args.calibrate else \
        configurations(cfg, args.ablation, args.related, args.curve, args.switches)
    print(config_summary("ipb study", cfg, rows), flush=True)
    if args.calibrate:
        return calibrate(cfg, resolve_table(cfg))
    out = run_grid("study", cfg, rows, resolve_table(cfg))
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
                           hashes=[t.hash for t in out["trials"]],
                           ratio=cfg.split.test_fraction / (1 - cfg.split.test_fraction))
    print("\n" + rep["markdown"].split("\n\n![](")[0])
    print(f"\nMLflow: experiment {out['experiment']!r}, parent run {out['parent_run_id']} "
          f"(report and figures under its artifacts study/).\n"
          + mlflow_ui(out))
    print(rep["line"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

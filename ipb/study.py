"""The study report: can IPB be told from its baselines? Rows, paired tests, collapse, curves.

    python sweeps/study.py            # runs the study (sweeps/study.py), then prints this report

Every row ran on the same (fold, seed) pairs, so rows are compared pair by pair: the
corrected resampled paired t-test (Nadeau & Bengio 2003; cross-validation training sets
overlap, so the plain paired test is too optimistic) on the per-pair differences of mean test
TPR (and of the rarest class's TPR), with the smallest difference the test could detect on
those pairs. A difference with p >= 0.05 is reported as within noise. The IPB row named in the last line is
the one with the best mean VALIDATION TPR (never selected on test). The report also says how
many MPL-family students collapsed (largest predicted-class share on test > 0.8), whether the
teacher's pseudo-class proportions moved toward the true unlabeled mix (total-variation
distance, first vs last MPL epoch), and the labeled-fraction curve.
The numbers come from DataFrames (one row per finished trial run, `ipb.report.trial_runs`) and
per-run metric histories, so they are tested without MLflow; `study_report` reads both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
import pandas as pd

from ipb.metrics import CV_TEST_TRAIN_RATIO, collapse_threshold, corrected_paired_ttest, \
    fold_stats, min_detectable_difference

SUPERVISED, MPL, MPL_BALANCED = "supervised", "MPL (imbalanced)", "MPL (balanced, oracle)"
IPB_PAPER, IPB_ROBUST, IPB_FINETUNE = "IPB (paper)", "IPB (robust)", "IPB (robust) + fine-tune"
IPB_LEARN = "IPB (learn)"
MPL_ROBUST = "MPL (robust): IPB (robust) without balancing"
MPL_LEARN = "MPL (learn): IPB (learn) without balancing"
FIXMATCH, ABC = "FixMatch", "ABC (FixMatch + balanced head)"
FIXMATCH_IPB = "FixMatch + IPB balancing"
IPB_ROWS = (IPB_PAPER, IPB_ROBUST, IPB_FINETUNE, IPB_LEARN)
# each IPB row's twin: the same switches without the pseudo-class balancing
MPL_TWIN = {IPB_PAPER: MPL, IPB_ROBUST: MPL_ROBUST, IPB_LEARN: MPL_LEARN}
TOP_FRACTION = 0.5      # the headroom: supervised here minus supervised at the study's fraction
MPL_FAMILY = ("mpl", "mpl_balanced", "ipb")
NOISE_P = 0.05


def curve_label(row: str, fraction: float) -> str:
    """The label of a labeled-fraction curve row, e.g. `supervised (1% labeled)`."""
    return f"{row} ({fraction * 100:g}% labeled)"


def matched(df: pd.DataFrame, a: str, b: str, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of `col` for rows a and b on the (fold, seed) pairs both have, in pair order."""
    ka = df[df["label"] == a].set_index(["fold", "seed"])[col]
    kb = df[df["label"] == b].set_index(["fold", "seed"])[col]
    common = sorted(set(ka.index) & set(kb.index))
    return ka.loc[common].to_numpy(float), kb.loc[common].to_numpy(float)


def _ms(values) -> str:
    m, s = fold_stats(list(values))
    if np.isnan(m):
        return "-"
    return f"{m:.3f}" + ("" if np.isnan(s) else f" ({s:.3f})")


def row_table(df: pd.DataFrame, classes: list[str], minority: str, metric: str) -> pd.DataFrame:
    """Per row: n pairs, per-class `metric` (tpr | f1) mean (std), the mean; for TPR also the
    between-class variance and how many MPL-family students collapsed."""
    out = []
    for label, g in df.groupby("label", sort=False):
        row: dict[str, Any] = {"row": label, "n": len(g)}
        for c in classes:
            name = f"{c} (minority)" if c == minority else c
            row[name] = _ms(g[f"test.{metric}.{c}"])
        row["mean"] = _ms(g[f"test.{metric}.mean"])
        if metric == "tpr":
            row["between-class var"] = _ms(g["test.tpr.var"]) if "test.tpr.var" in g else "-"
            if g["method"].isin(MPL_FAMILY).any() and "test.pred_share.max" in g:
                k = int(is_collapsed(g).sum())
                row["collapsed"] = f"{k}/{len(g)}" + (" COLLAPSED" if k else "")
            else:
                row["collapsed"] = ""
        out.append(row)
    return pd.DataFrame(out)


def comparison(df: pd.DataFrame, a: str, b: str, minority: str,
               ratio: float = CV_TEST_TRAIN_RATIO) -> dict[str, Any]:
    """Paired difference a - b of mean test TPR and of the minority class's TPR, by the
    corrected resampled t-test (`ratio` = n_test / n_train), and the smallest difference of
    mean TPR that test could detect on these pairs."""
    x, y = matched(df, a, b, "test.tpr.mean")
    nan3 = (np.nan, np.nan, np.nan)
    d, _, p = corrected_paired_ttest(x, y, ratio) if len(x) else nan3
    xm, ym = matched(df, a, b, f"test.tpr.{minority}")
    dm, _, pm = corrected_paired_ttest(xm, ym, ratio) if len(xm) else nan3
    sd = float(np.std(x - y, ddof=1)) if len(x) > 1 else np.nan
    verdict = "-" if np.isnan(p) else ("within noise" if p >= NOISE_P else
                                       ("better" if d > 0 else "worse"))
    return {"comparison": f"{a} vs {b}", "pairs": len(x), "d mean TPR": d, "p": p,
            "detectable": min_detectable_difference(sd, len(x), NOISE_P, ratio),
            f"d {minority} TPR": dm, "p minority": pm, "verdict": verdict}


def precision_cost(df: pd.DataFrame, a: str, b: str, minority: str,
                   ratio: float = CV_TEST_TRAIN_RATIO) -> dict[str, Any]:
    """What a recall gain costs: paired a - b of mean test F1 and of the minority class's
    precision and F1 (same corrected test). Mean TPR is balanced recall, which a student that
    over-predicts the rare class raises while its precision falls."""
    out: dict[str, Any] = {"comparison": f"{a} vs {b}"}
    for name, col in (("mean F1", "test.f1.mean"), (f"{minority} precision",
                                                    f"test.precision.{minority}"),
                      (f"{minority} F1", f"test.f1.{minority}")):
        x, y = matched(df, a, b, col) if col in df else (np.array([]), np.array([]))
        d, _, p = corrected_paired_ttest(x, y, ratio) if len(x) else (np.nan,) * 3
        out[f"d {name}"], out[f"p {name}"] = d, p
    return out


def best_ipb_row(df: pd.DataFrame, candidates=IPB_ROWS) -> str | None:
    """The IPB row with the best mean validation TPR of its selected models (not test),
    among those whose MPL twin (the same switches, no balancing) ran too, where any did: the
    line reports both differences of one row."""
    present = [r for r in candidates if (df["label"] == r).any()]
    paired = [r for r in present if (df["label"] == MPL_TWIN.get(r)).any()]
    present = paired or present
    if not present:
        return None
    col = "best.val.tpr.mean"
    return max(present, key=lambda r: df.loc[df["label"] == r, col].mean())


def tv_distance(pseudo: dict[str, float], true: dict[str, float]) -> float:
    return 0.5 * sum(abs(pseudo[c] - true[c]) for c in true)


def pseudo_movement(histories: dict[str, list[dict]], classes: list[str]) -> pd.DataFrame:
    """Per run: total-variation distance of the teacher's pseudo-class proportions from the
    true unlabeled mix at the first and the last MPL epoch, and whether it fell."""
    out = []
    for run_id, hist in histories.items():
        rows = [h for h in hist if f"ipb.pseudo_frac.{classes[0]}" in h
                and f"ipb.true_frac.{classes[0]}" in h]
        if len(rows) < 2:
            continue
        tv = [tv_distance({c: h[f"ipb.pseudo_frac.{c}"] for c in classes},
                          {c: h[f"ipb.true_frac.{c}"] for c in classes}) for h in rows]
        out.append({"run_id": run_id, "tv_first": tv[0], "tv_last": tv[-1],
                    "fell": tv[-1] < tv[0]})
    return pd.DataFrame(out, columns=["run_id", "tv_first", "tv_last", "fell"])


def collapsed_count(df: pd.DataFrame) -> tuple[int, int]:
    fam = df[df["method"].isin(MPL_FAMILY)]
    if "test.pred_share.max" not in fam:
        return 0, len(fam)
    return int(is_collapsed(fam).sum()), len(fam)


def is_collapsed(df: pd.DataFrame) -> pd.Series:
    """Per run: the test set's largest predicted-class share above `collapse_threshold` of its
    largest true share (0.8 when no class holds 60 %, as on the synthetic study)."""
    true = df["test.true_share.max"] if "test.true_share.max" in df else \
        pd.Series(0.0, index=df.index)
    limit = true.fillna(0.0).map(collapse_threshold)
    return df["test.pred_share.max"] > limit


def _signed(x: float) -> str:
    return "nan" if np.isnan(x) else f"{x:+.3f}"


def headroom(df: pd.DataFrame) -> float:
    """Supervised at TOP_FRACTION minus supervised at the study's fraction, same pairs."""
    x, y = matched(df, curve_label(SUPERVISED, TOP_FRACTION), SUPERVISED, "test.tpr.mean")
    return float(np.mean(x - y)) if len(x) else np.nan


def last_line(df: pd.DataFrame, minority: str, wall_min: float,
              ratio: float = CV_TEST_TRAIN_RATIO) -> str:
    """`study: ipb-supervised <+d> (p=<p>), ipb-mpl <+d> (p=<p>), minority <+d>, collapsed
    <k>/<n>, headroom <+h>, wall <m> min` for the best IPB row (by validation); ipb-mpl is
    that row minus MPL with the same switches (MPL_TWIN); p corrected."""
    best = best_ipb_row(df)
    nan = {"d mean TPR": np.nan, "p": np.nan, f"d {minority} TPR": np.nan}
    sup = comparison(df, best, SUPERVISED, minority, ratio) if best else nan
    twin = MPL_TWIN.get(best or "", MPL)
    mpl = comparison(df, best, twin, minority, ratio) if best else nan
    k, n = collapsed_count(df)
    return (f"study: ipb-supervised {_signed(sup['d mean TPR'])} (p={sup['p']:.3g}), "
            f"ipb-mpl {_signed(mpl['d mean TPR'])} (p={mpl['p']:.3g}), "
            f"minority {_signed(sup[f'd {minority} TPR'])}, collapsed {k}/{n}, "
            f"headroom {_signed(headroom(df))}, wall {wall_min:.0f} min")


def per_pair(df: pd.DataFrame, row: str, minority: str,
             ratio: float = CV_TEST_TRAIN_RATIO) -> tuple[pd.DataFrame, list[str]]:
    """Pair by pair: `row`'s mean test TPR against supervised (its teacher) and against its
    MPL twin, and lines that say whether the gain is consistent: in how many pairs it is
    positive, whether it shrinks as the teacher gets better (Pearson r of gain on teacher TPR),
    and each half of the pairs (in fold order) tested alone -- a second half that agrees in
    sign is a replication on pairs the first half did not decide."""
    twin = MPL_TWIN.get(row, MPL)
    cols = {SUPERVISED: "supervised", row: row, twin: "twin"}
    wide = {name: df[df["label"] == label].set_index(["fold", "seed"])["test.tpr.mean"]
            for label, name in cols.items() if (df["label"] == label).any()}
    if SUPERVISED not in cols or "supervised" not in wide or row not in wide:
        return pd.DataFrame(), []
    frame = pd.DataFrame(wide).dropna(subset=["supervised", row]).sort_index()
    frame["d vs supervised"] = frame[row] - frame["supervised"]
    if "twin" in frame:
        frame["d vs twin"] = frame[row] - frame["twin"]
    lines = []
    d = frame["d vs supervised"].to_numpy(float)
    n = len(d)
    if n:
        lines.append(f"{row} - supervised: positive in {int((d > 0).sum())}/{n} pairs.")
    if n >= 3 and np.std(frame["supervised"]) > 0 and np.std(d) > 0:
        r = float(np.corrcoef(frame["supervised"], d)[0, 1])
        lines.append(f"Gain against the teacher's own TPR: Pearson r = {r:+.2f} (negative: "
                     "the student gains most where its teacher is weakest).")
    if n >= 4:
        half = n // 2
        for name, part in (("first", frame.iloc[:half]), ("second", frame.iloc[half:])):
            parts = [f"{name} half ({len(part)} pairs, folds "
                     f"{', '.join(str(f) for f, _ in part.index)}):"]
            for b, col in ((SUPERVISED, "supervised"), (twin, "twin")):
                if col in part and part[col].notna().all():
                    dd, _, p = corrected_paired_ttest(part[row].to_numpy(float),
                                                      part[col].to_numpy(float), ratio)
                    parts.append(f"vs {col} {_signed(dd)} (p={p:.3g})")
            lines.append(" ".join(parts[:1]) + " " + ", ".join(parts[1:]) + ".")
    out = frame.reset_index().rename(columns={"twin": twin})
    return out, lines


DIAG_COLUMNS = {"agree w/ teacher (test)": "diag.test_agree",
                "weight change": "diag.weight_change", "mean |h|": "diag.h_abs",
                "MPL grad share": "diag.mpl_grad_share", "U admitted": "diag.mask_rate",
                "target acc (U)": "diag.target_acc", "pseudo-class acc (U)": "diag.pseudo_acc",
                "TPR - teacher": "_gain"}


def diagnostics_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per MPL-family row, means over its runs: is the student its teacher plus noise?
    (ipb/engine.py `diagnostics`). `TPR - teacher`: the row's mean test TPR minus the
    supervised row's (its teacher) on the same pairs."""
    out = []
    for label, g in df.groupby("label", sort=False):
        if not g["method"].isin(MPL_FAMILY).any():
            continue
        row: dict[str, Any] = {"row": label}
        for name, col in DIAG_COLUMNS.items():
            if col == "_gain":
                x, y = matched(df, label, SUPERVISED, "test.tpr.mean")
                row[name] = float(np.mean(x - y)) if len(x) else np.nan
            else:
                row[name] = float(g[col].mean()) if col in g else np.nan
        out.append(row)
    return pd.DataFrame(out, columns=["row", *DIAG_COLUMNS])


def _markdown(frame: pd.DataFrame) -> str:
    def cell(v):
        if isinstance(v, float):
            return "-" if np.isnan(v) else f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.3f}"
        return str(v)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(lines)


def curve_frame(df: pd.DataFrame, main_fraction: float,
                families: tuple[str, ...] = (SUPERVISED, MPL, IPB_LEARN)) -> pd.DataFrame:
    """Mean (std) test TPR per family and labeled fraction; the main rows are the main fraction."""
    out = []
    for fam in families:
        for label, g in df.groupby("label", sort=False):
            if label == fam:
                frac = main_fraction
            elif label.startswith(fam + " (") and label.endswith("% labeled)"):
                frac = float(label[len(fam) + 2:-len("% labeled)")]) / 100
            else:
                continue
            m, s = fold_stats(g["test.tpr.mean"].tolist())
            out.append({"method": fam, "labeled_fraction": frac, "mean": m, "std": s,
                        "n": len(g)})
    return pd.DataFrame(out, columns=["method", "labeled_fraction", "mean", "std", "n"])


def comparisons(df: pd.DataFrame, main: pd.DataFrame, best: str | None) -> list[tuple[str, str]]:
    """The (row, reference) pairs of Table 3, in order (those that ran are kept): the best
    IPB row against supervised, its twin, MPL and the anchors; each IPB row against its
    twin; every row against supervised; the ablation and switch rows against their preset;
    the curve's other fractions against supervised at that fraction."""
    pairs = [(best, SUPERVISED), (best, MPL_TWIN.get(best, MPL)), (best, MPL),
             (IPB_ROBUST, IPB_PAPER)] if best else []
    pairs += [(best, r) for r in (FIXMATCH, ABC, IPB_ROBUST) if best and r != best]
    pairs.append((FIXMATCH_IPB, FIXMATCH))     # IPB's balancing on a FixMatch student
    pairs += [(ipb, twin) for ipb, twin in MPL_TWIN.items()]
    pairs += [(r, SUPERVISED) for r in dict.fromkeys(main["label"])
              if r not in (SUPERVISED, best)]
    # the ablation (--ablation): each variant of IPB (robust) against IPB (robust) itself
    pairs += [(label, IPB_ROBUST) for label in dict.fromkeys(main["label"])
              if label != IPB_ROBUST and (label.startswith(IPB_ROBUST + " ") or
                                          label.startswith("MPL (robust)"))]
    pairs += [(label, IPB_LEARN) for label in dict.fromkeys(main["label"])
              if label.startswith(IPB_LEARN + " without ")]
    # the curve's other fractions: IPB against supervised on the same pairs
    pairs += [(label, SUPERVISED + label[len(fam):]) for fam in (IPB_ROBUST, IPB_LEARN)
              for label in dict.fromkeys(df["label"])
              if label.startswith(fam + " (") and label.endswith("% labeled)")]
    return pairs


def build(df: pd.DataFrame, classes: list[str], minority: str, main_fraction: float,
          histories: dict[str, list[dict]], wall_min: float, title: str,
          ratio: float = CV_TEST_TRAIN_RATIO) -> dict[str, Any]:
    """Every table of the report from the trial runs (no MLflow): markdown + frames."""
    main = df[~df["label"].str.endswith("% labeled)")]
    tpr, f1 = row_table(main, classes, minority, "tpr"), row_table(main, classes, minority, "f1")
    best = best_ipb_row(df)
    pairs = comparisons(df, main, best)
    ran = [(a, b) for a, b in dict.fromkeys(pairs)
           if a != b and (df["label"] == a).any() and (df["label"] == b).any()]
    tests = pd.DataFrame([comparison(df, a, b, minority, ratio) for a, b in ran])
    costs = pd.DataFrame([precision_cost(df, a, b, minority, ratio) for a, b in ran
                          if b == SUPERVISED or (a == best and b in MPL_TWIN.values())])
    diag = diagnostics_table(main)
    moves = {}
    for label in IPB_ROWS:
        ids = df.loc[df["label"] == label, "run_id"].tolist()
        mv = pseudo_movement({r: histories[r] for r in ids if r in histories}, classes)
        if len(mv):
            moves[label] = mv
    curve = curve_frame(df, main_fraction)
    line = last_line(df, minority, wall_min, ratio)
    pairs_frame, pair_lines = per_pair(main, best, minority, ratio) if best else \
        (pd.DataFrame(), [])
    md = [f"# {title}", "",
          f"{len(df)} finished trial runs. Test split, mean (std) over (fold, seed) pairs; "
          f"minority class: {minority}. Rows were compared on the same pairs by the corrected "
          f"resampled paired t-test (Nadeau & Bengio 2003, variance x (1/J + n_test/n_train "
          f"= {ratio:.3g})); p >= {NOISE_P} is within noise; `detectable` is the smallest "
          f"difference the test could call significant on those pairs. Headroom (supervised "
          f"at {TOP_FRACTION:.0%} labeled minus supervised here): {_signed(headroom(df))}. "
          f"Best IPB row by validation TPR (among those whose MPL twin ran): {best}. "
          "Collapsed: an MPL-family student whose largest predicted-class share on test "
          "exceeds 0.8 (where one class truly holds over 60 %: halfway from its share to 1).",
          "", "## Table 1. True positive rate (recall) per class", "", _markdown(tpr), "",
          "## Table 2. F1 per class", "", _markdown(f1), "",
          "## Table 3. Corrected paired t-tests of mean test TPR (and the minority class's "
          "TPR)", "", _markdown(tests) if len(tests) else "(too few rows)", "",
          "## Table 3b. What the recall costs: paired differences of mean test F1 and of the "
          f"minority class's precision and F1 (corrected test; a row that raises {minority} "
          "TPR by predicting it more often loses precision)", "",
          _markdown(costs) if len(costs) else "(too few rows)", "",
          "## Table 4. Teacher plus noise? Diagnostics of the MPL-family students (means "
          "over runs; the teacher = the supervised model each starts from)", "",
          _markdown(diag) if len(diag) else "(no MPL-family rows)", ""]
    for label, mv in moves.items():
        md.append(f"Pseudo-class proportions, {label}: total-variation distance from the true "
                  f"U mix fell from first to last MPL epoch in {int(mv['fell'].sum())}/{len(mv)}"
                  f" runs (mean {mv['tv_first'].mean():.3f} -> {mv['tv_last'].mean():.3f}).")
    if len(pairs_frame):
        md += ["", f"## Table 5. {best} pair by pair: mean test TPR, and the differences",
               "", _markdown(pairs_frame), "", *pair_lines]
    if len(curve) and curve["labeled_fraction"].nunique() > 1:
        md += ["", "## Table 6. Labeled-fraction curve: mean test TPR", "", _markdown(curve)]
    md += ["", line]
    return {"markdown": "\n".join(md), "line": line, "tpr": tpr, "f1": f1, "tests": tests,
            "moves": moves, "curve": curve, "best": best, "diagnostics": diag,
            "pairs": pairs_frame, "costs": costs}


def study_report(experiment: str, uri: str, parent_run_id: str, out_dir: Path,
                 minority: str | None, main_fraction: float, wall_min: float,
                 log_artifact: Callable[[Path], None] | None = None,
                 hashes: Collection[str] | None = None,
                 ratio: float = CV_TEST_TRAIN_RATIO) -> dict[str, Any]:
    """Read the study's runs from MLflow (with `hashes`: those trials' runs, also the ones an
    earlier sweep ran), build the report, write Markdown/CSV/PNGs."""
    from ipb import plots
    from ipb.report import pseudo_history, trial_runs
    from ipb.report_html import write_html
    from ipb.tracking import client

    df = trial_runs(experiment, uri, parent_run_id, hashes)
    if df.empty:
        return {"markdown": "no finished trial runs", "line": last_line(df.assign(
            label=[], method=[]), minority or "?", wall_min)}
    classes = [c for c in df["classes"].iloc[0].split(",") if c]
    minority = minority or classes[0]
    synthetic = bool(df["synthetic"].any())
    title = ("SYNTHETIC data (a stand-in, not microscopy) - " if synthetic else "") + \
        "study: IPB against its baselines"
    c = client(uri)
    histories = {}
    for rid in df.loc[df["label"].isin(IPB_ROWS), "run_id"]:
        per_epoch: dict[int, dict] = {}
        for cls in classes:
            for key in (f"ipb.pseudo_frac.{cls}", f"ipb.true_frac.{cls}"):
                for m in c.get_metric_history(rid, key):
                    per_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
        histories[rid] = [per_epoch[e] for e in sorted(per_epoch)]
    out = build(df, classes, minority, main_fraction, histories, wall_min, title, ratio)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tpr", "f1", "tests", "costs", "curve", "diagnostics", "pairs"):
        out[name].to_csv(out_dir / f"study_{name}.csv", index=False)
    files = []
    for label in IPB_ROWS:
        ids = df.loc[df["label"] == label, "run_id"].tolist()
        if ids:
            hist = pseudo_history(uri, ids, classes)
            f = out_dir / ("pseudo_" + "".join(ch if ch.isalnum() else "_" for ch in label) +
                           ".png")
            if plots.pseudo_fractions_png(hist, classes, f, f"{title}\n{label}, mean over runs"):
                files.append(f)
    if len(out["curve"]) and out["curve"]["labeled_fraction"].nunique() > 1:
        files.append(plots.fraction_curve_png(out["curve"], out_dir / "labeled_fraction.png",
                                              title))
    text = out["markdown"] + "".join(f"\n\n![]({f.name})" for f in files)
    (out_dir / "study.md").write_text(text)
    write_html(out_dir / "study.md")         # what MLflow's artifact view renders, figures in
    if log_artifact:
        for f in out_dir.iterdir():
            log_artifact(f)
    return {**out, "markdown": text, "files": [str(f) for f in files]}

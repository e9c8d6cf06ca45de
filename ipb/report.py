"""Paper-style tables and figures from the MLflow runs of a sweep.

    ipb report --experiment ipb-baselines [--out report/]

Table 2/3 style: per-class TPR (recall) and F1 as mean (std) over folds per configuration,
Student t-tests per class against a reference row, the between-class TPR variance, the
labeled-fraction curve (Fig. 8) and the teacher's pseudo-class proportions over epochs
(Figs. 6/7); Markdown + CSV + PNG. Reports made from synthetic data say so in their title.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

import numpy as np
import pandas as pd

from ipb.metrics import fold_stats, ttest


def trial_runs(experiment: str, uri: str, parent_run_id: str | None = None,
               hashes: Collection[str] | None = None) -> pd.DataFrame:
    """One row per trial: the newest FINISHED run of each trial hash (tags and final
    metrics), so a trial that two sweeps ran at once, or ran again, enters a mean or a test
    once. With `hashes` (a sweep's trial hashes), the runs of those trials whichever sweep ran
    them: a sweep that adds rows to a finished one (e.g. `study.py --ablation`) reports the
    trials it skipped as well as the ones it ran; else those under `parent_run_id` (if
    given)."""
    from ipb.tracking import client
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {uri}; "
                         "list them with `mlflow experiments search` or run a sweep first")
    flt = "attributes.status = 'FINISHED'"
    if parent_run_id and hashes is None:
        flt += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    rows = []
    runs = c.search_runs([exp.experiment_id], flt, max_results=50000,
                         order_by=["attributes.start_time DESC"])
    newest, wanted = {}, None if hashes is None else set(hashes)
    for r in runs:
        if "ipb.trial_hash" in r.data.tags:
            newest.setdefault(r.data.tags["ipb.trial_hash"], r)
    runs = [r for h, r in newest.items() if wanted is None or h in wanted]
    # oldest first, so configurations appear in the order the sweep ran them
    for r in reversed(runs):
        t = r.data.tags
        if "ipb.trial_hash" not in t:
            continue
        rows.append({"run_id": r.info.run_id, "label": t.get("ipb.config_label") or
                     f"{t.get('ipb.method')} {t.get('ipb.arch')}",
                     "method": t.get("ipb.method"), "arch": t.get("ipb.arch"),
                     "fold": int(t.get("ipb.fold", -1)), "seed": int(t.get("ipb.seed", 0)),
                     "labeled_fraction": float(t.get("ipb.labeled_fraction", "nan")),
                     "synthetic": t.get("ipb.synthetic") == "true",
                     "classes": t.get("ipb.classes", ""), **r.data.metrics})
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float) -> str:
    s = f"{mean:.4f}".lstrip("0") if mean < 1 else f"{mean:.3f}"
    return s + ("" if np.isnan(std) else f" ({std:.4f})".replace("(0.", "(."))


def summary_tables(df: pd.DataFrame, classes: list[str]) -> dict[str, pd.DataFrame]:
    """TPR and F1 tables: rows = configurations, mean (std) over folds and seeds."""
    out = {}
    for metric in ("tpr", "f1"):
        rows = []
        for label, g in df.groupby("label", sort=False):
            row = {"configuration": label, "n": len(g)}
            for c in classes + ["mean"]:
                col = f"test.{metric}.{c}"
                m, s = fold_stats(g[col].tolist()) if col in g else (np.nan, np.nan)
                row[c] = _fmt(m, s) if not np.isnan(m) else "-"
                row[f"_{c}"] = m
            if metric == "tpr" and "test.tpr.var" in g:
                row["between-class var"] = f"{g['test.tpr.var'].mean():.4f}"
            rows.append(row)
        out[metric] = pd.DataFrame(rows)
    return out


def ttests(df: pd.DataFrame, classes: list[str], reference: str) -> pd.DataFrame:
    """Per-class Student t-test (over folds) of every configuration against `reference`."""
    ref = df[df["label"] == reference]
    rows = []
    for label, g in df.groupby("label", sort=False):
        if label == reference:
            continue
        row = {"configuration": label, "vs": reference}
        for c in classes + ["mean"]:
            col = f"test.tpr.{c}"
            t, p = ttest(g[col].tolist(), ref[col].tolist()) if col in g else (np.nan, np.nan)
            row[f"p {c}"] = round(p, 4) if not np.isnan(p) else None
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame) -> str:
    cols = [c for c in frame.columns if not c.startswith("_")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def pseudo_history(uri: str, run_ids: list[str], classes: list[str]) -> list[dict]:
    """Per-epoch pseudo/true fractions averaged over runs (paper Figs. 6/7)."""
    from ipb.tracking import client
    c = client(uri)
    per_epoch: dict[int, dict[str, list[float]]] = {}
    for rid in run_ids:
        for cls in classes:
            for key in (f"ipb.pseudo_frac.{cls}", f"ipb.true_frac.{cls}"):
                for m in c.get_metric_history(rid, key):
                    per_epoch.setdefault(m.step, {}).setdefault(key, []).append(m.value)
    return [{"epoch": e, **{k: float(np.mean(v)) for k, v in d.items()}}
            for e, d in sorted(per_epoch.items())]


def log_report(experiment: str, uri: str, parent_run_id: str) -> dict[str, Any]:
    """The report of a sweep's trials, as artifacts report/* of its parent run."""
    import tempfile

    from ipb.tracking import client
    with tempfile.TemporaryDirectory() as d:
        report = make_report(experiment, Path(d), uri=uri, parent_run_id=parent_run_id)
        for f in Path(d).iterdir():
            client(uri).log_artifact(parent_run_id, str(f), artifact_path="report")
    return report


def make_report(experiment: str, out_dir: Path, *, uri: str, parent_run_id: str | None = None,
                reference: str | None = None) -> dict[str, Any]:
    from ipb import plots
    from ipb.report_html import write_html
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = trial_runs(experiment, uri, parent_run_id)
    synthetic = bool(len(df)) and bool(df["synthetic"].any())
    title = ("SYNTHETIC data (a stand-in, not the paper's images) - " if synthetic else "") + \
        f"experiment {experiment}"
    if df.empty:
        md = f"# {title}\n\nNo finished trial runs yet."
        (out_dir / "report.md").write_text(md)
        write_html(out_dir / "report.md")
        return {"markdown": md, "dir": str(out_dir), "n_runs": 0}
    classes = [c for c in df["classes"].iloc[0].split(",") if c]
    tables = summary_tables(df, classes)
    labels = list(dict.fromkeys(df["label"]))
    ref = reference or next((lab for lab in labels if lab.startswith("supervised")), labels[0])
    tt = ttests(df, classes, ref)
    files = []
    for name, frame in (("tpr", tables["tpr"]), ("f1", tables["f1"])):
        frame[[c for c in frame.columns if not c.startswith("_")]].to_csv(
            out_dir / f"table_{name}.csv", index=False)
    tt.to_csv(out_dir / "ttests.csv", index=False)
    df.drop(columns=["classes"]).to_csv(out_dir / "runs.csv", index=False)
    md = [f"# {title}", "",
          f"{len(df)} finished trial runs; mean (std) over folds x seeds of the TEST split; "
          "TPR = per-class recall (the reference code's 'TPR' was precision; ours is logged as "
          "test.precision.*).", "",
          "## Table 1. True positive rate (recall) per class, mean (std) over folds "
          "(the paper's Table 2)", "", _markdown(tables["tpr"]), "",
          "## Table 2. F1 per class, mean (std) over folds (the paper's Table 3)", "",
          _markdown(tables["f1"]), "",
          f"## Table 3. Student t-test p-values of per-class TPR against `{ref}` "
          "(p >= 0.05: within noise)", "",
          _markdown(tt) if len(tt) else "(one configuration only)"]
    stats = {label: {c: fold_stats(g[f"test.tpr.{c}"].tolist()) for c in classes
                     if f"test.tpr.{c}" in g} for label, g in df.groupby("label", sort=False)}
    files.append(plots.tpr_bars_png(stats, classes, out_dir / "tpr_per_class.png", title))
    md += ["", "## Figure 1. Per-class test TPR, mean and std over folds, one colour per "
           "configuration", "", "![](tpr_per_class.png)"]
    md += _figures(df, classes, labels, uri, out_dir, title, files)
    text = "\n".join(md)
    (out_dir / "report.md").write_text(text)
    write_html(out_dir / "report.md")        # what MLflow's artifact view renders, figures in
    return {"markdown": text, "dir": str(out_dir), "n_runs": len(df), "tpr": tables["tpr"],
            "f1": tables["f1"], "ttests": tt}


def _figures(df: pd.DataFrame, classes: list[str], labels: list[str], uri: str, out_dir: Path,
             title: str, files: list) -> list[str]:
    """The labeled-fraction curve (when the runs span several fractions) and each IPB-style
    row's pseudo-class proportions over epochs: written to out_dir, their markdown lines."""
    from ipb import plots
    md: list[str] = []
    fracs = sorted(df["labeled_fraction"].dropna().unique())
    if len(fracs) > 1:
        curve = df.groupby(["method", "labeled_fraction"])["test.tpr.mean"].agg(["mean", "std"])
        curve.reset_index().to_csv(out_dir / "labeled_fraction.csv", index=False)
        files.append(plots.fraction_curve_png(curve.reset_index(), out_dir / "labeled_fraction.png",
                                              title))
        md += ["", "## Labeled fraction (Fig. 8 style)", "", "![](labeled_fraction.png)"]
    for label in labels:
        ids = df[df["label"] == label]["run_id"].tolist()
        if not any(c.startswith("ipb.pseudo_frac") for c in df[df["label"] == label].columns
                   if df.loc[df["label"] == label, c].notna().any()):
            continue
        hist = pseudo_history(uri, ids, classes)
        name = "pseudo_" + "".join(ch if ch.isalnum() else "_" for ch in label) + ".png"
        if plots.pseudo_fractions_png(hist, classes, out_dir / name, f"{title}\n{label}"):
            md += ["", f"## Pseudo-class proportions over epochs: {label} (Figs. 6/7 style)", "",
                   f"![]({name})"]
    return md

"""Figures shared by run artifacts and reports (matplotlib, headless). No Ray, no MLflow.

    python -c "from ipb.plots import confusion_png; help(confusion_png)"
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _epoch_axis(ax) -> None:
    """Epochs counted from 1, as the trial's log lines count them ("epoch 16/20"), whole
    numbers only (a 4-epoch curve was labelled 15.0, 15.5, ... while the log said 16-19)."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_png(cm: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Rows = true class, columns = predicted; cells show counts and row-normalised recall."""
    cm = np.asarray(cm)
    rec = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    ax.imshow(rec, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}\n{rec[i, j]:.2f}", ha="center", va="center",
                    color="white" if rec[i, j] > 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def curves_png(history: list[dict], keys: list[str], path: Path, title: str,
               ylabel: str = "") -> Path | None:
    """One line per metric key over epochs (keys missing from an epoch are skipped)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = 0
    for k in keys:
        pts = [(h["epoch"] + 1, h[k]) for h in history if k in h]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=k.split(".", 1)[-1])
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    _epoch_axis(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def pseudo_fractions_png(history: list[dict], classes: list[str], path: Path,
                         title: str) -> Path | None:
    """The teacher's pseudo-class proportions per epoch (paper Figs. 6/7), true ones dashed."""
    rows = [h for h in history if f"ipb.pseudo_frac.{classes[0]}" in h]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, c in enumerate(classes):
        color = f"C{i}"
        ax.plot([h["epoch"] + 1 for h in rows], [h[f"ipb.pseudo_frac.{c}"] for h in rows],
                marker=".", color=color, label=c)
        if f"ipb.true_frac.{c}" in rows[-1]:
            ax.axhline(rows[-1][f"ipb.true_frac.{c}"], color=color, ls="--", lw=0.8)
    _epoch_axis(ax)
    ax.set_ylabel("pseudo-class fraction of U")
    ax.set_title(title + " (dashed: true fractions)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def fraction_curve_png(curve, path: Path, title: str) -> Path:
    """Mean test TPR (+- std over folds) against the labeled fraction, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for method, g in curve.groupby("method"):
        g = g.sort_values("labeled_fraction")
        ax.errorbar(g["labeled_fraction"] * 100, g["mean"], yerr=g["std"].fillna(0),
                    marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("labeled fraction (%)")
    ax.set_ylabel("test mean TPR")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def tpr_bars_png(stats: dict[str, dict[str, tuple[float, float]]], classes: list[str],
                 path: Path, title: str) -> Path:
    """Per-class test TPR: one bar group per class, one colour per configuration, bar = mean
    over folds, error bar = std. `stats`: configuration -> class -> (mean, std)."""
    labels = list(stats)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(classes) * max(1, len(labels)) / 2), 3.8))
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(classes))
    for i, label in enumerate(labels):
        mean = [stats[label].get(c, (np.nan, np.nan))[0] for c in classes]
        std = [np.nan_to_num(stats[label].get(c, (np.nan, np.nan))[1]) for c in classes]
        ax.bar(x - 0.4 + width * (i + 0.5), mean, width, yerr=std, capsize=2, color=f"C{i}",
               label=label)
    ax.set_xticks(x, classes, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test TPR (recall)")
    ax.set_title(title + "\nmean (std) over folds", fontsize=9)
    ax.legend(fontsize=7, ncols=2)
    return _save(fig, path)

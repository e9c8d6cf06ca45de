"""Metrics: confusion matrix, per-class TPR / precision / F1, fold statistics, t-tests (PAPER.md 7).

    python -c "from ipb.metrics import classification_metrics; \
print(classification_metrics([0, 1, 2, 2], [0, 2, 2, 2], ['a', 'b', 'c']))"

Used by training (per-epoch val/test metrics) and by the sweep summary (mean (std) over folds,
per-class Student t-tests between configurations). No Ray, no MLflow here.

Conventions, stated once:
- confusion matrix rows = TRUE class, columns = PREDICTED class. The reference code swapped the
  axes, so its "TPR" was per-class precision; here `tpr` is recall and `precision` is precision.
- An undefined ratio (a class with no test samples for TPR, no predictions for precision, or
  precision + TPR = 0 for F1) counts as 0, and 0 enters the unweighted class mean.
- `tpr.var` is the between-class variance of TPR with ddof=1 (sample variance over the classes).
  The paper's "0.0018 vs 0.0024" (PAPER.md section 8) fits MPL Balanced vs Imbalanced under
  ddof=1 (0.00187 vs 0.00244 from Table 2's rounded TPRs); population variance gives 0.00140 vs
  0.00183, which matches neither pair. `tpr_var_ddof=0` gives the population variance.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """int64 [num_classes, num_classes]; entry [i, j] = samples of TRUE class i predicted as j.

    Rows are the true class, columns the prediction (the reference code had them swapped).
    """
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels, y_pred {p.size}; they must match")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} has a class index outside 0..{num_classes - 1}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_rates(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tpr, precision, f1) per class from a rows=true confusion matrix; undefined -> 0."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    tpr = _safe_div(tp, cm.sum(axis=1))
    precision = _safe_div(tp, cm.sum(axis=0))
    f1 = _safe_div(2 * precision * tpr, precision + tpr)
    return tpr, precision, f1


def classification_metrics(y_true, y_pred, class_names: Sequence[str], prefix: str = "test",
                           tpr_var_ddof: int = 1) -> dict[str, float]:
    """Named metrics: {prefix}.tpr|precision|f1.<class>, .mean (unweighted over classes),
    {prefix}.accuracy and {prefix}.tpr.var (between-class variance of TPR, ddof=1 by default).

    Undefined values count as 0 (see module docstring); accuracy of no samples is 0.
    """
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    return metrics_from_confusion(cm, class_names, prefix, tpr_var_ddof)


def metrics_from_confusion(cm: np.ndarray, class_names: Sequence[str], prefix: str = "test",
                           tpr_var_ddof: int = 1) -> dict[str, float]:
    """The same named metrics from a confusion matrix (rows = true class), e.g. one summed
    over data-parallel workers."""
    names = list(class_names)
    tpr, precision, f1 = per_class_rates(cm)
    out: dict[str, float] = {}
    for metric, values in (("tpr", tpr), ("precision", precision), ("f1", f1)):
        for name, v in zip(names, values):
            out[f"{prefix}.{metric}.{name}"] = float(v)
        out[f"{prefix}.{metric}.mean"] = float(values.mean()) if len(values) else 0.0
    total = cm.sum()
    out[f"{prefix}.accuracy"] = float(np.trace(cm) / total) if total else 0.0
    out[f"{prefix}.tpr.var"] = (float(np.var(tpr, ddof=tpr_var_ddof))
                                if len(tpr) > tpr_var_ddof else 0.0)
    return out


def fold_stats(values: Sequence[float]) -> tuple[float, float]:
    """(mean, std) over folds; std is the sample std (ddof=1), nan for fewer than 2 values."""
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        return math.nan, math.nan
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size >= 2 else math.nan
    return mean, std


def ttest(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Student's two-sample t-test (equal variances) of per-fold values: (statistic, p).

    (nan, nan) when either side has fewer than 2 values. When neither side varies (e.g. a
    class every fold gets entirely right) the means decide it: equal -> (0, 1), different ->
    (+-inf, 0), where scipy would return nan with a "catastrophic cancellation" warning.
    """
    from scipy import stats   # scipy import is slow; only the sweep summary needs it

    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size < 2 or y.size < 2:
        return math.nan, math.nan
    scale = 1e-12 * max(1.0, float(np.abs(x).max()), float(np.abs(y).max()))
    if np.ptp(x) <= scale and np.ptp(y) <= scale:
        diff = float(x.mean() - y.mean())
        return (0.0, 1.0) if abs(diff) <= scale else (math.copysign(math.inf, diff), 0.0)
    import warnings
    with warnings.catch_warnings():
        # sides that differ only in the last bits (a class at 0.3333333333333333 and
        # 0.33333333333333337 over folds): scipy's note is about exactly that, and the
        # report says what the test gives
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        res = stats.ttest_ind(x, y, equal_var=True)
    return float(res.statistic), float(res.pvalue)


def _paired_differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired t-test needs matched pairs, got {x.size} and {y.size} values")
    return x - y


def _degenerate(d: np.ndarray) -> tuple[float, float, float] | None:
    """The result of a paired test whose differences decide it alone: fewer than 2 pairs
    (p nan), all 0 (p 1), all equal and non-zero (p 0, no spread); else None."""
    if d.size < 2:
        return (float(d.mean()) if d.size else math.nan), math.nan, math.nan
    if np.all(d == 0):
        return 0.0, 0.0, 1.0
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return float(d.mean()), math.copysign(math.inf, float(d.mean())), 0.0
    return None


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Paired Student t-test of matched values (the same (fold, seed) pairs, in the same
    order): (mean difference a - b, statistic, two-sided p). p is nan for fewer than 2 pairs
    and 1.0 when every difference is exactly 0."""
    from scipy import stats

    d = _paired_differences(a, b)
    fixed = _degenerate(d)
    if fixed is not None:
        return fixed
    res = stats.ttest_1samp(d, 0.0)     # = ttest_rel(a, b)
    return float(d.mean()), float(res.statistic), float(res.pvalue)


# n_test / n_train of a 10-fold split (test 10 %, the rest trains): the Nadeau-Bengio term
CV_TEST_TRAIN_RATIO = 1 / 9


def corrected_paired_ttest(a: Sequence[float], b: Sequence[float],
                           test_train_ratio: float = CV_TEST_TRAIN_RATIO
                           ) -> tuple[float, float, float]:
    """The corrected resampled paired t-test (Nadeau & Bengio 2003): (mean difference a - b,
    statistic, two-sided p) over J matched (fold, seed) pairs whose training sets overlap.
    The variance of the mean difference is s^2 (1/J + n_test/n_train) instead of s^2 / J: the
    plain test treats overlapping folds as independent and is too optimistic. p is nan for
    fewer than 2 pairs, 1.0 when every difference is 0, 0.0 when all are equal and non-zero."""
    from scipy import stats

    d = _paired_differences(a, b)
    fixed = _degenerate(d)
    if fixed is not None:
        return fixed
    t = float(d.mean()) / math.sqrt(float(d.var(ddof=1)) * (1.0 / d.size + test_train_ratio))
    return float(d.mean()), t, float(2 * stats.t.sf(abs(t), d.size - 1))


def min_detectable_difference(sd: float, n_pairs: int, alpha: float = 0.05,
                              test_train_ratio: float = CV_TEST_TRAIN_RATIO) -> float:
    """The smallest mean difference the corrected test calls significant at `alpha` with
    `n_pairs` pairs whose differences have standard deviation `sd` (nan for < 2 pairs)."""
    from scipy import stats

    if n_pairs < 2 or not np.isfinite(sd):
        return math.nan
    return float(stats.t.ppf(1 - alpha / 2, n_pairs - 1) * sd *
                 math.sqrt(1.0 / n_pairs + test_train_ratio))


def softmax_average(probs_list) -> np.ndarray:
    """Mean of K softmax outputs [N, C] (K test patches per colony) -> [N, C]."""
    arr = np.asarray([np.asarray(p, dtype=np.float64) for p in probs_list])
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"softmax_average wants K >= 1 arrays of shape [N, C], got {arr.shape}")
    return arr.mean(axis=0)


COLLAPSE_SHARE = 0.8   # a student predicting one class this often, where no class holds 60 %


def collapse_threshold(true_max: float) -> float:
    """The largest predicted-class share above which a student has collapsed: 0.8 where the
    largest true class holds under 60 % of the colonies; on data with a dominant class
    (BCCD's RBC: 85 %), halfway from that class's true share to 1 -- 0.8 there would flag
    a perfect classifier."""
    return max(COLLAPSE_SHARE, (1.0 + true_max) / 2.0)

import math

import numpy as np
import pytest
from scipy import stats

from ipb.metrics import (classification_metrics, confusion_matrix, fold_stats, softmax_average,
                         ttest)

NAMES = ["a", "b", "c"]


def _from_matrix(cm):
    """y_true, y_pred realising a rows=true confusion matrix."""
    t, p = [], []
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            t += [i] * n
            p += [j] * n
    return t, p


# Written out by hand: rows = true class, columns = predicted class.
HAND = [[3, 1, 0],   # a: 4 samples, 3 right      -> TPR 3/4
        [1, 2, 0],   # b: 3 samples, 2 right      -> TPR 2/3
        [2, 0, 1]]   # c: 3 samples, 1 right      -> TPR 1/3
# column sums 6, 3, 1 -> precision a 3/6, b 2/3, c 1/1
# F1 = 2PR/(P+R): a 2*.5*.75/1.25 = 0.6, b 2/3, c 2*1*(1/3)/(4/3) = 0.5


def test_hand_computed_three_classes():
    t, p = _from_matrix(HAND)
    assert confusion_matrix(t, p, 3).tolist() == HAND
    m = classification_metrics(t, p, NAMES, prefix="test")
    expect = {
        "test.tpr.a": 0.75, "test.tpr.b": 2 / 3, "test.tpr.c": 1 / 3,
        "test.precision.a": 0.5, "test.precision.b": 2 / 3, "test.precision.c": 1.0,
        "test.f1.a": 0.6, "test.f1.b": 2 / 3, "test.f1.c": 0.5,
        "test.tpr.mean": (0.75 + 2 / 3 + 1 / 3) / 3,
        "test.precision.mean": (0.5 + 2 / 3 + 1.0) / 3,
        "test.f1.mean": (0.6 + 2 / 3 + 0.5) / 3,
        "test.accuracy": 0.6,
        # deviations from 7/12: 1/6, 1/12, -1/4 -> (1/36 + 1/144 + 1/16) / 2 = 0.0486111
        "test.tpr.var": 0.0486111111,
    }
    assert set(m) == set(expect)
    for k, v in expect.items():
        assert m[k] == pytest.approx(v, abs=1e-9), k
    pop = classification_metrics(t, p, NAMES, tpr_var_ddof=0)
    assert pop["test.tpr.var"] == pytest.approx(0.0486111111 * 2 / 3)


def test_axis_orientation_always_class_zero():
    t = [0] * 2 + [1] * 5 + [2] * 3
    p = [0] * len(t)
    cm = confusion_matrix(t, p, 3)
    assert cm[:, 0].tolist() == [2, 5, 3] and cm[:, 1:].sum() == 0
    m = classification_metrics(t, p, NAMES, prefix="val")
    assert m["val.tpr.a"] == 1.0
    assert m["val.precision.a"] == pytest.approx(0.2)   # class-0 share of the samples
    assert m["val.tpr.b"] == 0.0 and m["val.tpr.c"] == 0.0


def test_undefined_classes_are_zero():
    # class c has no samples and is never predicted; class b is never predicted
    m = classification_metrics([0, 0, 1], [0, 0, 0], NAMES)
    assert m["test.tpr.c"] == 0.0 and m["test.precision.c"] == 0.0 and m["test.f1.c"] == 0.0
    assert m["test.precision.b"] == 0.0 and m["test.f1.b"] == 0.0
    assert m["test.tpr.mean"] == pytest.approx(1 / 3)
    assert all(math.isfinite(v) for v in m.values())
    empty = classification_metrics([], [], NAMES)
    assert empty["test.accuracy"] == 0.0 and empty["test.tpr.mean"] == 0.0


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="match"):
        confusion_matrix([0, 1], [0], 3)


def test_fold_stats_sample_std():
    mean, std = fold_stats([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))   # ddof=1: sum sq dev 5 over n-1 = 3
    m1, s1 = fold_stats([0.7])
    assert m1 == 0.7 and math.isnan(s1)


def test_ttest_student_known_value():
    a, b = [1, 2, 3, 4, 5], [2, 4, 6, 8, 10]
    # pooled variance (4*2.5 + 4*10)/8 = 6.25, se = sqrt(6.25*(1/5+1/5)) = sqrt(2.5), df = 8
    t_expect = (3 - 6) / math.sqrt(2.5)
    p_expect = 2 * stats.t.sf(abs(t_expect), 8)
    t, p = ttest(a, b)
    assert t == pytest.approx(t_expect) and t == pytest.approx(-1.8973666)
    assert p == pytest.approx(p_expect)
    welch = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert p != pytest.approx(welch)   # really Student, not Welch
    assert all(math.isnan(x) for x in ttest([1.0], [2.0, 3.0]))


def test_ttest_of_constant_sides_is_decided_by_their_means_without_a_warning():
    """Issue 20: a class every fold got entirely right on both sides printed p=nan and scipy's
    "catastrophic cancellation" warning in the report's Table 3."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ttest([1.0, 1.0, 1.0], [1.0, 1.0]) == (0.0, 1.0)
        assert ttest([0.9, 0.9], [1.0, 1.0]) == (-math.inf, 0.0)
        assert ttest([1.0, 1.0], [0.5, 0.5]) == (math.inf, 0.0)
    t, p = ttest([1.0, 1.0, 1.0], [0.9, 1.0, 0.95])    # one side varies: scipy decides
    assert t > 0 and 0 < p < 1


def test_softmax_average():
    p1 = np.array([[0.9, 0.1], [0.2, 0.8]])
    p2 = np.array([[0.5, 0.5], [0.4, 0.6]])
    np.testing.assert_allclose(softmax_average([p1, p2]), [[0.7, 0.3], [0.3, 0.7]])
    with pytest.raises(ValueError):
        softmax_average([])


def test_ttest_of_sides_differing_in_the_last_bits_is_quiet_and_not_significant():
    """The study report's Table 3 printed scipy's "Precision loss ... catastrophic cancellation"
    warning for a class whose per-fold TPRs differed only by float rounding."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t, p = ttest([1 / 3] * 3, [1 / 3, 1 / 3, 1 / 3 + 1e-11])
    assert math.isfinite(t) and 0.05 < p <= 1

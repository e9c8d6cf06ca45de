"""pytest tests/test_study.py -- the study report's numbers from made-up trial runs (no Ray)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from ipb.study import IPB_LEARN, IPB_PAPER, IPB_ROBUST, MPL, MPL_LEARN, SUPERVISED, \
    TOP_FRACTION, best_ipb_row, build, comparison, curve_label, diagnostics_table, last_line, \
    per_pair, pseudo_movement

CLASSES = ["Debris", "Dense", "Differentiated", "Spread"]


def runs(rows: dict[str, tuple[str, list[float], float]], minority_shift=0.0, share=0.4):
    """label -> (method, per-pair mean TPR, val TPR); per-class TPR = mean (+ a shift for the
    minority), five (fold, seed) pairs."""
    out = []
    for label, (method, tprs, val) in rows.items():
        for k, t in enumerate(tprs):
            r = {"run_id": f"{label}-{k}", "label": label, "method": method, "fold": k,
                 "seed": 0, "best.val.tpr.mean": val, "test.tpr.mean": t, "test.f1.mean": t,
                 "test.tpr.var": 0.01, "test.pred_share.max": share, "synthetic": True}
            for c in CLASSES:
                r[f"test.tpr.{c}"] = t + (minority_shift if c == "Differentiated" and
                                          method == "ipb" else 0.0)
                r[f"test.f1.{c}"] = t
            out.append(r)
    return pd.DataFrame(out)


BASE = [0.80, 0.82, 0.78, 0.85, 0.81]


def test_paired_difference_consistent_gain_is_significant_and_noise_is_not():
    df = runs({SUPERVISED: ("supervised", BASE, 0.8),
               IPB_ROBUST: ("ipb", [b + 0.04 + 0.002 * k for k, b in enumerate(BASE)], 0.85),
               IPB_PAPER: ("ipb", [b + (-0.03, 0.03, -0.02, 0.02, 0.0)[k]
                                   for k, b in enumerate(BASE)], 0.7)})
    gain = comparison(df, IPB_ROBUST, SUPERVISED, "Differentiated")
    assert gain["pairs"] == 5 and gain["d mean TPR"] == pytest.approx(0.044)
    assert gain["p"] < 0.001 and gain["verdict"] == "better"
    assert 0 < gain["detectable"] < 0.044
    noise = comparison(df, IPB_PAPER, SUPERVISED, "Differentiated")
    assert noise["p"] > 0.05 and noise["verdict"] == "within noise"


def test_best_ipb_row_is_chosen_on_validation_not_test():
    df = runs({IPB_PAPER: ("ipb", [0.9] * 5, 0.70), IPB_ROBUST: ("ipb", [0.5] * 5, 0.80)})
    assert best_ipb_row(df) == IPB_ROBUST
    # among the rows whose MPL twin ran, where any did (both differences of one row)
    df = runs({IPB_ROBUST: ("ipb", [0.5] * 5, 0.90), IPB_LEARN: ("ipb", [0.6] * 5, 0.80),
               MPL_LEARN: ("mpl", [0.5] * 5, 0.80)})
    assert best_ipb_row(df) == IPB_LEARN


def test_last_line_format_collapse_count_twin_and_headroom():
    """ipb-mpl is the best IPB row minus MPL with the same switches (IPB (learn) -> MPL
    (learn)), not the paper's MPL; headroom = supervised at 50 % minus supervised."""
    df = runs({SUPERVISED: ("supervised", BASE, 0.8),
               curve_label(SUPERVISED, TOP_FRACTION): ("supervised", [b + 0.1 for b in BASE],
                                                       0.9),
               MPL: ("mpl", [0.25] * 5, 0.3),
               MPL_LEARN: ("mpl", [b + 0.02 + 0.001 * k for k, b in enumerate(BASE)], 0.85),
               IPB_LEARN: ("ipb", [b + 0.05 for b in BASE], 0.9)}, minority_shift=0.1)
    df.loc[df["label"] == MPL, "test.pred_share.max"] = 1.0
    line = last_line(df, "Differentiated", 12.4)
    assert re.fullmatch(r"study: ipb-supervised \+0\.050 \(p=\S+\), ipb-mpl \+0\.028 "
                        r"\(p=\S+\), minority \+0\.150, collapsed 5/15, headroom \+0\.100, "
                        r"wall 12 min", line), line


def test_corrected_test_is_less_optimistic_than_the_plain_one():
    """Nadeau-Bengio: variance x (1/J + n_test/n_train); the same differences give a larger
    p, and the plain test (ratio 0) is the old paired t-test."""
    from ipb.metrics import corrected_paired_ttest, min_detectable_difference, paired_ttest
    a = [0.80, 0.82, 0.78, 0.85, 0.81]
    b = [x - d for x, d in zip(a, (0.01, 0.03, 0.0, 0.02, 0.015))]
    _, _, p_plain = paired_ttest(a, b)
    _, _, p0 = corrected_paired_ttest(a, b, 0.0)
    _, _, p = corrected_paired_ttest(a, b, 1 / 9)
    assert p0 == pytest.approx(p_plain) and p > p_plain
    assert corrected_paired_ttest(a, a)[2] == 1.0
    sd = float(np.std(np.subtract(a, b), ddof=1))
    assert min_detectable_difference(sd, 10) < min_detectable_difference(sd, 5)


def test_diagnostics_table_shows_teacher_plus_noise():
    df = runs({SUPERVISED: ("supervised", BASE, 0.8), IPB_ROBUST: ("ipb", BASE, 0.8)})
    df["diag.test_agree"] = np.where(df["method"] == "ipb", 0.93, np.nan)
    df["diag.h_abs"] = 1e-4
    tab = diagnostics_table(df).set_index("row")
    assert list(tab.index) == [IPB_ROBUST]
    assert tab.loc[IPB_ROBUST, "agree w/ teacher (test)"] == pytest.approx(0.93)
    assert tab.loc[IPB_ROBUST, "TPR - teacher"] == pytest.approx(0.0)


def test_collapse_is_relative_to_a_dominant_true_class():
    """0.8 where no class holds 60 % (the synthetic study); with BCCD's 85 % RBC a student
    that predicts RBC for 82 % of cells is not collapsed, one at 96 % is."""
    from ipb.study import is_collapsed
    df = pd.DataFrame({"test.pred_share.max": [0.81, 0.79, 0.82, 0.96],
                       "test.true_share.max": [0.56, 0.56, 0.85, 0.85]})
    assert is_collapsed(df).tolist() == [True, False, False, True]
    assert is_collapsed(df.drop(columns="test.true_share.max")).tolist() == [True, False,
                                                                             True, True]


def test_pseudo_movement_measures_total_variation_first_to_last():
    true = {f"ipb.true_frac.{c}": v for c, v in zip(CLASSES, (0.2, 0.2, 0.05, 0.55))}
    def epoch(p):
        return {**true, **{f"ipb.pseudo_frac.{c}": v for c, v in zip(CLASSES, p)}}
    hist = {"a": [epoch((0.1, 0.1, 0.3, 0.5)), epoch((0.2, 0.2, 0.1, 0.5))],
            "b": [epoch((0.2, 0.2, 0.05, 0.55)), epoch((0.4, 0.1, 0.0, 0.5))]}
    mv = pseudo_movement(hist, CLASSES).set_index("run_id")
    assert mv.loc["a", "tv_first"] == pytest.approx(0.25) and bool(mv.loc["a", "fell"])
    assert mv.loc["b", "tv_first"] == pytest.approx(0.0) and not bool(mv.loc["b", "fell"])


def test_build_has_captioned_tables_curve_and_ends_with_the_line():
    rows = {SUPERVISED: ("supervised", BASE, 0.8), MPL: ("mpl", BASE, 0.8),
            IPB_ROBUST: ("ipb", BASE, 0.8), IPB_LEARN: ("ipb", BASE, 0.8)}
    ablation = f"{IPB_ROBUST} without ema=0.99"
    rows[ablation] = ("ipb", [b - 0.01 for b in BASE], 0.8)
    for f in (0.01, 0.05):
        for label, (m, t, v) in list(rows.items()):
            if "labeled" not in label:
                rows[curve_label(label, f)] = (m, [x - 0.2 + f for x in t], v)
    df = runs(rows)
    out = build(df, CLASSES, "Differentiated", 0.10, {}, 3.0, "SYNTHETIC test")
    md = out["markdown"]
    for caption in ("Table 1. True positive rate", "Table 2. F1",
                    "Table 3. Corrected paired t-tests", "Nadeau & Bengio",
                    "Table 4. Teacher plus noise?", "pair by pair: mean test TPR",
                    "Table 6. Labeled-fraction curve"):
        assert caption in md
    assert "Differentiated (minority)" in md
    assert md.strip().splitlines()[-1] == out["line"]
    curve = out["curve"]
    assert sorted(curve["labeled_fraction"].unique()) == [0.01, 0.05, 0.10]
    assert set(curve["method"]) == {SUPERVISED, MPL, IPB_LEARN}
    assert np.all(curve["n"] == 5)
    # curve rows stay out of the main tables, but IPB is tested against supervised at each
    assert not out["tpr"]["row"].str.contains("labeled").any()
    tested = set(zip(out["tests"]["comparison"], out["tests"]["pairs"]))
    assert (f"{ablation} vs {IPB_ROBUST}", 5) in tested
    for f in (0.01, 0.05):
        name = f"{curve_label(IPB_ROBUST, f)} vs {curve_label(SUPERVISED, f)}"
        assert (name, 5) in tested


def test_trial_runs_by_hash_include_trials_an_earlier_sweep_ran(tmp_path):
    """`study.py --ablation` after the default study: a new parent run whose report must still
    hold the finished trials it skipped (the newest run per trial hash, none from elsewhere)."""
    from mlflow.tracking import MlflowClient

    from ipb.report import trial_runs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("ipb-study", artifact_location=str(tmp_path / "art"))
    old, new = (c.create_run(exp).info.run_id for _ in range(2))

    def trial(parent, h, label, tpr):
        r = c.create_run(exp, tags={"mlflow.parentRunId": parent, "ipb.trial_hash": h,
                                    "ipb.config_label": label, "ipb.fold": "0"}).info.run_id
        c.log_metric(r, "test.tpr.mean", tpr)
        c.set_terminated(r, "FINISHED")
    trial(old, "h-sup", SUPERVISED, 0.80)
    trial(old, "h-other", "not in the new sweep", 0.10)
    trial(new, "h-abl", "ablation row", 0.70)
    assert set(trial_runs("ipb-study", uri, new)["label"]) == {"ablation row"}
    df = trial_runs("ipb-study", uri, new, hashes=["h-sup", "h-abl"])
    assert sorted(df["label"]) == sorted([SUPERVISED, "ablation row"])
    trial(new, "h-sup", SUPERVISED, 0.90)       # run again: the newest counts, once
    df = trial_runs("ipb-study", uri, new, hashes=["h-sup", "h-abl"])
    assert len(df) == 2 and df.loc[df["label"] == SUPERVISED, "test.tpr.mean"].item() == 0.90


def test_the_report_as_html_renders_its_figures_inline(tmp_path):
    """Issue 20: MLflow's artifact view showed report.md's `![](tpr_per_class.png)` as text;
    report.html carries the tables and the figure itself (a data: URI)."""
    import base64

    from ipb.report_html import write_html
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgAB"
                           "SK+kcQAAAABJRU5ErkJggg==")
    (tmp_path / "fig.png").write_bytes(png)
    (tmp_path / "r.md").write_text("# SYNTHETIC data - study\n\ntext with `code` & <b>\n\n"
                                   "## Table\n\n| row | TPR |\n|---|---|\n| IPB | 0.83 |\n\n"
                                   "- one\n- **two**\n\n![](fig.png)\n\n![](gone.png)")
    page = write_html(tmp_path / "r.md").read_text()
    assert "<title>SYNTHETIC data - study</title>" in page
    assert "<th>row</th><th>TPR</th></tr><tr><td>IPB</td><td>0.83</td></tr>" in page
    assert "---" not in page and "&lt;b&gt;" in page and "<code>code</code>" in page
    assert "<li><b>two</b></li>" in page and "![" not in page
    assert 'src="data:image/png;base64,' + base64.b64encode(png).decode() in page
    assert "(figure gone.png missing)" in page


def test_per_pair_counts_signs_correlates_with_the_teacher_and_tests_each_half():
    """The gain pair by pair: 10 pairs, the student gains most where the teacher is weak; the
    first and second half of the pairs (in fold order) are each tested alone."""
    sup = [0.70, 0.80, 0.75, 0.85, 0.78, 0.72, 0.82, 0.76, 0.84, 0.79]
    gain = [0.10 - 0.5 * (s - 0.70) for s in sup]          # 0.10 at 0.70 ... 0.025 at 0.85
    twin = [s + 0.01 for s in sup]
    df = runs({SUPERVISED: ("supervised", sup, 0.8),
               IPB_LEARN: ("ipb", [s + g for s, g in zip(sup, gain)], 0.9),
               MPL_LEARN: ("mpl", twin, 0.8)})
    frame, lines = per_pair(df, IPB_LEARN, "Differentiated")
    assert list(frame["fold"]) == list(range(10)) and list(frame.columns[-2:]) == \
        ["d vs supervised", "d vs twin"]
    assert MPL_LEARN in frame and frame["d vs supervised"].to_numpy() == \
        pytest.approx(gain)
    assert lines[0] == f"{IPB_LEARN} - supervised: positive in 10/10 pairs."
    assert "Pearson r = -1.00" in lines[1]
    assert lines[2].startswith("first half (5 pairs, folds 0, 1, 2, 3, 4): vs supervised +")
    assert lines[3].startswith("second half (5 pairs, folds 5, 6, 7, 8, 9): vs supervised +")
    assert "vs twin" in lines[3]
    # it is part of the report, after the diagnostics
    md = build(df, CLASSES, "Differentiated", 0.01, {}, 1.0, "SYNTHETIC t")["markdown"]
    assert md.index("Table 4.") < md.index(f"Table 5. {IPB_LEARN} pair by pair") < \
        md.index("second half")
    # no supervised row: no table, no lines
    frame, lines = per_pair(df[df["label"] != SUPERVISED], IPB_LEARN, "Differentiated")
    assert frame.empty and lines == []


def test_precision_cost_shows_what_a_recall_gain_costs():
    """Balanced recall rises when a student over-predicts the rare class; Table 3b shows the
    precision and F1 it gives up, on the same pairs and test."""
    from ipb.study import precision_cost
    df = runs({SUPERVISED: ("supervised", BASE, 0.8),
               IPB_LEARN: ("ipb", [b + 0.03 for b in BASE], 0.9)})
    worse = [0.05, 0.07, 0.06, 0.08, 0.06]
    df["test.precision.Differentiated"] = [0.6] * 5 + [0.6 - w for w in worse]
    df.loc[df["label"] == IPB_LEARN, "test.f1.mean"] -= 0.05
    cost = precision_cost(df, IPB_LEARN, SUPERVISED, "Differentiated")
    assert cost["d mean F1"] == pytest.approx(-0.02) and cost["p mean F1"] < 0.05
    assert cost["d Differentiated precision"] == pytest.approx(-np.mean(worse))
    assert cost["p Differentiated precision"] < 0.05
    md = build(df, CLASSES, "Differentiated", 0.01, {}, 1.0, "SYNTHETIC t")["markdown"]
    assert "Table 3b. What the recall costs" in md
    # no precision logged (an older run): the column says so instead of failing
    assert np.isnan(precision_cost(df.drop(columns="test.precision.Differentiated"), IPB_LEARN,
                                   SUPERVISED, "Differentiated")["d Differentiated precision"])

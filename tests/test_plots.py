"""pytest tests/test_plots.py -- the figures' axes (no Ray, no MLflow)."""
from __future__ import annotations

import numpy as np

from ipb import plots


def _drawn(monkeypatch):
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    return figs


def test_epoch_axes_count_from_one_in_whole_numbers(monkeypatch, tmp_path):
    """Issue 20: the pseudo-class figure's axis ran 15.0-18.0 in half steps while the trial's
    log said epochs 16-19."""
    figs = _drawn(monkeypatch)
    hist = [{"epoch": e, "ipb.pseudo_frac.A": 0.5, "ipb.pseudo_frac.B": 0.5,
             "ipb.true_frac.A": 0.7, "ipb.true_frac.B": 0.3, "train.loss": 1.0 / (e + 1)}
            for e in range(15, 19)]
    assert plots.pseudo_fractions_png(hist, ["A", "B"], tmp_path / "p.png", "t")
    assert plots.curves_png(hist, ["train.loss"], tmp_path / "c.png", "t")
    for fig in figs:
        ax = fig.axes[0]
        assert list(ax.lines[0].get_xdata()) == [16, 17, 18, 19]
        ticks = [t for t in ax.get_xticks() if 16 <= t <= 19]
        assert ticks and np.allclose(ticks, np.round(ticks)), ax.get_xticks()

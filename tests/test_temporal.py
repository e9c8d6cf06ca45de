"""pytest tests/test_temporal.py -- colony tracks across frames and classes constrained in time."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from ipb.config import MethodConfig, SynthConfig, load_config, to_dict
from ipb.temporal import box_iou, constrain_frames, track, tpr, transition_matrix, viterbi
from tiny import TINY

CLASSES = ["Debris", "Dense", "Differentiated", "Spread"]
RULES, CHANGE = MethodConfig().temporal_transitions, MethodConfig().temporal_change


def test_default_transitions_debris_absorbing_no_way_back():
    t = transition_matrix(CLASSES, RULES, CHANGE)
    assert np.allclose(t.sum(axis=1), 1)
    d, de, di, s = range(4)
    assert t[d, d] == 1.0                                 # Debris is absorbing
    assert t[de, s] > 0 and t[de, di] > 0 and t[s, di] > 0 and t[s, d] > 0
    assert t[s, de] == 0 and t[di, de] == 0 and t[di, s] == 0    # never back to Dense
    # classes named in no rule are only smoothed, in either direction
    free = transition_matrix(["RBC", "WBC"], RULES, CHANGE)
    assert free[0, 1] == free[1, 0] == pytest.approx(CHANGE)
    with pytest.raises(ValueError, match="From>To"):
        transition_matrix(CLASSES, ["Dense-Spread"], CHANGE)


def test_viterbi_removes_a_forbidden_flip_and_keeps_a_real_change():
    t = transition_matrix(CLASSES, RULES, CHANGE)
    true = np.array([1, 1, 1, 1, 3, 3, 3, 3])                 # Dense, then Spread
    p = np.full((8, 4), 0.05)
    p[np.arange(8), true] = 0.85
    p[5] = [0.05, 0.6, 0.05, 0.3]                             # Spread -> Dense: not allowed
    p /= p.sum(axis=1, keepdims=True)
    raw = p.argmax(axis=1)
    path = viterbi(np.log(p), t)
    assert (raw != true).sum() == 1 and (path == true).all()


def test_tracks_follow_moving_colonies_across_a_missed_frame():
    a, b = np.array([10, 10, 50, 50]), np.array([100, 100, 160, 150])
    frames = [np.stack([a, b]), np.stack([b + 3, a + 2]), np.stack([a + 4]),
              np.stack([a + 5, b + 6, [300, 300, 340, 340]])]
    ids = track(frames)
    assert ids[0].tolist() == [0, 1] and ids[1].tolist() == [1, 0] and ids[2].tolist() == [0]
    assert ids[3].tolist() == [0, 1, 2]          # b skipped frame 2 and kept its track
    assert box_iou(a, a + 100)[0, 0] == 0 and box_iou(a, a)[0, 0] == pytest.approx(1)


def test_constrained_tpr_beats_raw_on_simulated_series():
    """Class sequences drawn as the synthetic series change (ipb/data/synth_render.py), a
    classifier that is right 75 % of the time: the constrained path is right more often."""
    from ipb.data.synth_render import _evolve
    rng = np.random.default_rng(0)
    t = transition_matrix(CLASSES, RULES, CHANGE)
    labels = list(rng.choice(CLASSES, size=300, p=[0.2, 0.4, 0.05, 0.35]))
    seqs = np.array([[CLASSES.index(c) for c in s] for s in _evolve(labels, 8, rng)])
    assert (seqs[:, 0] != seqs[:, -1]).any()          # some colonies do change class
    frames = []
    for f in range(8):
        p = rng.dirichlet(np.ones(4), size=len(seqs)) * 0.6
        right = rng.random(len(seqs)) < 0.75
        p[np.arange(len(seqs)), np.where(right, seqs[:, f], rng.integers(0, 4, len(seqs)))] += 1
        boxes = np.stack([np.arange(len(seqs)) * 50, np.zeros(len(seqs)),
                          np.arange(len(seqs)) * 50 + 40, np.full(len(seqs), 40)], axis=1)
        frames.append((boxes + f, p / p.sum(axis=1, keepdims=True)))
    ids, constrained = constrain_frames(frames, t)
    assert all((i == np.arange(len(seqs))).all() for i in ids)
    true = seqs.T.ravel()
    raw = np.concatenate([p.argmax(axis=1) for _, p in frames])
    raw_tpr, con_tpr = tpr(true, raw, 4), tpr(true, np.concatenate(constrained), 4)
    assert np.nanmean(con_tpr) > np.nanmean(raw_tpr) + 0.05, (raw_tpr, con_tpr)


def test_predict_writes_tracks_and_constrained_counts(tmp_path):
    from ipb.data.synth import synthesize
    from ipb.models import create_model
    from ipb.predict import config_for, load_student, predict_images
    torch.manual_seed(0)
    net = create_model("vgg19", num_classes=4, width=0.125)
    path = tmp_path / "student.pt"
    torch.save({"state_dict": net.state_dict(), "arch": "vgg19", "width": 0.125,
                "classes": CLASSES, "patch_size": 32,
                "config": to_dict(load_config("smoke", [*TINY, "patch.size=32"]))}, path)
    synthesize(tmp_path / "series", SynthConfig(wells=1, size=384, time_points=3,
                                                colonies_per_well=4, seed=1), progress=False)
    net, meta = load_student(path)
    out = predict_images(net, meta, [tmp_path / "series" / "images"], tmp_path / "out",
                         config_for(meta), test_patches=1, progress=False)
    with (tmp_path / "out" / "colonies.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["track"].startswith("0.") and r["class_constrained"] in CLASSES
                        for r in rows)
    tracks = {r["track"] for r in rows}
    assert len(tracks) < len(rows)                # colonies are followed across frames
    assert sum(out["counts_constrained"].values()) == out["n_colonies"]
    with (tmp_path / "out" / "counts.csv").open() as fh:
        counts = list(csv.DictReader(fh))
    assert all(sum(int(c[f"nc_{k}"]) for k in CLASSES) == int(c["n_colonies"]) for c in counts)

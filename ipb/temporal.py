"""Colonies tracked across the frames of a time series, their classes constrained in time.

    ipb predict MODEL series/ --out pred/   # colonies.csv: track, class_constrained; counts.csv: nc_<class>

Witmer & Bhanu (Sensors 22:206, 2022) classify time-lapse colonies under temporal constraints.
Here, after every frame is classified:
  tracking   frame by frame, colonies are matched to the tracks seen in the last MAX_GAP + 1
             frames by box overlap (IoU, one-to-one Hungarian assignment, IoU >= MIN_IOU); an
             unmatched colony starts a track
  smoothing  along each track, the Viterbi path of an HMM whose emission scores are the
             classifier's log-probabilities and whose transitions allow only the changes named
             in `method.temporal_transitions` ("Dense>Spread", "*>Debris": Debris is absorbing,
             Dense may become Spread or Differentiated, not the reverse), each allowed change
             with `method.temporal_change` / (number of allowed changes) per frame
A class named in no rule may change to and from anything (so data with other classes is only
smoothed). Raw classes stay in `class`; `class_constrained` is the path's. Plain numpy/scipy.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.optimize import linear_sum_assignment

MIN_IOU = 0.3
MAX_GAP = 1            # a colony missed in one frame keeps its track
TEMPORAL_FIELDS = ["track", "class_constrained"]


def transition_matrix(classes: list[str], rules, change: float) -> np.ndarray:
    """(C, C) row-stochastic matrix: stay with 1 - change, each allowed change change / k."""
    c = len(classes)
    allowed = np.zeros((c, c), bool)
    named = set()
    for rule in rules:
        if ">" not in rule:
            raise ValueError(f"temporal transition {rule!r} is not 'From>To' (e.g. Dense>Spread, "
                             "*>Debris)")
        src, dst = (s.strip() for s in rule.split(">", 1))
        named.update({src, dst} - {"*"})
        rows = range(c) if src == "*" else [i for i, k in enumerate(classes) if k == src]
        cols = range(c) if dst == "*" else [j for j, k in enumerate(classes) if k == dst]
        for i in rows:
            for j in cols:
                allowed[i, j] = True
    for i, k in enumerate(classes):
        if k not in named:               # unconstrained class: any change, either way
            allowed[i, :] = True
            allowed[:, i] = True
    np.fill_diagonal(allowed, False)
    out = np.zeros((c, c))
    for i in range(c):
        k = allowed[i].sum()
        out[i, i] = 1.0 - change if k else 1.0
        out[i, allowed[i]] = change / max(1, k)
    return out


def viterbi(log_p: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """The most likely class path (T,) for per-frame log-probabilities (T, C), uniform prior."""
    with np.errstate(divide="ignore"):
        log_t = np.log(trans)
    score = log_p[0].copy()
    back = np.zeros(log_p.shape, np.int64)
    for t in range(1, len(log_p)):
        cand = score[:, None] + log_t            # from i to j
        back[t] = cand.argmax(axis=0)
        score = cand.max(axis=0) + log_p[t]
    path = np.zeros(len(log_p), np.int64)
    path[-1] = int(score.argmax())
    for t in range(len(log_p) - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a (n, 4) with every box of b (m, 4), boxes x0, y0, x1, y1."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    ix, iy = ix.clip(min=0), iy.clip(min=0)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])   # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def track(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Track ids (0..) for the boxes of each frame, in frame order."""
    ids, last = [], {}                    # track -> (frame index, box)
    next_id = 0
    for f, boxes in enumerate(frames):
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        live = [k for k, (g, _) in last.items() if f - g <= MAX_GAP + 1]
        out = np.full(len(boxes), -1, np.int64)
        if live and len(boxes):
            iou = box_iou(boxes, np.stack([last[k][1] for k in live]))
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= MIN_IOU:
                    out[r] = live[c]
        for r in np.flatnonzero(out < 0):
            out[r], next_id = next_id, next_id + 1
        for r, k in enumerate(out):
            last[int(k)] = (f, boxes[r])
        ids.append(out)
    return ids


def constrain_frames(frames: list[tuple[np.ndarray, np.ndarray]], trans: np.ndarray
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """frames: (boxes (n, 4), probabilities (n, C)) in time order -> per frame the track ids
    and the constrained classes."""
    ids = track([b for b, _ in frames])
    paths: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for f, frame_ids in enumerate(ids):
        for r, k in enumerate(frame_ids):
            paths[int(k)].append((f, r))
    out = [np.zeros(len(b), np.int64) for b, _ in frames]
    for members in paths.values():
        log_p = np.log(np.clip(np.stack([frames[f][1][r] for f, r in members]), 1e-6, 1.0))
        for (f, r), c in zip(members, viterbi(log_p, trans)):
            out[f][r] = c
    return ids, out


def constrain_rows(colony_rows: list[dict], count_rows: list[dict], classes: list[str],
                   rules, change: float) -> None:
    """`ipb predict`'s rows, in place: each colony gets `track` (series/track number; empty
    for single images) and `class_constrained`; each count row `nc_<class>`, the counts of
    constrained classes."""
    trans = transition_matrix(classes, rules, change)
    group = {(r["image"], r["time"]): r["group"] for r in count_rows}
    series: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in colony_rows:
        r["track"], r["class_constrained"] = "", r["class"]
        if r["time"] is not None and r["time"] >= 0:
            series[group[(r["image"], r["time"])]][r["time"]].append(r)
    for s, (name, by_time) in enumerate(sorted(series.items())):
        times = sorted(by_time)
        frames = [(np.array([[r["x0"], r["y0"], r["x1"], r["y1"]] for r in by_time[t]], float),
                   np.array([[float(r[f"p_{c}"]) for c in classes] for r in by_time[t]], float))
                  for t in times]
        ids, constrained = constrain_frames(frames, trans)
        for t, frame_ids, cls in zip(times, ids, constrained):
            for r, k, c in zip(by_time[t], frame_ids, cls):
                r["track"], r["class_constrained"] = f"{s}.{k}", classes[c]
    per = defaultdict(lambda: np.zeros(len(classes), np.int64))
    index = {c: i for i, c in enumerate(classes)}
    for r in colony_rows:
        per[(r["image"], r["time"])][index[r["class_constrained"]]] += 1
    for r in count_rows:
        counts = per[(r["image"], r["time"])]
        r.update({f"nc_{c}": int(v) for c, v in zip(classes, counts)})


def tpr(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class true-positive rate (recall); NaN for a class with no true sample."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        sel = true == c
        if sel.any():
            out[c] = float((pred[sel] == c).mean())
    return out

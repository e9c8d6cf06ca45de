"""Folds: labeled L, validation, unlabeled U and test T colonies per class (PAPER.md section 1).

    python -c "from ipb.config import load_config; from ipb.data.table import load_colonies; \
from ipb.data.splits import fold_summary_table; \
print(fold_summary_table(load_colonies('TABLE', ['colony_id', 'source', 'group', 'label', \
'multi_label']), load_config('smoke').split))"

Per class, T is `test_fraction` of the class, L (teacher) `labeled_fraction`, U (student) the
rest. When `test_fraction <= 1/folds` the k folds draw T from k disjoint stratified chunks, so at
10 folds x 10% the test sets of the folds partition the labeled colonies (cross-validation).
`val` (model selection) is carved out of L, so the teacher never trains on it. U also gets every
unlabeled colony and, for the "ML" configurations, every multi-label colony; multi-label colonies
never reach L, val or T -- except with partial labels (method.multi_label_loss=partial): then
`labeled_fraction` of each multi-label kind (`A|B`) joins L, and the rest U in ML configurations. Everything is a pure function of (meta, split config, fold, seed) and
does not depend on the row order of `meta`: rows are worked on in colony_id order.
No Ray, no MLflow here.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ipb.config import SplitConfig

PARTS = ("labeled", "val", "unlabeled", "test")
_EPS = 1e-9


@dataclass(frozen=True, eq=False)
class Split:
    """One fold. Index arrays are sorted integer row positions into the `meta` given."""
    labeled: np.ndarray               # L for the teacher, val excluded
    val: np.ndarray                   # carved out of L, for model selection
    unlabeled: np.ndarray             # U for the student (labels kept only to score pseudo-labels)
    test: np.ndarray                  # T
    classes: list[str]
    fold: int
    seed: int
    counts: dict = field(default_factory=dict)    # part -> {class | multi_label | ... : n}
    warnings: tuple[str, ...] = ()

    def summary(self) -> dict:
        """Counts per part per class (+ multi_label, unlabeled, total) and any warnings."""
        return {"fold": self.fold, "seed": self.seed, "classes": list(self.classes),
                "counts": {p: dict(c) for p, c in self.counts.items()},
                "warnings": list(self.warnings)}

    def selection_problem(self) -> str | None:
        """Why selecting a model on this fold's val set would be meaningless (fewer than 2
        classes in it: its mean TPR is one class's recall, or nothing), else None."""
        val = self.counts.get("val", {})
        present = [c for c in self.classes if val.get(c, 0) > 0]
        if len(present) >= 2:
            return None
        if not val.get("total", 0):
            return (f"fold {self.fold}: the validation set is empty (every class has < 3 "
                    "labeled colonies): there is nothing to select a model on; raise "
                    "split.labeled_fraction or split.val_fraction")
        return (f"fold {self.fold}: the validation set holds {val.get('total', 0)} colonies of "
                f"{len(present)} of {len(self.classes)} classes ({', '.join(present) or 'none'}): "
                "selecting a model on it is meaningless; raise split.labeled_fraction or "
                "split.val_fraction, or set split.allow_weak_val=true to run anyway")


def _rng(seed: int, *keys) -> np.random.Generator:
    # class names are hashed, not enumerated, so adding a class never reshuffles the others
    ent = [int(seed) & 0xFFFFFFFFFFFFFFFF]
    ent += [k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ent))


def _round(x: float) -> int:
    """Round half up (Python's round() is banker's rounding: 2.5 -> 2)."""
    return int(math.floor(x + 0.5 + _EPS))


def _check_config(cfg: SplitConfig, fold: int) -> None:
    k = cfg.folds
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"split.folds must be an integer >= 1, got {k!r}")
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} out of range: allowed 0..{k - 1} (split.folds={k})")
    if not 0.0 < cfg.labeled_fraction <= 1.0:
        raise ValueError(f"split.labeled_fraction must be in (0, 1], got {cfg.labeled_fraction}")
    if not 0.0 < cfg.test_fraction < 1.0:
        raise ValueError(f"split.test_fraction must be in (0, 1), got {cfg.test_fraction}")
    if cfg.labeled_fraction + cfg.test_fraction > 1.0 + _EPS:
        raise ValueError(
            f"split.labeled_fraction ({cfg.labeled_fraction}) + split.test_fraction "
            f"({cfg.test_fraction}) > 1; lower one of them")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"split.val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.group_by not in ("none", "source", "group"):
        raise ValueError(f"split.group_by must be 'none', 'source' or 'group', "
                         f"got {cfg.group_by!r}")


def _prepare(meta: pd.DataFrame, cfg: SplitConfig):
    """Row order (by colony_id), kind per row (0 labeled, 1 multi-label, 2 unlabeled), labels."""
    need = ["colony_id", "label", "multi_label"]
    if cfg.group_by != "none":
        need.append(cfg.group_by)
    missing = [c for c in need if c not in meta.columns]
    if missing:
        raise ValueError(f"colony table is missing column(s) {missing} needed for the split "
                         f"(split.group_by={cfg.group_by!r})")
    ids = meta["colony_id"].astype(str).to_numpy()
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    dup = ids[1:][ids[1:] == ids[:-1]]
    if len(dup):
        raise ValueError(f"colony_id is not unique ({len(dup)} repeats, e.g. {dup[0]!r}); "
                         "re-run `ipb ingest` on a fresh table")
    ml = meta["multi_label"].fillna(False).astype(bool).to_numpy()[order]
    lab = meta["label"].to_numpy(dtype=object)[order]
    has = ~pd.isna(lab)
    kind = np.where(ml, 1, np.where(has, 0, 2))
    labels = np.array([str(x) if h else "" for x, h in zip(lab, has)], dtype=object)
    groups = None
    if cfg.group_by != "none":
        g = meta[cfg.group_by].to_numpy(dtype=object)[order]
        if pd.isna(g[kind == 0]).any():
            raise ValueError(f"column {cfg.group_by!r} has nulls on labeled colonies; fill it or "
                             "set split.group_by=none")
        groups = np.array([str(x) for x in g], dtype=object)
    return order, kind, labels, groups


def _min_count(cfg: SplitConfig, cv: bool) -> int:
    if cv:
        return max(cfg.folds, 2)
    m = 2
    while max(1, _round(cfg.test_fraction * m)) >= m:
        m += 1
    return m


def _too_few(c: str, n: int, need: int, cfg: SplitConfig) -> ValueError:
    return ValueError(
        f"class {c!r} has {n} labeled colonies; split.folds={cfg.folds}, split.test_fraction="
        f"{cfg.test_fraction} need at least {need} (>= 1 test colony in every fold and >= 1 "
        f"labeled colony). Lower split.folds or label more {c!r} colonies.")


def _test_plain(members, c, n, cfg, fold, seed, cv, exact, offset):
    k, tf = cfg.folds, cfg.test_fraction
    if cv:
        chunks = np.array_split(members[_rng(seed, "test", c).permutation(n)], k)
        chunk = chunks[(fold - offset) % k]
        return chunk if exact else chunk[:min(len(chunk), max(1, _round(tf * n)))]
    perm = members[_rng(seed, "test", fold, c).permutation(n)]
    return perm[:max(1, _round(tf * n))]


def _test_grouped(kind, labels, groups, classes, cfg, fold, seed, cv, exact, warn):
    """Whole groups to T, stratified by each group's majority class; returns T row mask."""
    k, tf = cfg.folds, cfg.test_fraction
    lab_rows = np.flatnonzero(kind == 0)
    tab = pd.crosstab(groups[lab_rows], labels[lab_rows])
    # majority class, ties to the first class name (crosstab columns are sorted)
    majority = tab.idxmax(axis=1)
    size = tab.sum(axis=1)
    test_groups: list[str] = []
    global_load = np.zeros(k)
    for s in classes:
        gs = np.array(sorted(majority.index[majority == s]), dtype=object)
        if len(gs) == 0:
            continue
        n_s = int(size[gs].sum())
        target = max(1, _round(tf * n_s))
        if cv:
            order = gs[_rng(seed, "test-groups", s).permutation(len(gs))]
            bins: list[list[str]] = [[] for _ in range(k)]
            load = np.zeros(k)
            for g in order:   # greedy: the emptiest bin of this stratum, then overall
                b = min(range(k), key=lambda i: (load[i], global_load[i], i))
                bins[b].append(g)
                load[b] += size[g]
                global_load[b] += size[g]
            if len(gs) < k:
                warn(f"fold {fold}: only {len(gs)} {cfg.group_by} groups with majority class "
                     f"{s!r} for {k} folds; some folds get none of them in test")
            chosen, got = [], 0
            for g in bins[fold]:
                if not exact and got >= target:
                    break
                chosen.append(g)
                got += size[g]
        else:
            order = gs[_rng(seed, "test-groups", fold, s).permutation(len(gs))]
            chosen, got = [], 0
            for g in order:
                if got >= target:
                    break
                chosen.append(g)
                got += size[g]
        test_groups += chosen
    return np.isin(groups, np.array(test_groups, dtype=object)) & (kind == 0)


def make_split(meta: pd.DataFrame, cfg: SplitConfig, fold: int, seed: int | None = None,
               multi_label: bool = False, partial: bool = False) -> Split:
    """Fold `fold` of `meta` (columns colony_id, label, multi_label [, source, group]).

    seed defaults to `cfg.seed`. multi_label=True adds every multi-label colony to U;
    partial=True first moves `labeled_fraction` of each multi-label kind to L.
    """
    fold = int(fold)
    seed = cfg.seed if seed is None else int(seed)
    _check_config(cfg, fold)
    order, kind, labels, groups = _prepare(meta, cfg)
    classes = _classes(kind, labels)
    k = cfg.folds
    cv = cfg.test_fraction <= 1.0 / k + _EPS
    exact = abs(cfg.test_fraction - 1.0 / k) <= _EPS
    warnings: list[str] = []
    need = _min_count(cfg, cv)
    members_of = {c: np.flatnonzero((kind == 0) & (labels == c)) for c in classes}
    for c in classes:
        if len(members_of[c]) < need:
            raise _too_few(c, len(members_of[c]), need, cfg)

    test_mask = None
    if groups is not None:
        test_mask = _test_grouped(kind, labels, groups, classes, cfg, fold, seed, cv, exact,
                                  warnings.append)
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    offset = 0
    for c in classes:
        members = members_of[c]
        n = len(members)
        if test_mask is None:
            test_c = _test_plain(members, c, n, cfg, fold, seed, cv, exact, offset)
            offset = (offset + n % k) % k    # spread the larger chunks of each class over folds
        else:
            test_c = members[test_mask[members]]
            if len(test_c) == 0:
                warnings.append(f"fold {fold}: class {c!r} has no test colony (its colonies sit "
                                f"in {cfg.group_by} groups of other majority classes)")
        for p, idx in _train_parts(members, test_c, c, cfg, fold, seed, warnings.append).items():
            parts[p].append(idx)
    parts["unlabeled"].append(np.flatnonzero(kind == 2))
    ml_rest = np.flatnonzero(kind == 1)
    if partial:
        ml_rest = _partial_labeled(kind, labels, cfg.labeled_fraction, fold, seed,
                                   parts["labeled"])
    if multi_label:
        parts["unlabeled"].append(ml_rest)
    out, counts = _assemble(parts, order, kind, labels, classes)
    return Split(classes=classes, fold=fold, seed=seed, counts=counts,
                 warnings=tuple(warnings), **out)


def _classes(kind: np.ndarray, labels: np.ndarray) -> list[str]:
    """The single-class labels of the table, refused when fewer than two."""
    classes = sorted(set(labels[kind == 0]))
    if not classes:
        raise ValueError("no labeled single-class colonies in the table (column 'label' is all "
                         "null); label some colonies before splitting")
    if len(classes) < 2:
        # one class trains to loss 0 and scores TPR 1.0: a perfect-looking, meaningless result
        n = int(np.sum(kind == 0))
        raise ValueError(f"the table's labeled single-class colonies are all of one class, "
                         f"{classes[0]!r} ({n} colonies); a classifier needs >= 2 classes: "
                         "label colonies of at least one more class before splitting")
    return classes


def _train_parts(members: np.ndarray, test_c: np.ndarray, c: str, cfg: SplitConfig, fold: int,
                 seed: int, warn) -> dict[str, np.ndarray]:
    """Class c's colonies outside the test part, as {"test", "val", "labeled", "unlabeled"}."""
    n = len(members)
    rest = np.setdiff1d(members, test_c)
    if len(rest) == 0:
        raise ValueError(f"class {c!r} ({n} labeled colonies) has none left for L in fold "
                         f"{fold} after grouping by {cfg.group_by!r}; lower split.folds, "
                         "set split.group_by=none or label more colonies")
    # one permutation per (seed, fold, class), independent of labeled_fraction, so that
    # L at 1% is inside L at 5% inside L at 10% ... (nested labeled-fraction study)
    rest = rest[_rng(seed, "labeled", fold, c).permutation(len(rest))]
    n_lab = max(1, _round(cfg.labeled_fraction * n))
    if n_lab > len(rest):
        warn(f"fold {fold}: class {c!r} wants {n_lab} labeled colonies, only "
             f"{len(rest)} are left after test; all of them go to L")
        n_lab = len(rest)
    n_val = 0
    if cfg.val_fraction > 0:
        if n_lab >= 3:
            n_val = min(n_lab - 1, max(1, _round(cfg.val_fraction * n_lab)))
        else:
            warn(f"fold {fold}: class {c!r} has {n_lab} labeled colonies (< 3); "
                 "no validation colonies for it")
    return {"val": rest[:n_val], "labeled": rest[n_val:n_lab], "unlabeled": rest[n_lab:],
            "test": test_c}


def _partial_labeled(kind: np.ndarray, labels: np.ndarray, lf: float, fold: int, seed: int,
                     labeled: list[np.ndarray]) -> np.ndarray:
    """Moves `lf` of each multi-label kind (`A|B`) into `labeled`; returns the rest."""
    rest = []
    for key in sorted(set(labels[kind == 1])):
        members = np.flatnonzero((kind == 1) & (labels == key))
        members = members[_rng(seed, "labeled-ml", fold, key).permutation(len(members))]
        n_lab = _round(lf * len(members))
        labeled.append(members[:n_lab])
        rest.append(members[n_lab:])
    return np.concatenate(rest) if rest else np.zeros(0, np.int64)


def _assemble(parts: dict[str, list[np.ndarray]], order: np.ndarray, kind: np.ndarray,
              labels: np.ndarray, classes: list[str]):
    """(table row indices per part, sorted and read-only; per-part class counts)."""
    out: dict[str, np.ndarray] = {}
    counts: dict[str, dict[str, int]] = {}
    for p in PARTS:
        idx = np.concatenate(parts[p]).astype(np.int64) if parts[p] else np.zeros(0, np.int64)
        cnt = {c: int(np.sum((kind[idx] == 0) & (labels[idx] == c))) for c in classes}
        cnt["multi_label"] = int(np.sum(kind[idx] == 1))
        cnt["unlabeled"] = int(np.sum(kind[idx] == 2))
        cnt["total"] = int(len(idx))
        counts[p] = cnt
        arr = np.sort(order[idx]).astype(np.int64)
        arr.setflags(write=False)
        out[p] = arr
    return out, counts


def fold_summary_table(meta: pd.DataFrame, cfg: SplitConfig, folds=None, seed: int | None = None,
                       multi_label: bool = False, partial: bool = False) -> pd.DataFrame:
    """Counts per (fold, part) x class (+ multi_label, unlabeled, total); all folds by default."""
    folds = range(cfg.folds) if folds is None else folds
    rows, index = [], []
    for f in folds:
        s = make_split(meta, cfg, f, seed=seed, multi_label=multi_label, partial=partial)
        for p in PARTS:
            rows.append(s.counts[p])
            index.append((int(f), p))
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["fold", "part"]))

import numpy as np
import pandas as pd
import pytest

from ipb.config import SplitConfig
from ipb.data.splits import PARTS, fold_summary_table, make_split

SIZES = {"Spread": 300, "Dense": 120, "Debris": 100, "Differentiated": 23}


def _meta(sizes=SIZES, n_multi=40, n_unlabeled=25, wells=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c, n in sizes.items():
        rows += [dict(label=c, multi_label=False) for _ in range(n)]
    rows += [dict(label=None, multi_label=True) for _ in range(n_multi)]
    rows += [dict(label=None, multi_label=False) for _ in range(n_unlabeled)]
    df = pd.DataFrame(rows)
    df["colony_id"] = [f"{h:016x}" for h in rng.integers(0, 2**62, len(df))]
    df["group"] = [f"well{w:02d}" for w in rng.integers(0, wells, len(df))]
    df["source"] = [f"{g}/img{i % 3}.tif" for i, g in enumerate(df["group"])]
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)


META = _meta()


def _ids(meta, idx):
    return set(meta["colony_id"].iloc[idx])


def _class_count(meta, idx, c):
    return int((meta["label"].iloc[idx] == c).sum())


def test_defaults_proportions_per_class():
    s = make_split(META, SplitConfig(), fold=3)
    assert s.classes == sorted(SIZES)
    for c, n in SIZES.items():
        t = _class_count(META, s.test, c)
        lab = _class_count(META, s.labeled, c) + _class_count(META, s.val, c)
        u = _class_count(META, s.unlabeled, c)
        assert t in (n // 10, -(-n // 10))                 # one of 10 stratified chunks
        assert lab == max(1, int(np.floor(0.1 * n + 0.5)))
        assert t + lab + u == n                            # U is the rest (~80%)
        assert u / n == pytest.approx(0.8, abs=0.06)
        # val is carved out of L: 20% of it, at least 1 once L has >= 3 colonies, else none
        assert s.counts["val"][c] == (max(1, int(np.floor(0.2 * lab + 0.5))) if lab >= 3 else 0)
    assert s.summary()["counts"]["test"]["total"] == len(s.test)


def test_parts_disjoint_sorted_and_ints():
    s = make_split(META, SplitConfig(), fold=0, multi_label=True)
    parts = [getattr(s, p) for p in PARTS]
    for a in parts:
        assert a.dtype.kind == "i" and np.all(np.diff(a) > 0)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(set(allidx.tolist())) == len(META)


def test_test_sets_of_ten_folds_partition_labeled():
    cfg = SplitConfig()
    tests = [make_split(META, cfg, f).test for f in range(cfg.folds)]
    allt = np.concatenate(tests)
    assert len(allt) == len(set(allt.tolist()))
    assert set(allt.tolist()) == set(np.flatnonzero(META["label"].notna().to_numpy()).tolist())
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1   # larger chunks of each class spread over folds


def test_fewer_test_than_one_over_k_still_disjoint_across_folds():
    cfg = SplitConfig(folds=5, test_fraction=0.1)
    tests = [set(make_split(META, cfg, f).test.tolist()) for f in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not tests[i] & tests[j]
    assert len(tests[0]) == sum(int(np.floor(0.1 * n + 0.5)) for n in SIZES.values())


def test_other_test_fraction_uses_per_fold_shuffle():
    cfg = SplitConfig(folds=3, test_fraction=0.5, labeled_fraction=0.2)
    s0, s1 = make_split(META, cfg, 0), make_split(META, cfg, 1)
    assert _class_count(META, s0.test, "Spread") == 150
    assert set(s0.test.tolist()) != set(s1.test.tolist())


def test_determinism_and_seed():
    cfg = SplitConfig()
    a, b = make_split(META, cfg, 2, seed=7), make_split(META, cfg, 2, seed=7)
    for p in PARTS:
        assert np.array_equal(getattr(a, p), getattr(b, p))
    c = make_split(META, cfg, 2, seed=8)
    assert not np.array_equal(a.test, c.test)
    assert not np.array_equal(a.labeled, c.labeled)
    assert make_split(META, SplitConfig(seed=7), 2).test.tolist() == a.test.tolist()


def test_row_order_independent():
    cfg = SplitConfig()
    shuffled = META.sample(frac=1.0, random_state=5).reset_index(drop=True)
    a, b = make_split(META, cfg, 4), make_split(shuffled, cfg, 4)
    for p in PARTS:
        assert _ids(META, getattr(a, p)) == _ids(shuffled, getattr(b, p))


@pytest.mark.parametrize("lf", [0.01, 0.05, 0.10, 0.50, 0.80])
def test_labeled_fractions(lf):
    s = make_split(META, SplitConfig(labeled_fraction=lf), fold=1)
    for c, n in SIZES.items():
        lab = _class_count(META, s.labeled, c) + _class_count(META, s.val, c)
        assert lab == max(1, int(np.floor(lf * n + 0.5)))
        assert _class_count(META, s.labeled, c) >= 1
    if lf == 0.80:   # 80% L + 10% T leaves ~10% U
        u = sum(_class_count(META, s.unlabeled, c) for c in SIZES)
        assert u / sum(SIZES.values()) == pytest.approx(0.1, abs=0.02)


def test_labeled_sets_nest_across_fractions():
    small = make_split(META, SplitConfig(labeled_fraction=0.05), 0)
    big = make_split(META, SplitConfig(labeled_fraction=0.5), 0)
    assert set(np.r_[small.labeled, small.val]) <= set(np.r_[big.labeled, big.val])


def test_multi_label_only_in_u_and_only_when_asked():
    ml = set(np.flatnonzero(META["multi_label"].to_numpy()).tolist())
    unl = set(np.flatnonzero((META["label"].isna() & ~META["multi_label"]).to_numpy()).tolist())
    for flag in (False, True):
        s = make_split(META, SplitConfig(), 0, multi_label=flag)
        for p in ("labeled", "val", "test"):
            assert not set(getattr(s, p).tolist()) & (ml | unl)
        u = set(s.unlabeled.tolist())
        assert unl <= u                                    # unlabeled rows always in U
        assert (ml <= u) if flag else not (ml & u)
        assert s.counts["unlabeled"]["multi_label"] == (len(ml) if flag else 0)


@pytest.mark.parametrize("by", ["group", "source"])
def test_grouping_keeps_groups_out_of_test(by):
    cfg = SplitConfig(folds=5, test_fraction=0.2, group_by=by)
    tests = []
    for f in range(5):
        s = make_split(META, cfg, f)
        g = META[by].to_numpy()
        assert not set(g[np.r_[s.labeled, s.val]]) & set(g[s.test])
        assert len(s.test) > 0
        tests.append(set(s.test.tolist()))
        again = make_split(META.iloc[::-1].reset_index(drop=True), cfg, f)
        assert _ids(META.iloc[::-1].reset_index(drop=True), again.test) == _ids(META, s.test)
    assert sum(len(t) for t in tests) == len(set().union(*tests)) == sum(SIZES.values())


def test_tiny_class_raises_with_name():
    meta = _meta({"Spread": 100, "Dense": 50, "Rare": 4})
    with pytest.raises(ValueError, match=r"'Rare' has 4 .*split\.folds"):
        make_split(meta, SplitConfig(), 0)
    s = make_split(meta, SplitConfig(folds=4, test_fraction=0.25), 0)   # 4 is enough for 4 folds
    assert _class_count(meta, s.test, "Rare") == 1


def test_small_labeled_set_has_no_val_and_warns():
    s = make_split(META, SplitConfig(labeled_fraction=0.05), 0)
    assert s.counts["val"]["Differentiated"] == 0                 # 5% of 23 -> 1 labeled
    assert any("Differentiated" in w for w in s.summary()["warnings"])


def test_config_errors():
    with pytest.raises(ValueError, match=r"allowed 0\.\.9"):
        make_split(META, SplitConfig(), 10)
    with pytest.raises(ValueError, match="labeled_fraction"):
        make_split(META, SplitConfig(labeled_fraction=0.95), 0)
    with pytest.raises(ValueError, match="'group'"):
        make_split(META.drop(columns=["group"]), SplitConfig(group_by="group"), 0)
    with pytest.raises(ValueError, match="colony_id is not unique"):
        make_split(pd.concat([META, META.iloc[:1]]), SplitConfig(), 0)


def test_fold_summary_table():
    cfg = SplitConfig(folds=5, test_fraction=0.2)
    tab = fold_summary_table(META, cfg)
    assert tab.shape[0] == 5 * len(PARTS)
    assert tab.xs("test", level="part")["total"].sum() == sum(SIZES.values())
    assert list(tab.columns[:4]) == sorted(SIZES)


def test_worker_shards_cover_every_row_once():
    """ipb.worker.shard: val/test/unlabeled split over ranks, labeled whole to each."""
    from ipb.worker import shard
    rows = pd.DataFrame({"colony_id": range(7)})
    for part in ("unlabeled", "val", "test"):
        got = [shard(rows, part, r, 3)["colony_id"].tolist() for r in range(3)]
        assert sorted(sum(got, [])) == list(range(7)) and [len(g) for g in got] == [3, 2, 2]
    assert shard(rows, "labeled", 1, 3)["colony_id"].tolist() == list(range(7))


def test_single_class_table_is_refused_with_what_to_do():
    # one class trains to loss 0 and TPR 1.0: a perfect score that says nothing
    meta = _meta({"Spread": 100})
    with pytest.raises(ValueError, match=r"one class, 'Spread' \(100 colonies\).*label "
                                         r"colonies of at least one more class"):
        make_split(meta, SplitConfig(), 0)

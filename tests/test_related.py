"""pytest tests/test_related.py -- the related methods of issue 12 beyond tests/test_methods.py:
every parameter of each phase's network gets a gradient (an empty confidence mask included),
two gloo ranks run the same graph under DDP, the partial-label loss and split, the Hungarian
map, neighbouring patches, GAN top-up and report, and which methods reuse the supervised row."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ipb.config import load_config
from ipb.lineage import teacher_key
from ipb.batches import Batches
from ipb.evaluation import Part
from ipb.methods import create_method
from ipb.methods.base import unwrap
from ipb.methods.partial import candidate_nll, partial_label_loss
from tiny import TINY, tiny_rows

CLASSES = ["A", "B", "C"]
SIZE = 32
NEW = ("fixmatch", "fixmatch_ipb", "abc", "contrastive_clustering", "simtriplet",
       "gan_balanced")
# the network(s) each phase trains: every parameter of them must get a gradient every step
TRAINED = {("fixmatch", "supervised"): ("model",), ("fixmatch", "mpl"): ("model",),
           ("fixmatch_ipb", "supervised"): ("model",), ("fixmatch_ipb", "mpl"): ("model",),
           ("abc", "supervised"): ("model",), ("abc", "mpl"): ("abc_net",),
           ("contrastive_clustering", "clustering"): ("net",),
           ("contrastive_clustering", "supervised"): ("model_ddp",),
           ("simtriplet", "triplet"): ("net",), ("simtriplet", "supervised"): ("model_ddp",),
           ("gan_balanced", "gan"): ("g", "d"), ("gan_balanced", "supervised"): ("model",)}


def parts_for(ml_rows: pd.DataFrame | None = None) -> dict[str, Part]:
    lab = tiny_rows((12, 8, 6), seed=0)
    if ml_rows is not None:
        lab = pd.concat([lab, ml_rows], ignore_index=True)
    return {"labeled": Part.from_rows(lab, CLASSES, SIZE),
            "val": Part.from_rows(tiny_rows((3, 3, 3), seed=1), CLASSES, SIZE),
            "test": Part.from_rows(tiny_rows((3, 3, 3), seed=2), CLASSES, SIZE),
            "unlabeled": Part.from_rows(tiny_rows((30, 12, 4), seed=3), CLASSES, SIZE)}


@pytest.fixture(scope="module")
def parts():
    return parts_for()


def cfg_for(method, *extra):
    return load_config("smoke", [*TINY, f"method.name={method}", f"patch.size={SIZE}",
                                 "model.arch=vgg19", "train.batch_size=12",
                                 "train.unlabeled_batch_size=12", *extra])


def batches(cfg, parts, seed=0):
    b = Batches(cfg, parts, np.random.default_rng(seed), torch.Generator().manual_seed(seed),
                torch.device("cpu"))
    u = parts["unlabeled"]
    b.set_unlabeled_epoch(np.arange(len(u)), u.bank.center_positions(np.arange(len(u))))
    return b


def first_epoch(m, phase):
    return next(e for e in range(m.num_epochs()) if m.phase(e) == phase)


@pytest.mark.parametrize("method", NEW)
def test_every_parameter_gets_a_gradient_in_every_phase(method, parts):
    # threshold 1.0: FixMatch's and ABC's confidence masks are empty, the graph the same
    cfg = cfg_for(method, "method.fixmatch.threshold=1.0")
    torch.manual_seed(0)
    m = create_method(method, cfg, len(CLASSES))
    b = batches(cfg, parts)
    for phase in sorted({m.phase(e) for e in range(m.num_epochs())}):
        epoch = first_epoch(m, phase)
        if epoch and epoch == min(e for e in range(m.num_epochs()) if m.phase(e) == phase):
            m.begin_final_stage(None)
        m.start_epoch(epoch)
        out = m.train_step(b.batch(phase), epoch)
        assert all(np.isfinite(v) for v in out.values()), (phase, out)
        for attr in TRAINED[(method, phase)]:
            missing = [n for n, p in getattr(m, attr).named_parameters() if p.grad is None]
            assert not missing, f"{method}/{phase}: no gradient for {missing[:5]}"


def test_partial_label_loss_teaches_one_of_the_candidates():
    single = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    logits = torch.randn(2, 3)
    assert candidate_nll(logits, single) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))), rel=1e-5)
    both = torch.tensor([[1.0, 1, 0]])
    nll = [float(candidate_nll(torch.tensor([[0.9 * s, 0.9 * (1 - s), 0.1]]).log(), both))
           for s in (0.1, 0.5, 0.9)]
    assert max(nll) - min(nll) < 1e-5            # any split between A and B costs the same
    assert candidate_nll(torch.tensor([[0, 0, 4.0]]), both) > nll[0] + 3   # C costs
    # on a fixed batch: the loss falls, its mass on the candidates rises, C falls
    cand = torch.tensor([[1.0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    x = torch.zeros(4, 3, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.5)
    losses = []
    for _ in range(80):
        loss = partial_label_loss(x, cand)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    p = torch.softmax(x, dim=1)
    assert np.isfinite(losses).all() and losses[-1] < losses[0] * 0.5
    assert p[0, :2].sum() > 0.9 and p[0, 2] < 0.1


def ml_table(n_each=20, seed=4):
    rows = tiny_rows((n_each, n_each, n_each), seed=seed)
    ml = tiny_rows((10, 10), seed=seed + 1)
    ml["label"] = ["A|B"] * 10 + ["A|C"] * 10
    ml["multi_label"] = True
    ml["colony_id"] = [f"m{i:03d}" for i in range(len(ml))]
    return pd.concat([rows, ml], ignore_index=True)


def test_split_puts_multi_label_colonies_in_l_only_with_partial_labels():
    from ipb.data.splits import make_split
    meta = ml_table()
    cfg = load_config("smoke", ["split.folds=5", "split.labeled_fraction=0.5"]).split
    is_ml = meta["multi_label"].to_numpy()
    plain = make_split(meta, cfg, 0, multi_label=True)
    assert not is_ml[plain.labeled].any() and is_ml[plain.unlabeled].sum() == 20
    part = make_split(meta, cfg, 0, multi_label=True, partial=True)
    assert is_ml[part.labeled].sum() == 10           # half of each kind
    assert set(meta["label"].to_numpy()[part.labeled][is_ml[part.labeled]]) == {"A|B", "A|C"}
    assert is_ml[part.unlabeled].sum() == 10 and not is_ml[np.r_[part.val, part.test]].any()
    for p in ("val", "test"):            # single-label parts are untouched
        assert np.array_equal(getattr(plain, p), getattr(part, p))
    only_l = make_split(meta, cfg, 0, multi_label=False, partial=True)
    assert is_ml[only_l.labeled].sum() == 10 and not is_ml[only_l.unlabeled].any()


@pytest.mark.parametrize("method", ["supervised", "ipb"])
def test_partial_labels_train_supervised_and_mpl_teachers(method):
    ml = tiny_rows((6, 6), seed=7)
    ml["label"], ml["multi_label"] = ["A|B"] * 6 + ["B|C"] * 6, True
    parts = parts_for(ml)
    cfg = cfg_for(method, "method.multi_label_loss=partial", "method.mpl.threshold=0.0")
    b = batches(cfg, parts)
    batch = b.batch("mpl")
    assert batch["c_l"].shape == (12, 3) and (batch["y_l"] < 0).any()
    assert torch.allclose(batch["n_l"], torch.tensor([12 + 3, 8 + 6, 6 + 3.0]))
    plain = batches(cfg_for(method), parts_for())
    assert "c_l" not in plain.batch("supervised")       # ignore: the batch as before
    m = create_method(method, cfg, 3)
    epoch = m.num_epochs() - 1
    m.start_epoch(epoch)
    for _ in range(3):
        out = m.train_step(batch, epoch)
        assert all(np.isfinite(v) for v in out.values()), out


def test_sampler_balances_candidate_sets():
    """A draw picks a class uniformly, then a colony by its share of that class (an A|B
    colony is half A, half B): every class is drawn for equally often."""
    ml = tiny_rows((30,), seed=8)
    ml["label"], ml["multi_label"] = "A|B", True
    parts = parts_for(ml)
    b = batches(cfg_for("supervised", "method.multi_label_loss=partial"), parts)
    cand = parts["labeled"].cand.astype(np.float64)
    share = cand / cand.sum(axis=1, keepdims=True)
    per = share / share.sum(axis=0)                      # P(colony | class)
    for_class = (b.labeled_p[:, None] * per / per.sum(axis=1, keepdims=True)).sum(axis=0)
    assert np.allclose(for_class, 1 / 3) and b.n_l.tolist() == [27.0, 23.0, 6.0]


def test_hungarian_map_permutes_the_cluster_head(parts):
    from ipb.methods.contrastive_clustering import hungarian
    counts = np.array([[0, 9, 1], [2, 0, 7], [8, 1, 0]], float)
    assert hungarian(counts).tolist() == [1, 2, 0]
    m = create_method("contrastive_clustering", cfg_for("contrastive_clustering"), 3)
    m.counts.copy_(torch.from_numpy(counts))
    view = m.hungarian_model().eval()
    net = unwrap(m.net).eval()
    x = parts["val"].bank.extract([0, 1], parts["val"].bank.center_positions([0, 1]))
    with torch.no_grad():
        _, c = net(x)
        logits, _ = view(x)
    assert torch.allclose(torch.softmax(logits, 1)[:, [1, 2, 0]], c, atol=1e-5)
    assert set(view.state_dict()) == set(unwrap(m.model).state_dict())    # a plain <arch>


def test_neighbouring_patch_is_in_the_crop_and_moved(parts):
    bank = parts["unlabeled"].bank
    rng = np.random.default_rng(0)
    idx = np.arange(len(bank))
    pos = bank.sample_positions(idx, rng)
    near = bank.neighbour_positions(idx, pos, rng)
    room = (bank.heights[idx] > SIZE) | (bank.widths[idx] > SIZE)
    assert (near >= 0).all() and (near[:, 0] <= bank.heights[idx] - SIZE).all()
    assert (near[:, 1] <= bank.widths[idx] - SIZE).all()
    moved = (near != pos).any(axis=1)
    assert moved[room].mean() > 0.8 and not moved[~room].any()
    assert (np.abs(near - pos).max(axis=1) <= SIZE).all()


def test_gan_tops_up_minorities_and_reports_a_grid_and_realism(parts):
    from ipb.engine import run_trial
    out = run_trial(cfg_for("gan_balanced", "train.steps_per_epoch=2", "train.epochs=1"),
                    parts, CLASSES, log=lambda s: None)
    m = out["metrics"]
    assert m["gan.generated.A"] == 0 and m["gan.generated.B"] == 4 and m["gan.generated.C"] == 6
    assert 0.0 <= m["gan.realism_acc"] <= 1.0
    png = out["artifacts"]["gan_samples_per_class.png"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"held_out_accuracy" in \
        out["artifacts"]["gan_realism.json"]
    # the top-up: the majority class is never replaced, a minority at g / (n + g)
    method = create_method("gan_balanced", cfg_for("gan_balanced"), 3)
    method.n_l = torch.tensor([12.0, 8, 6])
    method.pool = [torch.zeros(0, 1, SIZE, SIZE), torch.full((4, 1, SIZE, SIZE), 7.0),
                   torch.full((6, 1, SIZE, SIZE), 7.0)]
    y = torch.tensor([0, 1, 2] * 400)
    x = method._top_up({"x_l": torch.zeros(1200, 1, SIZE, SIZE), "y_l": y})["x_l"]
    swapped = x.flatten(1)[:, 0] == 7.0
    assert not swapped[y == 0].any()
    assert abs(swapped[y == 1].float().mean() - 4 / 12) < 0.06
    assert abs(swapped[y == 2].float().mean() - 6 / 12) < 0.06


def test_which_methods_start_from_the_supervised_row():
    key = {m: teacher_key(load_config("study", [f"method.name={m}"]))
           for m in ("mpl", "ipb", "fixmatch", "fixmatch_ipb", "abc", "gan_balanced",
                     "simtriplet", "contrastive_clustering", "simclr")}
    assert key["mpl"] == key["ipb"] == key["fixmatch"] == key["fixmatch_ipb"] == key["abc"] \
        is not None
    assert key["gan_balanced"] is key["simtriplet"] is key["contrastive_clustering"] is None
    partial = teacher_key(load_config("study", ["method.name=ipb",
                                                "method.multi_label_loss=partial"]))
    assert partial not in (None, key["ipb"])     # its teacher trains on multi-label colonies


def _ddp_worker(rank: int, world: int, port: int, methods, errors) -> None:
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ipb.engine import run_trial
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        parts = parts_for()
        for method in methods:
            cfg = cfg_for(method, "train.steps_per_epoch=2", "train.epochs=1",
                          "method.pretext.epochs=1", "method.teacher_pretrain_epochs=1")
            out = run_trial(cfg, parts, CLASSES, wrap=lambda m: DDP(
                m, find_unused_parameters=False), rank=rank, world=world, log=lambda s: None)
            flat = torch.cat([p.detach().flatten() for p in out["model"].parameters()])
            both = [torch.zeros_like(flat) for _ in range(world)]
            dist.all_gather(both, flat)
            assert torch.equal(both[0], both[1]), f"{method}: ranks diverged"
    except BaseException as e:       # noqa: BLE001 -- reported to the parent
        errors.put(f"rank {rank}: {type(e).__name__}: {e}")
    finally:
        dist.barrier()
        dist.destroy_process_group()
    # no interpreter finalisation: gloo threads still holding DDP's work objects then abort the
    # process now and then ("terminate called without an active exception", pytorch#179291);
    # what the rank has to say is already in the queue
    os._exit(0)


def test_two_gloo_ranks_run_the_same_graph_and_stay_in_sync():
    """DDP with find_unused_parameters=False (as Ray Train wraps them): a parameter without a
    gradient, or ranks running different graphs, fails or diverges here."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, NEW, errors), nprocs=2, start_method="spawn")
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, problems


def test_related_rows_are_listed_and_paired_with_their_teachers():
    """`ipb train --help`, the README and sweeps/baselines.py name every registered method;
    the study's --related rows pair each teacher-reusing row with a supervised row, and leave
    the default study as it was."""
    import importlib.util
    from pathlib import Path

    from ipb.cli import build_parser
    from ipb.methods import list_methods
    from ipb.sweep import expand
    root = Path(__file__).resolve().parents[1]
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    help_text = train.format_help().replace("\n", " ").replace("  ", " ")
    readme = (root / "README.md").read_text()
    mods = {}
    for name in ("baselines", "study"):
        spec = importlib.util.spec_from_file_location(name, root / "sweeps" / f"{name}.py")
        mods[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    for m in list_methods():
        assert m in help_text and f"`{m}`" in readme and m in mods["baselines"].METHODS, m
    cfg = load_config("study")
    plain = mods["study"].configurations(cfg)
    rows = mods["study"].configurations(cfg, related=True)
    assert rows[:len(plain)] == plain and len(rows) == len(plain) + 7
    trials = expand(cfg, rows)
    sup = {teacher_key(t.cfg) for t in trials if t.cfg.method.name == "supervised"}
    reusing = [t for t in trials if t.cfg.method.name != "supervised" and teacher_key(t.cfg)]
    assert {t.cfg.method.name for t in reusing} >= {"fixmatch", "abc", "ipb"}
    assert all(teacher_key(t.cfg) in sup for t in reusing)
    assert len({t.label for t in expand(cfg, mods["baselines"].configurations(cfg))}) == \
        len(mods["baselines"].configurations(cfg))

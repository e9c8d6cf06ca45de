"""python benchmarks/sweep.py [--epochs 4] [--steps 40] [--width 0.25] [--rounds 1] [--keep DIR]

Throughput of a Ray Tune grid sweep (ipb.sweep.run_grid) on this machine: 2 trials one at a
time (sweep.max_concurrent=1) against 2 other trials (other seeds, so neither is skipped as
finished) two at a time (max_concurrent=2), each trial = 1 Ray Train worker x 1 CPU running a
smoke-sized supervised vgg19 at patch 32 on a tiny synthetic colony table (tests/tiny.py) in a
temp dir, embedded local Ray (address="local", num_cpus=2) and a temp SQLite MLflow store. With
max_concurrent=2 run_grid starts a local `mlflow server` in front of the store (one writer per
store): that start-up is part of the concurrent sweep's time.

Both sweeps are timed as whole `run_grid` calls (Ray is started before either; parent run,
trials, the report logged at the end). speedup = time(sequential) / time(concurrent), summed
over --rounds pairs run in ABBA order (seq, conc, conc, seq, ...) against drifting load.
Per-trial overhead of Tune + Train start-up, from the sequential sweep's MLflow runs: a trial's
wall time (end of the previous trial's run, or the sweep call, to the end of its run) minus its
training time measured inside the worker (the sum of its per-epoch `time.epoch` metrics), split
into "before the run" (Tune trial start, reading/splitting the table) and "in the run, not
epochs" (TorchTrainer controller and worker start, dataset shards, final test, checkpoint,
artifacts). Then the ceiling: the same training loop in 2 plain processes (no Ray, no MLflow) at
once vs one after another, i.e. what the 2 CPUs give pure compute on this machine.
Last line: `sweep concurrency speedup <x>x, per-trial overhead <s>s, compute ceiling <y>x`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ipb.machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def trial_rows(uri: str, experiment: str, parent: str) -> list[dict]:
    """One dict per child run: start/end (s since epoch), sum of time.epoch, status."""
    from ipb import tracking
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment).experiment_id
    rows = []
    for r in c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'"):
        epochs = c.get_metric_history(r.info.run_id, "time.epoch")
        rows.append({"name": r.info.run_name, "status": r.info.status,
                     "start": r.info.start_time / 1000, "end": (r.info.end_time or 0) / 1000,
                     "train": sum(m.value for m in epochs), "epochs": len(epochs)})
    return sorted(rows, key=lambda r: r["start"])


def sweep(label: str, cfg, concurrent: int, seeds: list[int], table: Path) -> dict:
    from ipb.config import apply
    from ipb.sweep import run_grid
    c = apply(cfg, {"sweep.max_concurrent": concurrent, "sweep.seeds": seeds})
    load0 = os.getloadavg()[0]
    t0 = time.time()
    out = run_grid(label, c, [{"method.name": "supervised"}], table=table, progress=False)
    t1 = time.time()
    rows = trial_rows(cfg.tracking.uri, out["experiment"], out["parent_run_id"])
    bad = [r for r in rows if r["status"] != "FINISHED"]
    if len(rows) != 2 or bad:
        raise RuntimeError(f"{label}: expected 2 FINISHED trial runs, got "
                           f"{[(r['name'], r['status']) for r in rows]}; see {cfg.train.storage}")
    prev = t0
    for r in sorted(rows, key=lambda r: r["end"]):
        r["before_run"] = r["start"] - prev
        r["in_run_other"] = (r["end"] - r["start"]) - r["train"]
        r["wall"] = r["end"] - prev          # meaningful for the sequential sweep
        prev = r["end"] if concurrent == 1 else t0
    return {"label": label, "concurrent": concurrent, "t0": t0, "time": t1 - t0,
            "tail": t1 - max(r["end"] for r in rows), "rows": rows,
            "load": (load0, os.getloadavg()[0])}


CEILING_CODE = """
import sys, time, torch
from ipb.config import from_dict
from ipb.data.splits import make_split
from ipb.data.table import load_colonies
from ipb.batches import patch_size
from ipb.engine import Part, run_trial
import json
cfg = from_dict(json.loads(sys.argv[1]))
torch.set_num_threads(cfg.train.cpus_per_worker)
rows = load_colonies(cfg.data.table)
split = make_split(rows, cfg.split, fold=cfg.train.fold)
parts = {p: Part.from_rows(rows.iloc[getattr(split, p)].reset_index(drop=True), split.classes,
                           patch_size(cfg)) for p in ("labeled", "val", "test", "unlabeled")}
t0 = time.time()
run_trial(cfg, parts, split.classes, log=lambda s: None)
print(time.time() - t0)
"""


def ceiling(cfg) -> dict:
    """The same trial's training loop (ipb.engine.run_trial: no Ray, no MLflow) in 2 plain
    processes at once vs one after another: what this machine's 2 CPUs give pure compute,
    i.e. the best a sweep could reach if Tune/Train/MLflow start-up cost nothing."""
    import json
    import subprocess
    from ipb.config import to_dict
    arg = json.dumps(to_dict(cfg))

    def start():
        return subprocess.Popen([sys.executable, "-c", CEILING_CODE, arg], stdout=subprocess.PIPE,
                                text=True)
    t0 = time.time()
    seq = [float(start().communicate()[0]) for _ in range(2)]
    t_seq = time.time() - t0
    t0 = time.time()
    procs = [start() for _ in range(2)]
    conc = [float(p.communicate()[0]) for p in procs]
    t_conc = time.time() - t0
    return {"seq": seq, "conc": conc, "t_seq": t_seq, "t_conc": t_conc,
            "train_ratio": sum(seq) / max(conc), "wall_ratio": t_seq / t_conc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40, help="steps per epoch")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=1,
                    help="pairs of sweeps, in the order seq,conc / conc,seq / ... (ABBA) so "
                         "that drifting machine load hits both alike; fresh seeds each")
    ap.add_argument("--keep", help="keep the temp dir (table, Ray results, MLflow db) here")
    args = ap.parse_args()
    print(describe(), flush=True)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ipb-bench-sweep-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        measure(args, tmp)
    finally:       # a failed or interrupted run too: its table, Ray results and MLflow store
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, tmp: Path) -> None:
    """The sweeps and the ceiling, everything under `tmp`; prints the last line."""
    from ipb.config import load_config
    from ipb.runtime import init_ray
    from tiny import write_tiny_table

    os.environ.pop("MLFLOW_TRACKING_URI", None)       # the temp store below, nothing else
    table = write_tiny_table(tmp / "table")
    cfg = load_config("smoke", [
        f"data.table={table}", "method.name=supervised", "model.arch=vgg19",
        f"model.width={args.width}", "patch.size=32", f"train.epochs={args.epochs}",
        f"train.steps_per_epoch={args.steps}", "train.num_workers=1", "train.cpus_per_worker=1",
        "split.folds=5", "split.labeled_fraction=0.3", "sweep.folds=[0]",
        f"train.storage={tmp}/ray", f"tracking.uri=sqlite:///{tmp}/mlflow.db"])
    t0 = time.time()
    init_ray(num_cpus=2)
    import ray
    print(f"sweep benchmark: 2 trials sequential vs 2 concurrent; trial = supervised "
          f"{cfg.model.arch} width {cfg.model.width}, patch {cfg.patch.size}, {args.epochs} "
          f"epochs x {args.steps} steps, batch {cfg.train.batch_size}, 1 Ray Train worker x "
          f"1 CPU; Ray {ray.__version__} local, {ray.cluster_resources().get('CPU')} CPUs "
          f"(started in {time.time() - t0:.1f}s); MLflow sqlite in {tmp}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    runs: list[dict] = []
    for r in range(args.rounds):
        for key in (("seq", "conc") if r % 2 == 0 else ("conc", "seq")):
            concurrent, seeds = (1, [4 * r, 4 * r + 1]) if key == "seq" else \
                (2, [4 * r + 2, 4 * r + 3])
            s = sweep(f"bench-{key}-r{r}", cfg, concurrent, seeds, table)
            runs.append(s)
            print(f"  {s['label']}: {s['time']:.1f}s (load {s['load'][0]:.2f} -> "
                  f"{s['load'][1]:.2f})", flush=True)
    seqs = [s for s in runs if s["concurrent"] == 1]
    concs = [s for s in runs if s["concurrent"] == 2]
    print(f"\n{'sweep':<15}{'trial':<42}{'start':>7}{'end':>7}{'before':>8}{'run-ep':>8}"
          f"{'train':>7}{'wall':>7}")
    for s in runs:
        for r in s["rows"]:
            wall = f"{r['wall']:7.1f}" if s["concurrent"] == 1 else f"{'-':>7}"
            print(f"{s['label']:<15}{r['name'][-41:]:<42}{r['start'] - s['t0']:7.1f}"
                  f"{r['end'] - s['t0']:7.1f}{r['before_run']:8.1f}{r['in_run_other']:8.1f}"
                  f"{r['train']:7.1f}{wall}")
        print(f"{s['label']:<15}{'whole run_grid call (report tail ' + format(s['tail'], '.1f') + 's)':<42}"
              f"{'':>7}{s['time']:7.1f}")
    rows = [r for s in seqs for r in s["rows"]]
    overhead = statistics.mean(r["wall"] - r["train"] for r in rows)
    t_seq, t_conc = sum(s["time"] for s in seqs), sum(s["time"] for s in concs)
    speedup = t_seq / t_conc
    print("\nstart/end in s from the run_grid call; before = until its MLflow run starts "
          "(Tune trial, table split); run-ep = MLflow run time minus training epochs "
          "(Train start-up, final test, checkpoint, artifacts); train = sum of time.epoch.")
    for name, group in (("sequential", seqs), ("concurrent", concs)):
        for s in group:
            starts = sorted(r["start"] for r in s["rows"])
            ends = sorted(r["end"] for r in s["rows"])
            print(f"{name} {s['label']}: {s['time']:.1f}s, training "
                  f"{' + '.join(format(r['train'], '.1f') for r in s['rows'])}s, both runs open "
                  f"together {max(0.0, ends[0] - starts[-1]):.1f}s, load "
                  f"{s['load'][0]:.2f} -> {s['load'][1]:.2f}")
    print(f"throughput: {2 * len(seqs)} trials in {t_seq:.1f}s sequential vs "
          f"{2 * len(concs)} in {t_conc:.1f}s concurrent; per round: " + ", ".join(
              f"{a['time'] / b['time']:.2f}x" for a, b in zip(seqs, concs)))
    print(f"per-trial overhead (sequential sweeps, wall - training): "
          f"{', '.join(format(r['wall'] - r['train'], '.1f') for r in rows)}s; "
          f"load average now {os.getloadavg()[0]:.2f}")
    ray.shutdown()
    c = ceiling(cfg)
    print(f"ceiling without Ray/MLflow (2 plain processes running the same training loop): "
          f"training {' + '.join(format(x, '.1f') for x in c['seq'])}s one after another vs "
          f"{' / '.join(format(x, '.1f') for x in c['conc'])}s at once; compute speedup "
          f"{c['train_ratio']:.2f}x (processes incl. imports {c['wall_ratio']:.2f}x)")
    print(f"sweep concurrency speedup {speedup:.2f}x, per-trial overhead {overhead:.1f}s, "
          f"compute ceiling {c['train_ratio']:.2f}x")


if __name__ == "__main__":
    main()

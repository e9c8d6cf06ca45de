"""python benchmarks/object_store.py [--trials 4] [--colonies 3000] [--keep DIR]

Object-store memory of the head while a grid sweep runs: one trial alone, then `--trials`
trials at once (sweep.max_concurrent), each a smoke-sized supervised vgg19 of one epoch (1
Ray Train worker x 1 CPU) on a synthetic colony table (tests/tiny.py) of about `--colonies`
colonies in a temp dir, embedded local Ray (address="local", num_cpus=--trials) and a temp
SQLite MLflow store. The head's raylet is asked for its store's bytes in use every 0.1 s (after
the previous sweep's objects are freed); the peak is what the sweep's data cost the head. A sweep
that puts its table in the object store once holds about one table whatever max_concurrent is;
one that puts a copy per trial holds about `--trials` tables.
Last line: `head object store: 1 trial <a> MiB, <n> concurrent <b> MiB (<b/a>x), table <t> MiB`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from ipb.machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MiB = 2**20


def store_bytes_used(ray) -> int:
    """Bytes in use in the object store of the node this driver runs on (the head)."""
    from ray._private.internal_api import node_stats
    node = ray._private.worker.global_worker.node
    return node_stats(node.node_ip_address, node.node_manager_port,
                      include_memory_info=False).store_stats.object_store_bytes_used


def settle(ray, timeout: float = 60, still: float = 5) -> int:
    """Wait until the store has not changed for `still` seconds (a finished sweep's objects
    are freed asynchronously, after its actors exit); returns the bytes still in use."""
    last, since, deadline = store_bytes_used(ray), time.time(), time.time() + timeout
    while time.time() < deadline and time.time() - since < still:
        time.sleep(0.5)
        now = store_bytes_used(ray)
        if now != last:
            last, since = now, time.time()
    return last


class Peak:
    """Samples store_bytes_used in a thread until stopped; `peak` is the largest sample."""

    def __init__(self, ray, every: float = 0.1):
        self.ray, self.every, self.peak, self.done = ray, every, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, store_bytes_used(self.ray))
            time.sleep(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--colonies", type=int, default=3000)
    ap.add_argument("--keep", help="work in DIR and keep it (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    print(describe(), flush=True)
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="ipb-osbench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        import pyarrow.parquet as pq
        import ray

        from ipb.config import apply, load_config
        from ipb.runtime import start_local
        from ipb.sweep import run_grid
        from tiny import write_tiny_table
        n = args.colonies // 6
        table = write_tiny_table(tmp / "table", n_per_class=(2 * n, 2 * n, n), n_unlabeled=n,
                                 size=48)
        table_mib = sum(pq.read_table(f, columns=["crop", "mask"]).nbytes
                        for f in (table / "colonies").glob("*.parquet")) / MiB
        cfg = load_config("smoke", [
            f"data.table={table}", "method.name=supervised", "model.arch=vgg19",
            "patch.size=32", "train.epochs=1", "train.steps_per_epoch=1",
            "train.num_workers=1", "split.folds=5", "sweep.folds=[0]",
            f"train.storage={tmp}/ray", f"tracking.uri=sqlite:///{tmp}/mlflow.db"])
        start_local(ray, address="local", num_cpus=args.trials, include_dashboard=False,
                    log_to_driver=False, logging_level="WARNING",
                    object_store_memory=max(400, int(8 * table_mib)) * MiB)
        peaks = {}
        for k, concurrent in enumerate((1, args.trials)):
            seeds = [100 * (k + 1) + s for s in range(concurrent)]   # never already finished
            c = apply(cfg, {"sweep.max_concurrent": concurrent, "sweep.seeds": seeds})
            before = settle(ray)
            t0 = time.time()
            with Peak(ray) as p:
                run_grid(f"osbench{concurrent}", c, [{}], table=table, progress=False)
            peaks[concurrent] = p.peak / MiB
            print(f"{concurrent} trial(s) at once: head object store peak "
                  f"{peaks[concurrent]:.1f} MiB ({before / MiB:.1f} MiB in use before) = "
                  f"{peaks[concurrent] / table_mib:.1f} tables ({time.time() - t0:.0f}s)",
                  flush=True)
        one, many = peaks[1], peaks[args.trials]
        print(f"head object store: 1 trial {one:.1f} MiB, {args.trials} concurrent "
              f"{many:.1f} MiB ({many / max(one, 1e-9):.2f}x), table {table_mib:.1f} MiB")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""pytest tests/test_stop.py -- a command's stop (ipb/stop.py): deferred over MLflow writes, raised
again where an extension swallowed it. In this process, no Ray; the handlers are restored."""
from __future__ import annotations

import signal

import pytest

from ipb import stop


@pytest.fixture
def command():
    """This process as an ipb command for the test (`stop.command()`, as `ipb` runs one), from
    Python's default SIGINT handler; pytest's own handlers are put back afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)     # as a command starts
    try:
        with stop.command():
            yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def test_a_stop_during_a_deferred_block_is_raised_when_it_ends(command):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with stop.deferred():
            signal.raise_signal(signal.SIGTERM)
            done.append("the write finished")
    assert done == ["the write finished"]
    assert stop.exit_code() == 143


def test_a_second_signal_stops_at_once_and_nested_blocks_raise_at_the_outer_end(command):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with stop.deferred():
            with stop.deferred():
                signal.raise_signal(signal.SIGINT)
                done.append("inner")
            done.append("outer")       # still deferred: the outer write is under way
            signal.raise_signal(signal.SIGINT)   # pressed again: no more waiting
            done.append("never")
    assert done == ["inner", "outer"]
    assert stop.exit_code() == 130


def test_a_block_that_raises_during_a_stop_raises_the_stop_from_its_error(command):
    """Not later, in somebody's cleanup: a run's FAILED status cut between its two writes stayed
    RUNNING (found by review)."""
    with pytest.raises(KeyboardInterrupt) as stopped:
        with stop.deferred():
            signal.raise_signal(signal.SIGTERM)
            raise ValueError("the write failed")
    assert isinstance(stopped.value.__cause__, ValueError)
    with stop.deferred():          # raised once: the cleanup that follows is not cut
        pass


def test_a_command_forgets_its_stop_and_puts_the_handlers_back(tmp_path, monkeypatch):
    """`ipb.cli.main` run in-process (a test, a notebook) and stopped by a SIGTERM it swallowed
    at its very end: it says so and returns 143 (not 0), and afterwards nothing of it is left:
    a later synthesize in the same process ran into a stale stop (found by review)."""
    from ipb.cli import main
    from ipb.config import SynthConfig
    from ipb.data import synth
    real = synth.synthesize

    def swallowing(*args, **kwargs):
        out = real(*args, **kwargs)
        try:                       # lost after the last check, e.g. decoding the last image
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            pass
        return out
    pytests = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # as a command starts (earlier tests in this process may have left another handler, which
    # a command leaves alone: in the full suite it took the SIGTERM and main returned 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    handlers = {s: signal.getsignal(s) for s in pytests}
    monkeypatch.setattr(synth, "synthesize", swallowing)
    try:
        assert main(["synth", "--out", str(tmp_path / "a"), "--wells", "2", "--size",
                     "256"]) == 143
        assert {s: signal.getsignal(s) for s in handlers} == handlers
        assert not stop.swallowed()
        monkeypatch.undo()
        stop.check()
        synth.synthesize(tmp_path / "b", SynthConfig(wells=2, size=256), progress=False)
    finally:
        for s, h in pytests.items():
            signal.signal(s, h)


def test_check_raises_a_stop_an_extension_swallowed(command):
    stop.check()                       # nothing requested: nothing raised
    try:                               # e.g. imagecodecs' Cython _readable_input
        signal.raise_signal(signal.SIGTERM)
    except KeyboardInterrupt:
        pass
    with pytest.raises(KeyboardInterrupt):
        stop.check()


def test_outside_a_command_nothing_is_recorded_or_deferred():
    """A notebook that starts Ray through ipb (init_ray installs the SIGTERM handler only):
    its Ctrl-C is raised at once and leaves nothing behind for a later check()."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    state = dict(stop._STOP)
    stop._STOP.update(command=False, pending=False, raised=False)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop.install()
    try:
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            with stop.deferred():
                signal.raise_signal(signal.SIGTERM)
                pytest.fail("not deferred outside a command")
        stop.check()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        stop._STOP.update(state)


def test_tune_handlers_are_undone_after_a_fit(command):
    """Ray Tune's fit leaves its SIGINT handler installed after a run that was not stopped
    (found when these tests ran after the sweep tests: Ctrl-C went to a finished Tune run)."""
    def tune_handler(signum, frame):
        pass
    with stop.tune_handlers_undone():
        signal.signal(signal.SIGINT, tune_handler)
        signal.signal(signal.SIGUSR1, tune_handler)
    assert signal.getsignal(signal.SIGINT) is stop._on_int
    assert signal.getsignal(signal.SIGUSR1) is not tune_handler


def test_synth_stops_at_the_next_well_when_a_codec_swallowed_the_stop(command, tmp_path,
                                                                      monkeypatch):
    """The CI failure: SIGTERM landed inside tifffile's zlib codec (imagecodecs), which dropped
    the KeyboardInterrupt, and `ipb synth` wrote all 400 wells and exited 0."""
    from ipb.config import SynthConfig
    from ipb.data import synth
    write = synth._write_well
    calls = []

    def swallowing(*args):
        calls.append(args[2])
        if len(calls) == 2:
            try:
                signal.raise_signal(signal.SIGTERM)
            except KeyboardInterrupt:
                pass
        return write(*args)
    monkeypatch.setattr(synth, "_write_well", swallowing)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(tmp_path / "s", SynthConfig(wells=20, size=256), progress=False)
    assert calls == [0, 1]


def test_a_sqlite_write_interrupted_by_a_stop_finishes_before_the_stop(
        command, tmp_path, monkeypatch):
    """The CI failure: SIGTERM inside log_batch's transaction left the SQLite store locked; the
    run's KILLED status then failed after 20 s ("database is locked") and the command exited 1
    with a traceback. Now the write ends first (its metric is there), then the stop is raised,
    and the next write goes through."""
    from mlflow.entities import Metric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from ipb import tracking
    uri = f"sqlite:///{tmp_path}/m.db"
    c = tracking.client(uri)
    run = c.create_run(c.create_experiment("stop"))
    run_id = run.info.run_id
    inner = SqlAlchemyStore._update_latest_metrics_if_necessary

    def mid_transaction(self, *args, **kwargs):      # where CI's SIGTERM landed
        signal.raise_signal(signal.SIGTERM)
        return inner(self, *args, **kwargs)
    monkeypatch.setattr(SqlAlchemyStore, "_update_latest_metrics_if_necessary", mid_transaction)
    with pytest.raises(KeyboardInterrupt):
        c.log_batch(run_id, metrics=[Metric("train.loss", 1.0, 0, 1)])
    monkeypatch.undo()
    import copy
    import pickle
    other = pickle.loads(pickle.dumps(copy.copy(tracking.client(uri))))   # another connection
    import time
    t0 = time.time()
    other.set_terminated(run_id, status="KILLED")
    assert time.time() - t0 < 5, "the store stayed locked"
    got = other.get_run(run_id)
    assert got.info.status == "KILLED"
    assert got.data.metrics["train.loss"] == 1.0


def test_ending_a_run_is_not_cut_between_its_writes(command, tmp_path, monkeypatch):
    """A stop during end_run's error tag (a trial that failed, being ended FAILED) is raised
    after its status is written too, not between the two (the run stayed RUNNING)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from ipb import tracking
    from ipb.config import load_config
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = load_config("smoke", [f"tracking.uri={uri}"])
    c = tracking.client(uri)
    run_id = c.create_run(c.create_experiment("stop")).info.run_id
    set_tag = SqlAlchemyStore.set_tag

    def stopped_during(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return set_tag(self, *args, **kwargs)
    monkeypatch.setattr(SqlAlchemyStore, "set_tag", stopped_during)
    with pytest.raises(KeyboardInterrupt):
        tracking.end_run(cfg, run_id, "FAILED", error="RuntimeError: the trial failed")
    monkeypatch.undo()
    run = c.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["ipb.error"].startswith("RuntimeError")

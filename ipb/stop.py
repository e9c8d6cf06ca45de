"""Stopping a command (Ctrl-C, SIGTERM): one line, exit 130 / 143, never lost, never half a write.

    kill <pid of `ipb train` or `ipb synth`>   # "ipb train: stopped (SIGTERM)", exit 143

A stop is a KeyboardInterrupt raised wherever the main thread happens to be when the signal
comes. Measured, that went wrong in two places, and this module is the answer to both:
- inside an MLflow write to a SQLite store (`ipb train`, inline, 1 stop in 16): the
  interrupted transaction kept the database locked, the system-metrics flush and the run's
  KILLED status then waited 20 s each and failed ("database is locked"), and the command ended
  FAILED with a traceback and exit 1. MLflow writes now run under `deferred()`: a stop that
  comes during one is raised when it ends (a second Ctrl-C / SIGTERM stops at once);
- inside third-party extensions that swallow exceptions (imagecodecs' Cython
  `_readable_input` and its lazy codec import, which tifffile calls for every zlib chunk:
  `ipb synth` wrote all 400 wells and exited 0 after SIGTERM, 3 stops in 150): the stop is
  recorded, and long loops (a synthetic well, a training step, an image to segment or
  predict) call `check()`, which raises a stop whose KeyboardInterrupt was lost.
The bookkeeping is the command's only (`with command():`, around `ipb`'s and the sweep
scripts' main): a notebook that starts Ray through ipb, or runs a command in-process, keeps its
own Ctrl-C, and nothing of a command's stop outlives the command.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

# what stopped the command (its exit code is 128 + it); whether the process is an ipb command;
# a stop requested, raised (as a KeyboardInterrupt: it may have been lost since); how many
# MLflow writes are under way in the main thread
_STOP = {"signal": signal.SIGINT, "command": False, "pending": False, "raised": False,
         "deferred": 0}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise(cause: BaseException | None = None) -> None:
    _STOP["raised"] = True
    raise KeyboardInterrupt from cause


@contextlib.contextmanager
def _handlers_kept(*signals: int):
    """The handlers of `signals` (in the main thread) put back when the block ends."""
    kept = {s: signal.getsignal(s) for s in signals} if _main_thread() else {}
    try:
        yield
    finally:
        for s, handler in kept.items():
            if handler is not None:       # None: installed from C, which Python cannot put back
                signal.signal(s, handler)


def _stop() -> None:
    """The stop: now, or when the MLflow write under way ends; a second signal stops at once
    (a write that hangs, e.g. on an unreachable tracking server, is not waited for twice)."""
    again = _STOP["pending"]
    if _STOP["command"]:
        _STOP["pending"] = True
        if _STOP["deferred"] and not again:
            return
    _raise()


def _on_int(signum, frame) -> None:
    _STOP["signal"] = signal.SIGINT
    _stop()


def _on_term(signum, frame) -> None:
    """SIGTERM (`kill`, a scheduler, `ray job stop`, a container stop) takes Ctrl-C's path:
    the runs ended KILLED, one line and exit code 143, instead of Ray's C++ handler dumping
    its stack."""
    _STOP["signal"] = signal.SIGTERM
    handler = signal.getsignal(signal.SIGINT)
    if handler in (_on_int, signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL):
        # also where SIGINT is ignored (`nohup ipb train ... &` from a script, some
        # schedulers): re-sending a SIGINT was lost there, and the process trained on
        _stop()
    elif callable(handler):        # Tune's own in a sweep: it stops the trials, then raises
        handler(signal.SIGINT, frame)
    else:                          # installed from C: deliver the signal itself
        os.kill(os.getpid(), signal.SIGINT)


def install(command: bool = False) -> None:
    """SIGTERM as Ctrl-C, in the main thread; `command`: this process runs an ipb command now
    (its stops are recorded, deferred over MLflow writes and raised again by `check()`; see
    `command()`). Installed again after ray.init, whose own SIGTERM handler dumps a stack. A
    SIGINT that is ignored stays ignored; one that Tune or a notebook handles is left to them."""
    if not _main_thread():      # e.g. a test's worker thread
        return
    if command:
        _STOP.update(command=True, pending=False, raised=False, signal=signal.SIGINT)
        # a parent that blocked them (some process supervisors) would make `kill` a no-op
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_int)
    signal.signal(signal.SIGTERM, _on_term)


@contextlib.contextmanager
def command():
    """The body of an ipb command: the stop's handlers and bookkeeping for its duration; the
    handlers from before are put back and the stop forgotten at its end (a test or a notebook
    that runs `ipb.cli.main` in-process and goes on was stopped later by a stale stop)."""
    if not _main_thread():
        yield
        return
    with _handlers_kept(signal.SIGINT, signal.SIGTERM):
        install(command=True)
        try:
            yield
        finally:
            _STOP.update(command=False, pending=False, raised=False, deferred=0)


def swallowed() -> bool:
    """Whether the command's stop was requested and never reached it (the command is ending
    normally): a stop lost after the last `check()`, e.g. while decoding the last image."""
    return _STOP["pending"] and _STOP["command"]


@contextlib.contextmanager
def tune_handlers_undone():
    """Around a Tuner.fit in the main thread: the signal handlers from before it are put back
    after it. Ray Tune installs its own SIGINT (and SIGUSR1) handler and keeps it after a run
    that was not stopped, so the next Ctrl-C or SIGTERM (during the sweep's report, or in the
    next sweep of `ipb run`) went to the finished run's handler, which printed "ending Ray Tune
    run" and stopped nothing."""
    with _handlers_kept(signal.SIGINT, signal.SIGUSR1):
        yield


def exit_code() -> int:
    """130 after Ctrl-C, 143 after SIGTERM (the shell's convention)."""
    return 128 + int(_STOP["signal"])


def _due() -> bool:
    """A stop requested, not raised yet, and no write under way."""
    return _STOP["pending"] and not _STOP["raised"] and not _STOP["deferred"]


@contextlib.contextmanager
def deferred():
    """A stop that comes inside the block is raised when the block ends (a KeyboardInterrupt
    inside an MLflow SQLite write left its transaction open and the database locked). When the
    block raises meanwhile, the stop is raised from that error at once: the command ends
    stopped, and no later cleanup (the run's FAILED status) is cut by it."""
    if not _main_thread():
        yield
        return
    _STOP["deferred"] += 1
    try:
        yield
    except BaseException as e:
        _STOP["deferred"] -= 1
        if _due() and not isinstance(e, KeyboardInterrupt):
            _raise(e)
        raise
    _STOP["deferred"] -= 1
    if _due():
        _raise()


def check() -> None:
    """A safe point in a long loop: raise the command's stop if one was requested (its
    KeyboardInterrupt deferred, or lost inside an extension that swallowed it). Never call it
    in cleanup code (a `finally`, an `except`): the stop may be on its way out already."""
    if _STOP["pending"] and not _STOP["deferred"] and _main_thread():
        _raise()

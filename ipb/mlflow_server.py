"""One local `mlflow server` in front of a SQLite store when several trials write at once.

    python -c "from ipb.config import load_config; from ipb.mlflow_server import writers; print(writers)"

Many processes must not write one SQLite file: a sweep with `sweep.max_concurrent > 1` on a
sqlite:/// URI starts a server (one worker) for the sweep's duration and gives every trial its
URL; artifacts go to `<db dir>/mlartifacts`, where the SQLite store reads them afterwards. That
is for one machine: on a Ray cluster with nodes elsewhere (or an autoscaler that may add some)
a sqlite:/// or loopback URI is refused (`ipb.runtime.check_tracking`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ipb.config import Config
from ipb.tracking import tracking_uri


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the sweep process dies, even by a signal that
    skips our clean-up (the context manager only runs on a normal exit or exception)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


class writers:
    """Context: the URI every trial should use. A sqlite store with several concurrent
    writers gets one local `mlflow server` (one worker) in front of it, stopped on exit."""

    def __init__(self, cfg: Config, concurrent: int):
        self.cfg, self.concurrent, self.proc = cfg, concurrent, None

    def __enter__(self) -> str:
        from ipb.runtime import check_tracking
        # The server below listens on 127.0.0.1 and keeps artifacts in a local directory: both
        # exist on this machine only. On a cluster with (or able to add) other machines that
        # is refused here, before a trial there logs to nowhere; one `mlflow server` on the
        # head that every node reaches is the way (cluster/README.md).
        uri = check_tracking(tracking_uri(self.cfg))
        if not uri.startswith("sqlite") or self.concurrent <= 1:
            return uri
        import socket
        import subprocess
        import sys
        import time
        import urllib.request
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        db = Path(uri[len("sqlite:///"):])
        arts = db.parent / "mlartifacts"
        # MLflow 3's job runner (a huey consumer per job queue: ~8 more Python processes)
        # serves UI jobs a sweep never uses, and costs trials CPU on a small machine
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        # its log goes to a file, not to a pipe nobody reads (a full pipe blocks the server)
        self.log = Path(tempfile.gettempdir()) / f"ipb-mlflow-server-{port}.log"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                 # new experiments keep artifacts in a plain directory, so the SQLite store
                 # reads them without this server (ipb predict models:/..., mlflow.pyfunc);
                 # older ones (mlflow-artifacts:/) are still served from the same place
                 "--default-artifact-root", str(arts), "--artifacts-destination", str(arts),
                 "--host", "127.0.0.1",
                 "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                stderr=err, start_new_session=True, env=env, preexec_fn=_die_with_parent)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180     # a loaded 2-core machine can take a minute
        try:
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=1):
                        return url
                except OSError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"mlflow server did not start (log {self.log}): "
                                           + self.log.read_text(errors="replace")[-2000:])
                    time.sleep(0.5)
            raise RuntimeError(f"mlflow server on {url} did not answer in 180 s")
        except BaseException:    # a stop or Ctrl-C while waiting too: __exit__ is not called
            self.__exit__()      # when __enter__ raises
            raise

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        import signal
        ended = self.proc.poll()       # the server exited by itself: its log says why
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, OSError):
            pass
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None
        # the log is kept only when the server died on its own (one per sweep was left in
        # the temp directory); a server that did not start has its log quoted in the error
        if ended is None:
            self.log.unlink(missing_ok=True)
        else:
            print(f"the sweep's mlflow server had exited (code {ended}); its log: {self.log}",
                  flush=True)

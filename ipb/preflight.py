"""Checks that run before Ray starts, so a bad address fails in seconds with one line.

    python -c "from ipb.preflight import check_tracking_uri; check_tracking_uri('http://127.0.0.1:9')"

An MLflow client retries an unreachable server with back-off for minutes (measured: 252-265 s
and five chained tracebacks for `--tracking-uri http://127.0.0.1:9`); one GET of the server's
/health with a short timeout says the same in under TIMEOUT_S.
"""
from __future__ import annotations

import urllib.error
import urllib.request

from ipb.config import ConfigError

TIMEOUT_S = 5.0


class TrackingUnreachable(ConfigError):
    """No MLflow server answers at the tracking URI."""


def check_tracking_uri(uri: str, timeout: float = TIMEOUT_S) -> None:
    """Raise TrackingUnreachable unless an http(s) tracking URI answers within `timeout` s.
    Other schemes (sqlite:///, databricks) are checked by their own clients, quickly."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.split("?", 1)[0].rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read(64)
    except urllib.error.HTTPError:
        return      # a server answered (auth, a proxy, no /health route): it is reachable
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise TrackingUnreachable(
            f"MLflow tracking server {uri} does not answer ({reason}); start it (e.g. `mlflow "
            "server --host 127.0.0.1 --port 5000`) or give another --tracking-uri / "
            "MLFLOW_TRACKING_URI") from None


__all__ = ["check_tracking_uri", "TrackingUnreachable", "TIMEOUT_S"]

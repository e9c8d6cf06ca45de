"""The MLflow UI as a person sees it: a tiny sweep, then the link it printed, in headless Chromium.

    pytest -q tests/test_mlflow_ui.py        # needs `chromium` (Debian package; .ci/run installs it)

The sweep (conftest's `tiny_sweep`) runs through a sweep script's own main() and prints
`Look at it with: mlflow ui ...` and `MLflow UI: http://...`. That command is started on a
free loopback port, the link (its port swapped) is loaded in Chromium, and the rendered DOM
(Chrome DevTools Protocol over a websocket, aiohttp) must be MLflow's Runs view in model-training mode (not the GenAI page of
"No data available") with the sweep's parent run listed, and, once its row is expanded, its
trials right under it. Everything listens on 127.0.0.1, is bounded in time and is stopped by
process group id.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1600,1000"]
EXPANDER = '[data-component-id$="runnamecellrenderer.tsx_46"]'


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs the Debian package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)


def _stop(proc: subprocess.Popen) -> None:
    """The process and everything it started (its own process group), by id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds:.0f}s: "
                         + log.read_text(errors="replace")[-2000:])


async def _page(port: int, parent: str, trials: list[str], seconds: float,
                parent_path: str, params: list[str]) -> dict:
    """Wait for the parent row, expand it, wait for the trials; the page's title, text and
    the grid's rows (aria-rowindex -> run name) as rendered. Then the parent run's page (its
    text once `params` show) and its report/report.html artifact: the images of the frame
    MLflow renders it in (a sandboxed blob: iframe, its own DevTools target), as
    [complete, naturalWidth, naturalHeight]."""
    import aiohttp
    deadline = time.time() + seconds
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in await r.json() if t["type"] == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            assert time.time() < deadline, "Chromium's DevTools did not answer"
            await asyncio.sleep(0.5)
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))

            async def js(expr: str):
                n = next(ids)
                await ws.send_json({"id": n, "method": "Runtime.evaluate",
                                    "params": {"expression": expr, "returnByValue": True}})
                while True:
                    msg = await ws.receive_json(timeout=30)
                    if msg.get("id") == n:
                        return msg["result"]["result"].get("value")

            async def until(cond: str, what: str):
                while not await js(cond):
                    assert time.time() < deadline, f"{what} within {seconds:.0f}s; page text: " \
                        + str(await js("document.body.innerText"))[:1500]
                    await asyncio.sleep(0.5)

            await until(f"document.body.innerText.includes({json.dumps(parent)})",
                        "the parent run listed")
            await js(f"document.querySelector('{EXPANDER}').click()")
            await until(" && ".join(f"document.body.innerText.includes({json.dumps(t)})"
                                    for t in trials), "the trials listed under the parent")
            rows = await js("""Array.from(document.querySelectorAll('[role=row][aria-rowindex]'))
                .map(r => [Number(r.getAttribute('aria-rowindex')),
                           (r.querySelector('[col-id="attributes.`Run Name`"]') || {}).innerText])
                .filter(r => r[1])""")
            out = {"title": await js("document.title"), "rows": rows,
                   "text": await js("document.body.innerText")}
            await js(f"location.hash = {json.dumps(parent_path)}")
            await until(" && ".join(f"document.body.innerText.includes({json.dumps(p)})"
                                    for p in params), "the parent run's parameters")
            out["parent_text"] = await js("document.body.innerText")
            await js(f"location.hash = {json.dumps(parent_path + '/artifacts/report/report.html')}")
            await until("document.querySelector('iframe') !== null", "the report's frame")
            while True:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    frames = [t for t in await r.json() if t["type"] == "iframe"]
                images = []
                for f in frames:
                    async with http.ws_connect(f["webSocketDebuggerUrl"], max_msg_size=0) as fw:
                        await fw.send_json({"id": 1, "method": "Runtime.evaluate", "params": {
                            "expression": "JSON.stringify(Array.from(document.images).map("
                                          "i => [i.complete, i.naturalWidth, i.naturalHeight]))",
                            "returnByValue": True}})
                        msg = await fw.receive_json(timeout=30)
                        images += json.loads(msg["result"]["result"].get("value") or "[]")
                if images and all(i[0] for i in images) or time.time() > deadline:
                    break
                await asyncio.sleep(0.5)
            out["report_images"] = images
            return out


def test_printed_link_opens_the_runs_of_the_sweep(tiny_sweep, tmp_path):
    chromium = _chromium()
    out, db = tiny_sweep["printed"], tiny_sweep["db"]
    link = re.search(r"^MLflow UI: (http://127\.0\.0\.1:(\d+)(/#/experiments/\d+/runs"
                     r"\?workflowType=machine_learning))$", out, re.M)
    command = re.search(r"^Look at it with:  (mlflow ui .*)$", out, re.M)
    assert link and command, out[-2000:]

    from ipb.tracking import client
    c = client(db)
    runs = c.search_runs([c.get_experiment_by_name("ipb-test").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("ipb.role") == "sweep")
    trials = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId")
              == parent.info.run_id]
    assert len(trials) == 2
    # issue 20: names a person tells apart in the Run Name column (method, arch, fold, seed),
    # not `SYNTHETIC si...` twice
    assert len(set(trials)) == 2 and not any(t.startswith("SYNTHETIC") for t in trials)
    assert {t.split("-")[0] for t in trials} == {"supervised", "ipb"}, trials

    ui_port, devtools = _free_port(), tmp_path / "chromium"
    args = shlex.split(command.group(1))
    args[args.index("--port") + 1] = str(ui_port)
    ui_log = tmp_path / "mlflow-ui.log"
    ui = _start([sys.executable, "-m", "mlflow", *args[1:]], ui_log,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    browser = None
    try:
        _wait_http(f"http://127.0.0.1:{ui_port}/health", ui, ui_log, 180)
        cdp_port = _free_port()
        browser = _start([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={devtools}",
                          "--remote-debugging-address=127.0.0.1",
                          f"--remote-debugging-port={cdp_port}",
                          f"http://127.0.0.1:{ui_port}{link.group(3)}"], tmp_path / "chromium.log",
                         # its singleton socket directory (org.chromium.Chromium.*) goes to
                         # TMPDIR and outlives a stop by signal: here, not in /tmp
                         env={**os.environ, "TMPDIR": str(tmp_path)})
        path = f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
        page = asyncio.run(_page(cdp_port, parent.info.run_name, trials, 180, path,
                                 sorted(parent.data.params)))
    finally:
        for proc in (browser, ui):
            if proc is not None:
                _stop(proc)
    assert page["title"].startswith("Runs"), page["title"]
    assert "Model training" in page["text"] and "No data available" not in page["text"]
    assert "3 matching runs" in page["text"]
    # grid rows in order: the parent's, then its two trials' (a cell's text also holds the
    # run's colour code)
    names = [name for _, name in sorted(page["rows"])]
    i = next(k for k, n in enumerate(names) if parent.info.run_name in n)
    under = names[i + 1:i + 3]
    assert all(any(t in n for n in under) for t in trials), names
    # issue 20: the parent carries the sweep's search space as params and the champion's
    # scores as metrics, shown on its page
    assert "space.method.name" in parent.data.params, parent.data.params
    assert {"champion.val.tpr.mean", "sweep.trials_finished"} <= set(parent.data.metrics)
    assert "Parameters (" in page["parent_text"] and "champion.val.tpr.mean" in page["parent_text"]
    # the report's figures render in the artifact view (report.md showed `![](x.png)` as text)
    assert page["report_images"] and all(done and w > 100 and h > 100
                                         for done, w, h in page["report_images"]), page["report_images"]

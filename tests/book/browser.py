"""A small headless-Chromium driver over the DevTools protocol (websocket-client), for the browser test of the book.

Only what the test needs: open a ``file://`` page, wait for its load, its images and MathJax, evaluate JavaScript,
record every network request and JavaScript exception, and save a full-page screenshot.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import websocket

class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str, width: int = 1280, height: int = 1600, timeout: float = 60.0):
        self.profile = tempfile.mkdtemp(prefix="instructedit-chromium-")
        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.timeout = timeout
        endpoint = self._devtools_endpoint()
        threading.Thread(target=self._drain, daemon=True).start()  # a full stderr pipe would block the browser
        port = urlparse(endpoint).port
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")

    def _devtools_endpoint(self) -> str:
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                return m.group(1)
        raise RuntimeError("Chromium did not start its DevTools endpoint")

    def _drain(self) -> None:
        for _ in self.proc.stderr:
            pass

    def call(self, method: str, **params):
        """Send one command and return its result (events arriving meanwhile are kept in :attr:`events`)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str) -> dict:
        for i, msg in enumerate(self.events):
            if msg.get("method") == event:
                return self.events.pop(i)
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == event:
                return msg
            self.events.append(msg)

    def evaluate(self, expression: str, await_promise: bool = False):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=await_promise,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails'].get('text')}: {expression[:80]}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate and wait for the load event, every image, and MathJax's typesetting when the page has it."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.evaluate("Promise.all([...document.images].map(i => { i.loading = 'eager'; return i.complete ? 1 :"
                      " new Promise(r => { i.onload = i.onerror = r; }); }))", await_promise=True)
        self.evaluate("(window.MathJax && MathJax.startup && MathJax.startup.promise) ? "
                      "MathJax.startup.promise.then(() => true) : false", await_promise=True)

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def exceptions(self) -> list[str]:
        return [e["params"]["exceptionDetails"].get("text", "") + " " +
                str(e["params"]["exceptionDetails"].get("exception", {}).get("description", ""))[:200]
                for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def screenshot(self, path: Path, max_height: int = 8000) -> Path:
        """The whole page (up to ``max_height`` CSS pixels) as a PNG."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

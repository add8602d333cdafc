"""Headless Chromium for the tests, driven over the DevTools protocol on a pipe: stdlib only.

Chromium's --remote-debugging-pipe reads protocol messages (JSON, each ending in a NUL byte)
from file descriptor 3 and writes its answers and events to descriptor 4. That needs no port
(nothing to race for, nothing another user on the machine could connect to), no websocket
client, no chromedriver and no pip package: a launcher, a send and a receive.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, BROWSER_NAMES)), None)


class BrowserError(RuntimeError):
    """Chromium ended, timed out or answered a command with an error."""


class Chromium:
    """One headless browser with one page (a tab), closed on exit from a with block."""

    def __init__(self, executable: str, width: int = 1280, height: int = 900, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def give_pipe_ends() -> None:  # in the child, before exec: the ends onto fds 3 and 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]  # clear of 3, 4
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False,  # Python's own descriptors are close-on-exec anyway; 3 and 4 must stay open
            preexec_fn=give_pipe_ends)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False, session=True)
        for domain in ("Page", "Network", "Log"):
            self.send(f"{domain}.enable", session=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        finally:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            os.close(self._to_browser)
            os.close(self._from_browser)
            shutil.rmtree(self.profile, ignore_errors=True)

    # --- the protocol ---

    def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        answer = self._receive(lambda m: m.get("id") == self._next_id, f"the answer to {method}")
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def wait_for_event(self, method: str) -> dict[str, Any]:
        for i, event in enumerate(self._events):
            if event["method"] == method:
                return self._events.pop(i)["params"]
        return self._receive(lambda m: m.get("method") == method, method, keep=False)["params"]

    def events(self, method: str) -> list[dict[str, Any]]:
        """The parameters of every event of that kind received so far."""
        return [event["params"] for event in self._events if event["method"] == method]

    def _receive(self, wanted, what: str, keep: bool = True) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if wanted(message):
                    return message
                if "method" in message:
                    self._events.append(message)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError(f"no {what} from Chromium within {self.timeout:.0f} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium ended (exit status {self.process.wait()}) before {what}")
            self._buffer += chunk

    # --- what the tests do with a page ---

    def open(self, path: Path, dark: bool = False) -> None:
        """Load a local file and wait for its load event (lazy images off screen are not loaded yet)."""
        self.send("Emulation.setEmulatedMedia", session=True,
                  features=[{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}])
        self._events.clear()
        self.send("Page.navigate", url=path.resolve().as_uri(), session=True)
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page, awaited if it is a promise."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True,
                           session=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"JavaScript error: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=full_page, session=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def requested_urls(self) -> list[str]:
        return [event["request"]["url"] for event in self.events("Network.requestWillBeSent")]

    def log_entries(self) -> list[str]:
        """Browser log entries since the page was opened: errors, CSP violations, failed loads."""
        return [f"{entry['entry']['level']}: {entry['entry']['text']}" for entry in self.events("Log.entryAdded")]


# Every image made to load now (lazy ones off screen included), then what the page shows. Switching
# loading to eager starts a lazy image's load; decode() settles once it is loaded and decoded.
LOAD_ALL_IMAGES_JS = """
(async () => {
  const images = [...document.images];
  const lazy = images.filter(img => img.loading === 'lazy').length;
  images.forEach(img => { img.loading = 'eager'; });
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  return {lazy, images: images.length};
})()
"""

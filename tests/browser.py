"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): open a
page, wait until its text shows what a user would look for, read it, take a screenshot. No driver or
websocket package: the protocol's JSON messages, each ended by a NUL byte, on two file descriptors."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

READ_TIMEOUT_S = 60
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


class Browser:
    """One headless Chromium with one page; a context manager that always ends the browser."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 1200) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", "about:blank"]  # fmt: skip
        self._proc = self._spawn(flags, to_chrome_r, from_chrome_w)  # Chromium reads fd 3, writes fd 4
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        page = next(t for t in self._call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self._call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self._call("Page.enable", session=True)

    @staticmethod
    def _spawn(flags: list[str], read_fd: int, write_fd: int) -> subprocess.Popen:
        def fds() -> None:  # in the child: the two pipe ends at 3 and 4, whatever numbers they had
            high_read, high_write = os.dup(read_fd), os.dup(write_fd)  # out of the way of 3 and 4
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        return subprocess.Popen([CHROMIUM, *flags], preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self._proc.kill()
        self._proc.wait(10)
        os.close(self._to_chrome)
        os.close(self._from_chrome)

    def open(self, url: str) -> None:
        self._call("Page.navigate", session=True, url=url)

    def text(self) -> str:
        """The page's visible text (``document.body.innerText``)."""
        result = self._call("Runtime.evaluate", session=True, expression="document.body ? document.body.innerText : ''", returnByValue=True)
        return result["result"].get("value", "")

    def wait_for_text(self, *needles: str, timeout_s: float = 90.0) -> str:
        """The page's text once it holds every one of ``needles``; AssertionError (with the text) if
        it does not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if all(n in text for n in needles) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        assert not missing, f"not on the page after {timeout_s:.0f} s: {missing}\n--- page text ---\n{text[:3000]}"
        return text

    def location(self) -> str:
        return self._call("Runtime.evaluate", session=True, expression="location.href", returnByValue=True)["result"]["value"]

    def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(self._call("Page.captureScreenshot", session=True, format="png")["data"])
        path.write_bytes(png)
        return png

    def _call(self, method: str, *, session: bool = False, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            if not select.select([self._from_chrome], [], [], READ_TIMEOUT_S)[0]:
                raise TimeoutError(f"Chromium did not answer within {READ_TIMEOUT_S} s")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed its pipe (exit code {self._proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

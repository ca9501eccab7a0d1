#!/usr/bin/env python3
"""Open ppp-audit's pages in headless Chromium and say what a reader would meet (not a CI test: CI has no browser).

    python scripts/browser_check.py --report DIR --embedded DIR/report.embedded.html --leaderboard SWEEP \
        --shots /tmp/pages-shots

For each page, at 1400 px and at 420 px wide: console errors and uncaught exceptions, failed loads (and resources
the Content-Security-Policy refused), whether the page scrolls sideways (its width against the window's), and a
full-page screenshot. The report page: every figure loaded. The embedded page is copied alone into an empty folder
first: no link it cannot follow, no local absolute path in its text. The leaderboard: ranked when it opens (the rank
column 1, 2, ... and the strengths falling), the table inside its own scroll box, a header sorted by a click and by
the keyboard, and a point clicked (its run page opens at its scheme's anchor, and links back).

Chromium is driven through the DevTools protocol (``--remote-debugging-port``) with the small websocket client
below (standard library only). Exit 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
WIDTHS = (1400, 420)


class WebSocket:
    """A minimal websocket client (RFC 6455): text frames, client masking, no extensions."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        match = re.fullmatch(r"ws://([^/:]+):(\d+)(/.*)", url)
        if match is None:
            raise ValueError(f"not a ws:// URL: {url}")
        host, port, path = match.group(1), int(match.group(2)), match.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        head, self.buffer = response.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.decode(errors="replace"))

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def send(self, text: str) -> None:
        payload = text.encode()
        header = bytes([0x81])
        n = len(payload)
        header += (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 1 << 16
                   else bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode in (0x9, 0xA):  # ping / pong: nothing to do for a short session
                continue
            message += payload
            if first & 0x80:
                return message.decode()


class Browser:
    """Headless Chromium with one page, driven by DevTools commands; events are kept for the checks."""

    def __init__(self) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if binary is None:
            raise SystemExit("no Chromium: apt-get install chromium")
        self.profile = tempfile.mkdtemp(prefix="ppp-browser-")
        self.process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                         "--remote-debugging-port=0", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.time() > deadline or self.process.poll() is not None:
                raise SystemExit("Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = WebSocket(page["webSocketDebuggerUrl"])
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next event ``method`` (earlier ones already received count)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for k, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(k)
            self.ws.sock.settimeout(max(0.1, deadline - time.time()))
            try:
                self.events.append(json.loads(self.ws.receive()))
            except socket.timeout:
                break
        raise TimeoutError(f"no {method} in {timeout:g} s")

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str, width: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                  mobile=width < 600)
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        time.sleep(0.3)  # the load handler's own writes

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, failed loads and refused resources since the last call."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in
                                                     params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + params["exceptionDetails"].get("text", "?"))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}".strip())
            elif method == "Network.loadingFailed":
                found.append(f"load failed: {params.get('errorText')} ({params.get('blockedReason', '')})")
        self.events = []
        return found

    def screenshot(self, path: Path) -> None:
        size = self.js("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        width, height = size[0], min(size[1], 12000)
        self.call("Emulation.setDeviceMetricsOverride", width=self.js("window.innerWidth"), height=height,
                  deviceScaleFactor=1, mobile=width < 600)
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


class Checks:
    """Results, printed as they come: ``ok`` or ``FAIL`` and what was seen."""

    def __init__(self) -> None:
        self.failed = 0

    def check(self, ok: bool, what: str, seen: Any = "") -> bool:
        self.failed += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {what}" + (f": {seen}" if seen != "" else ""))
        return ok


_WIDTH = "[document.documentElement.scrollWidth, window.innerWidth]"
_LOCAL_PATH = re.compile(r"(?<![\w./~-])(?:/(?:home|root|tmp|Users|var|mnt|opt|srv|data|work)/|~/)[^\s\"'<>]*")


def _layout(browser: Browser, checks: Checks, name: str, width: int) -> None:
    """The page no wider than the window asked for (on a phone a wide page widens the layout viewport itself, so
    ``innerWidth`` alone would not tell)."""
    page_width, window = browser.js(_WIDTH)
    checks.check(page_width <= width and window <= width, f"{name} at {width} px: no sideways scroll",
                 f"page {page_width} px, layout viewport {window} px")


def check_report(browser: Browser, checks: Checks, page: Path, shots: Path, name: str) -> None:
    for width in WIDTHS:
        print(f"{name} at {width} px: {page}")
        browser.open(page.resolve().as_uri(), width)
        _layout(browser, checks, name, width)
        loaded = browser.js("document.documentElement.getAttribute('data-images-loaded')")
        done, _, total = (loaded or "?/?").partition("/")
        checks.check(loaded is not None and done == total, f"{name}: every figure loaded", loaded)
        wide = browser.js("Array.from(document.querySelectorAll('table')).filter(t => "
                          "t.getBoundingClientRect().right > window.innerWidth + 1 && "
                          "!t.closest('.scroll')).length")
        checks.check(wide == 0, f"{name}: tables wider than the window sit in scroll boxes", f"{wide} outside")
        shot = shots / f"{name}-{width}.png"
        browser.screenshot(shot)
        print(f"  screenshot {shot}")
        problems = browser.problems()
        checks.check(not problems, f"{name}: no console errors or failed loads", "; ".join(problems))


def check_embedded(browser: Browser, checks: Checks, page: Path, shots: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ppp-embedded-"))
    try:
        _check_alone(browser, checks, Path(shutil.copy(page, folder / page.name)), shots)  # nothing beside it
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_alone(browser: Browser, checks: Checks, alone: Path, shots: Path) -> None:
    check_report(browser, checks, alone, shots, "embedded")
    links = browser.js("Array.from(document.querySelectorAll('[href],[src]')).map(e => "
                       "e.getAttribute('href') || e.getAttribute('src'))")
    dangling = []
    for link in links:
        if link.startswith(("data:", "#")):
            if link.startswith("#") and not browser.js(f"!!document.getElementById({json.dumps(link[1:])})"):
                dangling.append(link)
            continue
        if "://" in link or link.startswith(("mailto:", "http")):
            continue  # elsewhere on the web: followable
        if not (alone.parent / link.split("#")[0]).exists():
            dangling.append(link)
    checks.check(not dangling, "embedded copy: no link it cannot follow", ", ".join(dangling[:5]))
    text = browser.js("document.documentElement.outerHTML.replace(/data:[^\"')]+/g, '')")
    paths = sorted(set(_LOCAL_PATH.findall(text)))
    checks.check(not paths, "embedded copy: no local absolute path", ", ".join(paths[:5]))


def check_leaderboard(browser: Browser, checks: Checks, sweep: Path, shots: Path) -> None:
    page = sweep / "leaderboard.html"
    for width in WIDTHS:
        print(f"leaderboard at {width} px: {page}")
        browser.open(page.resolve().as_uri(), width)
        _layout(browser, checks, "leaderboard", width)
        box = browser.js("(() => { const t = document.getElementById('leaderboard'), b = t.closest('.scroll');"
                         "return b ? [b.clientWidth, t.scrollWidth] : null; })()")
        checks.check(box is not None and box[0] <= width,
                     "leaderboard: the table scrolls inside its own box", f"box {box and box[0]} px, table "
                     f"{box and box[1]} px")
        shot = shots / f"leaderboard-{width}.png"
        browser.screenshot(shot)
        print(f"  screenshot {shot}")
        checks.check(not (problems := browser.problems()), "leaderboard: no console errors or failed loads",
                     "; ".join(problems))
    column = "(name) => Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => " \
             "r.cells[Array.from(document.querySelectorAll('#leaderboard thead tr:last-child th')).findIndex(" \
             "h => h.dataset.column === name)].dataset.value)"
    ranks = browser.js(f"({column})('#')")
    strengths = [float(v) if v else float("-inf") for v in browser.js(f"({column})('last_strength')")]
    checks.check(ranks == [str(k) for k in range(1, len(ranks) + 1)] and strengths == sorted(strengths, reverse=True),
                 "leaderboard opens ranked by last-stage strength", f"{len(ranks)} rows")
    nowrap = browser.js("Array.from(document.querySelectorAll('#leaderboard td, #leaderboard th')).filter(c => "
                        "getComputedStyle(c).whiteSpace !== 'nowrap').length")
    checks.check(nowrap == 0, "leaderboard cells do not wrap", f"{nowrap} cells wrap")
    data = browser.js("Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))"
                      ".filter(h => /^leaderboard\\.(csv|parquet)$/.test(h))")
    checks.check(sorted(data) == ["leaderboard.csv", "leaderboard.parquet"], "leaderboard links its CSV and Parquet",
                 data)
    browser.js("document.querySelector('#leaderboard th[data-column=model] button').click()")
    names = browser.js(f"({column})('model')")
    sort = browser.js("document.querySelector('#leaderboard th[data-column=model]').getAttribute('aria-sort')")
    checks.check(names == sorted(names) and sort == "ascending", "clicking the model header sorts A to Z",
                 f"aria-sort={sort}")
    browser.js("document.querySelector('#leaderboard th[data-column=params] button').focus()")
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                     text="\r" if kind == "keyDown" else "")
    params = [float(v) for v in browser.js(f"({column})('params')") if v]
    sort = browser.js("document.querySelector('#leaderboard th[data-column=params]').getAttribute('aria-sort')")
    checks.check(params == sorted(params, reverse=True) and sort == "descending",
                 "Enter on the params header sorts high to low", f"aria-sort={sort}")
    target = browser.js("(() => { const g = document.querySelectorAll('#scatter g.point'), p = g[g.length - 1];"
                        "const link = p.querySelector('a'), mark = link.firstElementChild;"
                        # centred: a mark scrolled to the very top edge is not hit by a synthetic click
                        "mark.scrollIntoView({block: 'center'});"
                        "const r = mark.getBoundingClientRect();"
                        "return [r.x + r.width / 2, r.y + r.height / 2, "
                        "link.getAttribute('href') || link.getAttribute('xlink:href')]; })()")
    x, y, href = target
    browser.events = []
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):  # as a pointer does: over the mark, then click
        browser.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
    browser.wait_for("Page.loadEventFired")
    time.sleep(0.3)
    where = browser.js("location.href")
    anchor = href.split("#", 1)[1] if "#" in href else ""
    checks.check(where.endswith(href) and bool(anchor) and browser.js(f"!!document.getElementById('{anchor}')"),
                 "a point opens its run page at its scheme", where)
    back = browser.js("(() => { const a = document.querySelector('a[rel=up]'); return a && a.href; })()")
    checks.check(back is not None and back.startswith("file://") and Path(back[7:].split("#")[0]).resolve()
                 == page.resolve(), "the run page links back to the leaderboard", back)
    shot = shots / "leaderboard-point.png"
    browser.screenshot(shot)
    print(f"  screenshot {shot} (the run page a point opened)")
    checks.check(not (problems := browser.problems()), "run page: no console errors or failed loads",
                 "; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, help="a report folder (its report.html)")
    parser.add_argument("--embedded", type=Path, help="an embedded page (report.embedded.html)")
    parser.add_argument("--leaderboard", type=Path, help="a sweep folder with leaderboard.html")
    parser.add_argument("--shots", type=Path, default=Path("/tmp/pages-shots"), help="where screenshots go")
    args = parser.parse_args(argv)
    args.shots.mkdir(parents=True, exist_ok=True)
    checks, browser = Checks(), Browser()
    try:
        if args.report:
            check_report(browser, checks, args.report / "report.html", args.shots, "report")
        if args.embedded:
            check_embedded(browser, checks, args.embedded, args.shots)
        if args.leaderboard:
            check_leaderboard(browser, checks, args.leaderboard, args.shots)
    finally:
        browser.close()
    print(f"{checks.failed} check(s) failed" if checks.failed else "every check passed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())

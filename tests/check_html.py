#!/usr/bin/env python3
"""Check the built book in a real browser (headless Chromium over the DevTools protocol).

    .venv/bin/python tests/check_html.py _build/html      # or: make check-html

Serves the HTML directory on 127.0.0.1, opens every page at 1280 px and at 390 px (mobile) and
prints one line per problem ("FAIL <page>: <what>: <detail>"), then a summary line.
Exit status: 0 every page passed, 1 some page failed, 2 the check could not run (no chromium,
no pages, the browser did not start).

Not a pytest module on purpose (no test_ prefix): it needs a built book and a browser.
Only the standard library and `websocket-client` are used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

try:
    import websocket  # websocket-client
except ImportError:  # pragma: no cover - depends on the environment
    websocket = None

DESKTOP = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
MOBILE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class SetupError(Exception):
    """The check cannot run (exit status 2)."""


# --------------------------------------------------------------------------------------------
# A minimal DevTools protocol client: one websocket to one page target.
# --------------------------------------------------------------------------------------------
class Cdp:
    def __init__(self, ws_url: str, timeout: float = 30.0):
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass

    def _recv(self, timeout: float) -> dict | None:
        self.ws.settimeout(max(timeout, 0.01))
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self.next_id += 1
        msg_id = self.next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{method}: no answer from the browser within {timeout:.0f} s")
            msg = self._recv(left)
            if msg is None:
                continue
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def pump(self, timeout: float) -> list[dict]:
        """Read events for up to `timeout` seconds (returns as soon as one batch arrived)."""
        new = []
        msg = self._recv(timeout)
        while msg is not None:
            if "method" in msg:
                self.events.append(msg)
                new.append(msg)
            msg = self._recv(0.01)
        return new

    def evaluate(self, expression: str, timeout: float = 60.0):
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in res:
            det = res["exceptionDetails"]
            text = det.get("exception", {}).get("description") or det.get("text")
            raise RuntimeError(f"page script failed: {text}")
        return res.get("result", {}).get("value")


# --------------------------------------------------------------------------------------------
# In-page checks (JavaScript run after load, network idle and MathJax).
# --------------------------------------------------------------------------------------------
WAIT_MATHJAX_JS = r"""
(async () => {
  const hasMath = !!document.querySelector('.math, mjx-container');
  if (!hasMath) return {hasMath: false};
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = Date.now();
  const ready = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
  while (!ready() && Date.now() - t0 < 5000) await sleep(100);
  if (!ready()) return {hasMath: true, mathjax: false};
  await Promise.race([MathJax.startup.promise, sleep(20000)]);
  return {hasMath: true, mathjax: true, version: MathJax.version || ''};
})()
"""

PAGE_CHECK_JS = r"""
(async () => {
  const out = [];
  const add = (what, detail) => out.push([what, String(detail).slice(0, 200)]);
  const article = document.querySelector('article.bd-article') || document.querySelector('main')
                  || document.body;
  const visible = el => {
    if (!el) return false;
    if (el.checkVisibility) return el.checkVisibility({checkOpacity: false, checkVisibilityCSS: true});
    return !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  };
  const short = s => s.length > 90 ? s.slice(0, 60) + '...' + s.slice(-20) : s;
  // where an element is: the heading of its section, so that a reader can find it
  const where = el => {
    const sec = el.closest('section');
    const h = sec && sec.querySelector('h1, h2, h3, h4');
    return h ? ` in section "${h.textContent.replace(/[#\u00b6]\s*$/, '').trim().slice(0, 50)}"` : '';
  };

  // broken images, anywhere on the page
  for (const img of document.images) {
    if (img.complete && img.naturalWidth === 0 && visible(img))
      add('broken image', short(img.getAttribute('src') || ''));
  }

  // the same image twice in the article: same src, same data: URI, or the same bytes
  const seen = new Map();
  const digest = async img => {
    const src = img.currentSrc || img.src;
    try {
      const buf = await (await fetch(src)).arrayBuffer();
      const h = await crypto.subtle.digest('SHA-256', buf);
      return Array.from(new Uint8Array(h)).map(b => b.toString(16).padStart(2, '0')).join('');
    } catch (e) { return 'src:' + src; }
  };
  for (const img of article.querySelectorAll('img')) {
    if (!img.naturalWidth || !visible(img)) continue;
    const key = await digest(img);
    const src = img.getAttribute('src') || '';
    if (seen.has(key)) {
      const [first, firstWhere] = seen.get(key);
      add('duplicate image', `the same image is shown twice${firstWhere}` +
          (firstWhere === where(img) ? '' : ` and${where(img)}`) +
          `: ${short(first)}` + (first === src ? '' : ` and ${short(src)}`));
    } else seen.set(key, [src, where(img)]);
  }

  // visible prose text of the article: code blocks, math and scripts excluded
  const skip = 'pre, code, script, style, mjx-container, .cell_input, .highlight';
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  let prose = '';
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest(skip) || !visible(p)) continue;
    prose += n.nodeValue + ' ';
  }
  for (const raw of ['{glue', '{numref', '{cite', '{doc']) {
    const i = prose.indexOf(raw);
    if (i >= 0) add('raw MyST', JSON.stringify(prose.slice(Math.max(0, i - 30), i + 50).trim()));
  }

  // NaN / None as the whole text of a table cell
  const bad = new Set(['NaN', 'nan', 'None', '<NA>']);
  article.querySelectorAll('table').forEach((table, ti) => {
    const cells = [...table.querySelectorAll('td, th')].filter(c => bad.has(c.textContent.trim()));
    if (!cells.length) return;
    const c = cells[0], row = c.parentElement;
    const rowHead = row.querySelector('th') ? row.querySelector('th').textContent.trim() : '';
    const heads = table.tHead && table.tHead.rows.length ? table.tHead.rows[table.tHead.rows.length - 1] : null;
    const colHead = heads && heads.cells[c.cellIndex] ? heads.cells[c.cellIndex].textContent.trim() : '';
    add('NaN/None in table', `table ${ti + 1}${where(table)}: ${cells.length} cell(s) read ` +
        `${JSON.stringify(c.textContent.trim())}, the first in row ${JSON.stringify(rowHead.slice(0, 30))}` +
        `, column ${JSON.stringify(colHead.slice(0, 30))}`);
  });

  // tables wider than the article column
  const column = article.clientWidth;
  article.querySelectorAll('table').forEach((table, ti) => {
    if (!visible(table)) return;
    const w = Math.max(table.scrollWidth, Math.ceil(table.getBoundingClientRect().width));
    if (w > column + 1) {
      const cap = table.querySelector('caption');
      add('wide table', `table ${ti + 1}${cap ? ' (' + cap.textContent.trim().slice(0, 40) + ')' : ''}${where(table)}` +
          ` is ${w} px wide, the article column ${column} px`);
    }
  });

  // papermill's injected-parameters cell
  for (const cell of article.querySelectorAll('.tag_injected-parameters'))
    if (visible(cell)) add('injected parameters', 'the cell tagged injected-parameters is displayed');
  if (/^# Parameters\s*$/m.test(article.innerText) && !out.some(o => o[0] === 'injected parameters'))
    add('injected parameters', '"# Parameters" is visible in the article');

  // math left as TeX
  const maths = article.querySelectorAll('.math');
  const hasMath = maths.length > 0 || !!article.querySelector('mjx-container');
  if (hasMath) {
    const raw = [...maths].filter(m => !m.querySelector('mjx-container') && visible(m));
    if (raw.length) add('MathJax not rendered', `${raw.length} formula(s) shown as TeX, e.g. ` +
                        JSON.stringify(raw[0].textContent.trim().slice(0, 60)));
    else for (const t of ['$$', '\\begin{']) {
      const i = prose.indexOf(t);
      if (i >= 0) { add('MathJax not rendered', `raw ${t} in the text: ` +
                        JSON.stringify(prose.slice(Math.max(0, i - 20), i + 40).trim())); break; }
    }
  }
  return out;
})()
"""


# --------------------------------------------------------------------------------------------
# Processes: the HTTP server and the browser.
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{what} exited with status {proc.returncode} at start; run it by hand to see why")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SetupError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; is the machine overloaded?")


def stop(proc: subprocess.Popen | None) -> None:
    """Stop a process started in its own session, with its children (chromium forks helpers)."""
    if proc is None or proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def page_target(debug_port: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list", timeout=5) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.3)
    raise SetupError("chromium started but offers no page to drive; check `chromium --headless` by hand")


# --------------------------------------------------------------------------------------------
# Loading one page and collecting what the protocol reports.
# --------------------------------------------------------------------------------------------
def load(cdp: Cdp, url: str, metrics: dict, timeout: float) -> tuple[list[tuple[str, str]], bool]:
    """Open `url`; return (problems seen by the protocol, whether the page loaded)."""
    cdp.call("Emulation.setDeviceMetricsOverride", metrics)
    cdp.call("Page.navigate", {"url": "about:blank"})
    cdp.pump(0.2)
    cdp.events.clear()
    nav = cdp.call("Page.navigate", {"url": url})
    problems: list[tuple[str, str]] = []
    if nav.get("errorText"):
        return [("navigation failed", nav["errorText"])], False

    inflight: dict[str, str] = {}
    loaded, quiet_since = False, None
    deadline = time.monotonic() + timeout
    done = 0  # events already looked at
    while time.monotonic() < deadline:
        cdp.pump(0.1)
        for ev in cdp.events[done:]:
            method, p = ev["method"], ev.get("params", {})
            if method == "Page.loadEventFired":
                loaded = True
            elif method == "Network.requestWillBeSent":
                inflight[p["requestId"]] = p["request"]["url"]
            elif method in ("Network.loadingFinished", "Network.loadingFailed"):
                inflight.pop(p["requestId"], None)
        done = len(cdp.events)
        if loaded and not inflight:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 0.5:  # network idle: nothing in flight for 0.5 s
                break
        else:
            quiet_since = None
    else:
        pending = ", ".join(sorted(set(inflight.values()))[:3])
        problems.append(("timeout", f"no load/network idle within {timeout:.0f} s"
                         + (f"; pending: {pending}" if pending else "")))
    return problems, loaded


def is_local(url: str) -> bool:
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https", "ws", "wss"):
        return True  # data:, blob:, about:, chrome-extension: never leave the machine
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    host = host[1:].split("]")[0] if host.startswith("[") else host.split(":")[0]
    return host == "127.0.0.1"


def protocol_problems(events: list[dict], base: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    urls: dict[str, str] = {}
    external: set[str] = set()
    for ev in events:
        method, p = ev["method"], ev.get("params", {})
        if method == "Network.requestWillBeSent":
            url = p["request"]["url"]
            urls[p["requestId"]] = url
            if not is_local(url) and url not in external:
                external.add(url)
                out.append(("external request", url[:200]))
        elif method == "Network.loadingFailed":
            url = urls.get(p["requestId"], "?")
            if url not in external and not p.get("canceled"):
                out.append(("failed request", f"{url[:160]} ({p.get('errorText', '')})"))
        elif method == "Network.responseReceived":
            status = p["response"].get("status", 0)
            # the browser asks for /favicon.ico on its own when a page names no icon
            if status >= 400 and not (p["response"]["url"] == base + "favicon.ico" and p.get("type") == "Other"):
                out.append(("HTTP error", f"{status} {p['response']['url'][:180]}"))
        elif method == "Runtime.exceptionThrown":
            det = p["exceptionDetails"]
            text = (det.get("exception") or {}).get("description") or det.get("text", "")
            where = f" ({det.get('url', '').replace(base, '')}:{det.get('lineNumber', 0) + 1})" if det.get("url") else ""
            out.append(("uncaught exception", text.splitlines()[0][:180] + where))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append(("console error", text.splitlines()[0][:200] if text else "(empty)"))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            # source "network" entries repeat a failed request or an HTTP error reported above
            if p["entry"].get("source") != "network":
                out.append(("console error", p["entry"].get("text", "").splitlines()[0][:200]))
    # one line per distinct problem
    return list(dict.fromkeys(out))


def check_page(cdp: Cdp, base: str, rel: str, timeout: float) -> list[tuple[str, str]]:
    url = base + rel
    problems, loaded = load(cdp, url, DESKTOP, timeout)
    if loaded:
        try:
            cdp.evaluate(WAIT_MATHJAX_JS, timeout=40)
            problems += [tuple(x) for x in cdp.evaluate(PAGE_CHECK_JS, timeout=60)]
            cdp.pump(0.2)  # late console messages
        except (RuntimeError, TimeoutError) as exc:
            problems.append(("check script", str(exc)))
    problems = protocol_problems(cdp.events, base) + problems

    mobile, loaded = load(cdp, url, MOBILE, timeout)
    cdp.pump(0.3)
    mobile += [p for p in protocol_problems(cdp.events, base) if p[0] == "uncaught exception"]
    problems += [(f"{what} at 390 px", detail) for what, detail in mobile]
    return problems


def pages_under(root: Path) -> list[str]:
    # Directories whose name starts with "_" or "." hold Sphinx's internals, not pages:
    # _static (theme assets), _sources (copies of the sources), _images, _sphinx_design_static.
    # genindex.html and search.html are real pages (linked from every page) and are checked.
    out = []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root)
        if any(part.startswith(("_", ".")) for part in rel.parts[:-1]):
            continue
        out.append(rel.as_posix())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", type=Path, help="the built site, e.g. _build/html")
    ap.add_argument("--timeout", type=float, default=45.0, help="seconds per page load (default 45)")
    ap.add_argument("--page", action="append", default=[], help="check only this page (relative path); repeatable")
    args = ap.parse_args(argv)

    try:
        return run(args)
    except SetupError as exc:
        print(f"check_html: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    root = args.html_dir.resolve()
    if not (root / "index.html").is_file():
        raise SetupError(f"{args.html_dir} has no index.html; build the book first (make book)")
    chromium = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if chromium is None:
        raise SetupError("chromium is not installed; install it with `apt-get install -y chromium fonts-dejavu` (as root)")
    if websocket is None:
        raise SetupError("the websocket-client package is missing; run `make setup` (or pip install websocket-client)")
    pages = args.page or pages_under(root)
    if not pages:
        raise SetupError(f"no .html pages under {args.html_dir}; build the book first (make book)")

    # SIGTERM (make interrupted, CI timeout) unwinds through the finally below like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="check_html-")
    server = browser = cdp = None
    failures: list[tuple[str, str, str]] = []
    try:
        http_port, debug_port = free_port(), free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(http_port),
                                   "--directory", str(root)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(http_port, server, "python -m http.server")
        browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                    f"--remote-debugging-port={debug_port}", "--remote-allow-origins=*",
                                    f"--user-data-dir={tmp}", "--window-size=1280,900",
                                    "--no-first-run", "--no-default-browser-check", "--mute-audio",
                                    # every host but 127.0.0.1 fails at once, as for an offline reader
                                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                                    "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(debug_port, browser, "chromium")
        cdp = Cdp(page_target(debug_port))
        for domain in ("Page", "Runtime", "Network", "Log"):
            cdp.call(f"{domain}.enable")
        cdp.call("Network.setCacheDisabled", {"cacheDisabled": True})

        base = f"http://127.0.0.1:{http_port}/"
        for rel in pages:
            try:
                problems = check_page(cdp, base, rel, args.timeout)
            except (TimeoutError, RuntimeError, websocket.WebSocketException, OSError) as exc:
                problems = [("browser", f"{type(exc).__name__}: {exc}")]
            for what, detail in problems:
                failures.append((rel, what, detail))
                print(f"FAIL {rel}: {what}: {detail}", flush=True)
            if browser.poll() is not None:
                raise SetupError(f"chromium exited (status {browser.returncode}) while checking {rel}; rerun the check")
    finally:
        if cdp is not None:
            cdp.close()
        stop(browser)
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)

    bad_pages = len({f[0] for f in failures})
    print(f"check_html: {len(pages)} pages checked at 1280 px and 390 px, {len(failures)} failures "
          f"on {bad_pages} page(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

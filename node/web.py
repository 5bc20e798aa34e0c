"""The dashboard, ``/metrics``, ``/healthz`` and ``/readyz``, served by the node itself.

The standard library's ThreadingHTTPServer (one daemon thread per request), serving the
server-rendered HTML of pages.py, where every value passes through ``html.escape``. Each
request reads the state database on a connection of its own, closed when it ends. Pages:

    /                                   recent studies (paginated), queues, free disk, version
    /study/<uid>                        findings, overlay images, deliveries of one study
    /study/<uid>/overlay/<sop>.png      an overlay secondary capture, reduced, as PNG
    /outbox                             deliveries; failed ones with a Retry button
    POST /outbox/retry                  queue failed deliveries again (one, or a destination's)
    /metrics /healthz /readyz           Prometheus text, liveness, readiness

With ``web.token`` set, everything but /healthz and /readyz needs it: ``Authorization: Bearer
<token>``, or ``?token=<token>`` once, which sets an HttpOnly, SameSite=Strict cookie. A node
listening beyond loopback without a token refuses to start. Patient names and IDs are not in
the database; they are read from a stored header only when ``web.show_patient_identity`` is on.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import logging
import re
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node import __version__
from node.config import Config, WebConfig
from node.errors import ConfigError
from node.metrics import new_registry
from node.outbox import Outbox
from node.pages import CSS, overlay_png, render_index, render_outbox, render_study
from node.reporting.uids import is_valid_uid
from node.spool import Spool

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 4096
COOKIE = "calcnode_session"
OPEN_PATHS = ("/healthz", "/readyz")
HTML = "text/html; charset=utf-8"
STUDY_PATH = re.compile(r"^/study/([0-9.]+)$")
OVERLAY_PATH = re.compile(r"^/study/([0-9.]+)/overlay/([0-9.]+)\.png$")



def check_config(web: WebConfig) -> None:
    """A dashboard reachable from the network must ask for a token: it shows study data and
    can queue deliveries."""
    if web.enabled and not web.token and not is_loopback(web.host):
        raise ConfigError([f"web.token: must be set when web.host ({web.host!r}) is not a "
                           "loopback address; or set web.host to 127.0.0.1"])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_problem(receiver, max_associations: int) -> str | None:
    """Why the DICOM listener would not accept an association now, or None."""
    server = receiver.server
    if server is None or server.socket.fileno() == -1:
        return "the DICOM listener is not running"
    if len(server.active_associations) >= max_associations:
        return f"all {max_associations} association slots are in use"
    return None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    form: dict[str, str]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = HTML
    headers: tuple[tuple[str, str], ...] = ()


class WebServer:
    """``start()`` binds ``web.host:web.port`` and serves on a thread; ``stop()`` ends it."""

    def __init__(self, config: Config, spool: Spool, receiver, wake: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time):
        check_config(config.web)
        self.config = config
        self.spool = spool
        self.receiver = receiver
        self.wake = wake
        self.clock = clock
        self.registry = new_registry(spool)
        self.address: tuple[str, int] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        web = self.config.web
        try:
            self._server = ThreadingHTTPServer((web.host, web.port), _Handler)
        except OSError as exc:
            raise ConfigError([f"web.port: cannot listen on {web.host}:{web.port}: "
                               f"{exc.strerror or exc}"]) from None
        self._server.app = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="web", daemon=True)
        self._thread.start()
        self.address = self._server.server_address[:2]
        log.info("dashboard on http://%s:%d/", *self.address)
        return self.address

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        self._thread.join(10)

    # --- requests ---

    def respond(self, request: Request) -> Response:
        if request.path == "/healthz":
            return Response(200, b"ok\n", "text/plain")
        if request.path == "/readyz":
            problem = self.readiness_problem()
            return Response(503 if problem else 200, f"{problem or 'ready'}\n".encode(), "text/plain")
        token = self.config.web.token
        if token and "token" in request.query:
            if not _same(request.query["token"], token):
                return _page(401, "Not authorised", "<p>Wrong token.</p>")
            rest = urlencode({k: v for k, v in request.query.items() if k != "token"})
            cookie = f"{COOKIE}={_session(token)}; HttpOnly; SameSite=Strict; Path=/"
            return _redirect(request.path + (f"?{rest}" if rest else ""), cookie)
        if token and not self._authorised(request.headers):
            return _page(401, "Not authorised", "<p>Open this page with <code>?token=...</code> "
                         "once, or send <code>Authorization: Bearer ...</code>.</p>")
        with closing(Spool(self.spool.root, self.spool.fsync)) as spool:
            if request.method == "POST":
                return self._post(request, spool)
            return self._get(request, spool)

    def _authorised(self, headers: dict[str, str]) -> bool:
        token = self.config.web.token
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(given.strip(), token):
            return True
        cookies = dict(part.strip().partition("=")[::2] for part in headers.get("cookie", "").split(";"))
        return _same(cookies.get(COOKIE, ""), _session(token))

    def readiness_problem(self) -> str | None:
        problem = listener_problem(self.receiver, self.config.listen.max_associations)
        if problem:
            return problem
        try:
            with closing(Spool(self.spool.root, self.spool.fsync)) as spool:
                spool.db().execute("SELECT COUNT(*) FROM studies WHERE 0").fetchone()
                free_mb = spool.free_mb()
        except Exception as exc:  # any reason the database cannot be read makes the node unready
            return f"the spool database does not open: {type(exc).__name__}: {exc}"
        if free_mb < self.config.storage.min_free_mb:
            return f"{free_mb:.0f} MB free, below storage.min_free_mb {self.config.storage.min_free_mb}"
        return None

    def _get(self, request: Request, spool: Spool) -> Response:
        path = request.path
        if path == "/metrics":
            return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path == "/":
            return _page(200, "Studies", render_index(spool, self.config, _page_number(request)))
        if path == "/outbox":
            return _page(200, "Outbox", render_outbox(spool, self.config, _page_number(request),
                                                       request.query.get("state", ""),
                                                       request.query.get("requeued")))
        if match := OVERLAY_PATH.match(path):
            study_uid, sop_uid = match.groups()
            if not (is_valid_uid(study_uid) and is_valid_uid(sop_uid)):
                return _page(400, "Bad request", "<p>Not a valid UID.</p>")
            row = spool.db().execute("SELECT path FROM outputs WHERE sop_uid = ? AND study_uid = ?"
                                     " AND kind = 'sc'", (sop_uid, study_uid)).fetchone()
            if row is None:
                return _page(404, "Not found", "<p>No such overlay.</p>")
            return Response(200, overlay_png(spool.root / row["path"]), "image/png",
                            (("Cache-Control", "private, max-age=3600"),))
        if match := STUDY_PATH.match(path):
            if not is_valid_uid(match.group(1)):
                return _page(400, "Bad request", "<p>Not a valid UID.</p>")
            body = render_study(spool, self.config, match.group(1))
            return _page(404, "Not found", "<p>No such study.</p>") if body is None else (
                _page(200, "Study", body))
        return _page(404, "Not found", "<p>No such page.</p>")

    def _post(self, request: Request, spool: Spool) -> Response:
        if request.path != "/outbox/retry":
            return _page(404, "Not found", "<p>No such page.</p>")
        if not _same_origin(request.headers):
            return _page(403, "Forbidden", "<p>The form did not come from this dashboard.</p>")
        outbox, now = Outbox(spool), self.clock()
        delivery, destination = request.form.get("delivery", ""), request.form.get("destination")
        if delivery.isdigit():
            count = int(outbox.requeue_delivery(int(delivery), now))
            log.info("web: delivery %s queued again: %s", delivery, bool(count))
        elif destination:
            count = outbox.requeue_failed(now, destination)
            log.info("web: %d failed deliveries to %s queued again", count, destination)
        else:
            return _page(400, "Bad request", "<p>Name a delivery or a destination.</p>")
        self.wake()
        return _redirect(f"/outbox?requeued={count}")


class _Handler(BaseHTTPRequestHandler):
    timeout = 30  # a client that stalls mid-request does not hold its thread for ever
    server_version = "calcnode"

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            form = self._form() if method == "POST" else {}
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            response = self.server.app.respond(Request(method, url.path, query, headers, form))
        except ValueError:
            response = _page(400, "Bad request", "<p>Malformed request.</p>")
        except Exception:  # one broken page must not take the server down; the log says why
            log.exception("web: %s %s failed", method, url.path)
            response = _page(500, "Error", "<p>Internal error; see the node's log.</p>")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline';"
                         " frame-ancestors 'none'")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_FORM_BYTES:
            raise ValueError("form too large")
        text = self.rfile.read(length).decode("utf-8")
        return {k: v[0] for k, v in parse_qs(text).items()}

    def log_message(self, format: str, *args) -> None:
        """Silent: the access line would carry ``?token=``; failures are logged in _answer."""


# --- helpers ---

def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _session(token: str) -> str:
    """The cookie's value: derived from the token (cookie-safe characters, token not echoed)."""
    return hashlib.sha256(f"calcnode-web-session:{token}".encode()).hexdigest()


def _same_origin(headers: dict[str, str]) -> bool:
    """A form post must come from a page of this server: Origin (or Referer) names our Host."""
    source = headers.get("origin") or headers.get("referer")
    host = headers.get("host")
    return bool(source and host and urlsplit(source).netloc == host)


def _page_number(request: Request) -> int:
    value = request.query.get("page", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _redirect(location: str, cookie: str | None = None) -> Response:
    headers = (("Location", location),) + ((("Set-Cookie", cookie),) if cookie else ())
    return Response(303, b"", "text/plain", headers)


def _page(status: int, title: str, body: str) -> Response:
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>calcnode: "
                f"{html.escape(title)}</title><style>{CSS}</style></head><body><nav>"
                "<b>calcnode</b> <a href='/'>Studies</a><a href='/outbox'>Outbox</a>"
                f"<a href='/metrics'>Metrics</a></nav><h1>{html.escape(title)}</h1>{body}"
                f"<footer><p>calcnode {html.escape(__version__)}</p></footer></body></html>")
    return Response(status, document.encode())

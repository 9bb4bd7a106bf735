"""The Turing test's web page: an http.server over a ``TuringSession``.

The page is page.html, page.css and page.js from this package, served as they are, with nothing
fetched from elsewhere; it asks the server for everything else as JSON. Endpoints: / (the
page), /page.css, /page.js, /api/config (the default subject), /api/state?subject=NAME (what to
show next), POST /api/answer, /example.png, /trial.png, and /summary and /summary.json with
``?token=`` the server's ``summary_token`` (403 without it: the results are the operator's
while subjects are answering).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import secrets
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from distsim.turing.common import TuringError
from distsim.turing.session import TrialMismatch, TuringSession
from distsim.turing.stats import summary_html
from shards.cliutil import one_line

# The only files served: a fixed map, so no URL can name another file.
STATIC = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
}


# Each field of a posted answer and its JSON type, checked with type(): Python's bool is an
# int, and true would answer trial 1.
ANSWER_FIELDS = {"subject": str, "condition": str, "trial": int, "answer": str}


def checked_answer(body: Any) -> dict[str, Any]:
    """A posted answer whose fields have their JSON types; TuringError naming one that does not."""
    if not isinstance(body, dict):
        raise TuringError("the answer must be a JSON object")
    for name, kind in ANSWER_FIELDS.items():
        if type(body.get(name)) is not kind:
            what = "an integer" if kind is int else "a string"
            raise TuringError(f"the answer's {name!r} must be {what}, got {_shown(body.get(name))}")
    ms = body.get("response_ms")
    if ms is not None and (type(ms) is not int or ms < 0):
        raise TuringError(
            f"the answer's 'response_ms' must be a whole number >= 0, got {_shown(ms)}"
        )
    return body


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


@functools.cache
def static_file(name: str) -> bytes:
    """One of the page's files, as shipped in the package."""
    return files("distsim.turing").joinpath(name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: TuringServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per image request would bury the URL and any error

    def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-store") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except ConnectionError:  # the tab was closed or reloaded mid-reply: nothing to tell
            self.close_connection = True

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _error(self, status: int, message: str, **extra: Any) -> None:
        self._json(status, {"error": message, **extra})

    def do_GET(self) -> None:  # noqa: N802
        session = self.server.session
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path in STATIC:
                name, content_type = STATIC[url.path]
                self._send(200, static_file(name), content_type)
            elif url.path == "/api/config":
                self._json(200, {"subject": session.default_subject})
            elif url.path == "/api/state":
                self._json(200, session.state(q.get("subject", "")))
            elif url.path == "/example.png":
                png = session.example_png(q.get("set", ""), int(q.get("i", "")))
                self._send(200, png, "image/png", "private, max-age=3600")
            elif url.path == "/trial.png":
                png = session.trial_png(
                    q.get("subject", ""), q.get("condition", ""), int(q.get("trial", ""))
                )
                self._send(200, png, "image/png", "private, max-age=3600")
            elif url.path in ("/summary", "/summary.json") and not self.server.may_see(q):
                # A subject with a second tab would learn whether each answer was right.
                self._error(403, "the summary needs the token the server printed when it started")
            elif url.path == "/summary":
                json_url = f"/summary.json?{urlencode({'token': self.server.summary_token})}"
                page = summary_html(session.summary(), json_url)
                self._send(200, page.encode(), "text/html; charset=utf-8")
            elif url.path == "/summary.json":
                self._json(200, session.summary())
            elif url.path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            else:
                self._error(404, f"no page {url.path}")
        except (KeyError, IndexError) as e:
            self._error(404, f"no such image: {one_line(e)}")
        except ValueError as e:  # TuringError, and int() of a bad number
            self._error(400, one_line(e))
        except Exception as e:  # a bug: answer the page, then let socketserver print it
            self._error(500, one_line(e))
            raise

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        session = self.server.session
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= 65536:
            self.close_connection = True  # an unread body would be read as the next request
            self._error(400, "the answer must be a JSON body of at most 64 KiB")
            return
        raw = self.rfile.read(length)
        if urlsplit(self.path).path != "/api/answer":
            self._error(404, f"no page {self.path}")
            return
        subject = None
        try:
            body = checked_answer(json.loads(raw))
            subject = body["subject"]
            session.answer(
                subject, body["condition"], body["trial"], body["answer"], body.get("response_ms")
            )
            self._json(200, session.state(subject))
        except TrialMismatch as e:
            # The page then shows the trial the log says is next (e.g. after a double click).
            assert subject is not None
            self._error(409, one_line(e), state=session.state(subject))
        except ValueError as e:  # TuringError, JSONDecodeError
            self._error(400, one_line(e))
        except OSError as e:  # the log could not be written: the answer is not saved
            self._error(500, f"answer not saved: {one_line(e)}")
        except Exception as e:
            self._error(500, f"answer not saved: {one_line(e)}")
            raise


class TuringServer(ThreadingHTTPServer):
    """The page for a session; the summary only for whoever has ``summary_token``."""

    daemon_threads = True

    def __init__(self, session: TuringSession, host: str, port: int) -> None:
        self.session = session
        self.summary_token = secrets.token_urlsafe(16)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def summary_url(self) -> str:
        return f"{self.url}summary?{urlencode({'token': self.summary_token})}"

    def may_see(self, query: dict[str, str]) -> bool:
        """Whether a request's query holds the summary token."""
        given = query.get("token", "").encode()
        return secrets.compare_digest(given, self.summary_token.encode())


def make_server(session: TuringSession, host: str = "127.0.0.1", port: int = 0) -> TuringServer:
    """An HTTP server for ``session`` (port 0: a free one; see ``.url``); call serve_forever."""
    return TuringServer(session, host, port)


def is_loopback(host: str) -> bool:
    """Whether serving on ``host`` keeps the page on this machine: 127.0.0.0/8, ::1, localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False

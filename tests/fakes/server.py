"""A tiny HTTP server on 127.0.0.1 for driving real client libraries in tests.

Each fake API is a ``route(request) -> Reply`` function; the server runs it in a background thread
on an ephemeral port, records every request (path, query, headers, arrival time) and can be told to
answer the next requests with scripted failures (an HTTP status or a dropped connection) before it
serves real data again. Nothing here touches the internet.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DROP = -1
"""A scripted 'status' that closes the connection without any response."""
STALL = -2
"""A scripted 'status' that accepts the request and answers nothing for STALL_SECONDS."""
STALL_SECONDS = 2.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> tuple[bytes, str]:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return self.body, "application/octet-stream"


Route = Callable[[Request], Reply]


class FakeServer:
    """Serves ``route`` on ``http://127.0.0.1:<port>``; use as a context manager.

    ``fail(statuses, when=...)`` queues failures for the next matching requests: an HTTP status
    (answered with a small JSON error body) or :data:`DROP`. ``garble(bodies, when=...)`` answers
    the next matching requests 200 with a body of the test's choosing (text that is not JSON, JSON
    of the wrong shape), after the route ran (its side effects happen) unless ``route=False``.
    """

    def __init__(self, route: Route) -> None:
        self.route = route
        self.requests: list[Request] = []
        self._failures: list[tuple[int, Callable[[Request], bool]]] = []
        self._garbles: list[tuple[bytes | str | dict | list, Callable[[Request], bool], bool]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def fail(self, statuses: list[int], when: Callable[[Request], bool] = lambda r: True) -> None:
        with self._lock:
            self._failures.extend((status, when) for status in statuses)

    def garble(
        self,
        bodies: list[bytes | str | dict | list],
        when: Callable[[Request], bool] = lambda r: True,
        *,
        route: bool = True,
    ) -> None:
        """Answer the next matching requests ``200`` with these bodies (after running the route if ``route``)."""
        with self._lock:
            self._garbles.extend((body, when, route) for body in bodies)

    def _next_garble(self, request: Request) -> tuple[bytes | str | dict | list, bool] | None:
        with self._lock:
            for i, (body, when, route) in enumerate(self._garbles):
                if when(request):
                    del self._garbles[i]
                    return body, route
        return None

    def matching(self, predicate: Callable[[Request], bool]) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if predicate(r)]

    def _next_failure(self, request: Request) -> int | None:
        with self._lock:
            self.requests.append(request)
            for i, (status, when) in enumerate(self._failures):
                if when(request):
                    del self._failures[i]
                    return status
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between header and body
            wbufsize = 1 << 16

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                request = Request(method, unquote(parts.path), query, dict(self.headers.items()), time.monotonic())
                failure = server._next_failure(request)
                if failure == DROP:
                    self.close_connection = True
                    self.connection.close()
                    return
                if failure == STALL:
                    time.sleep(STALL_SECONDS)
                    self.close_connection = True
                    return
                garbled = server._next_garble(request) if failure is None else None
                if failure is not None:
                    reply = Reply(failure, {"code": failure, "message": f"scripted failure {failure}"})
                elif garbled is not None:
                    if garbled[1]:
                        server.route(request)  # the side effects happen; the answer is lost
                    reply = Reply(200, garbled[0])
                else:
                    reply = server.route(request)
                body, content_type = reply.payload()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.headers.get("Content-Type", content_type))
                self.send_header("Content-Length", str(len(body)))
                for name, value in reply.headers.items():
                    if name != "Content-Type":
                        self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                pass

        return Handler

"""A small HTTP reverse proxy on 127.0.0.1 that adds latency, counts bytes and can fail.

Azurite on loopback answers in well under a millisecond; a real storage account is 10-50 ms
away. Put this in front of it to see what parallel transfers buy (`delay`), to count what
an upload really sent (`bytes_in`), or to answer a fraction of requests with 503 Server
Busy as a throttled account does (`fail_fraction`), or to refuse every request whose path
matches a pattern with 403, as an account does once a key is rotated or a role removed
(`forbid`).
"""
from __future__ import annotations

import http.client
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade"}


class DelayProxy:
    def __init__(self, upstream: str, delay: float = 0.0, fail_fraction: float = 0.0,
                 seed: int = 1, forbid: str = "") -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_path = parts.path.rstrip("/")
        self.delay = delay
        self.fail_fraction = fail_fraction
        self.fail_next = 0  # answer this many of the next requests 503, then pass them on
        self.forbid = forbid  # a regex: answer 403 to every request whose path and query match
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.failed = 0
        self.bytes_in = 0  # request bodies sent by the client
        self.bytes_out = 0  # response bodies sent to the client
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.upstream_path}"

    def start(self) -> "DelayProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset_counts(self) -> None:
        with self.lock:
            self.requests = self.failed = self.bytes_in = self.bytes_out = 0

    def _should_fail(self) -> bool:
        with self.lock:
            self.requests += 1
            fail = self.fail_fraction > 0 and self.random.random() < self.fail_fraction
            if self.fail_next > 0:  # a burst: the next N requests, whatever they are
                self.fail_next -= 1
                fail = True
            self.failed += fail
            return fail

    def _count(self, sent: int, received: int) -> None:
        with self.lock:
            self.bytes_in += sent
            self.bytes_out += received

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.delay:
                    time.sleep(proxy.delay)
                if proxy.forbid and re.search(proxy.forbid, self.path):
                    self._refuse()
                    return
                if proxy._should_fail():
                    self._busy()
                    return
                upstream = getattr(self, "_upstream", None)
                if upstream is None:
                    upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port,
                                                          timeout=120)
                    self._upstream = upstream
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                self.wfile.flush()
                proxy._count(len(body), len(data))

            def _busy(self) -> None:
                self._error(503, "Server Busy", "ServerBusy", "The server is busy")

            def _refuse(self) -> None:
                self._error(403, "Forbidden", "AuthorizationPermissionMismatch",
                            "This request is not authorized to perform this operation using "
                            "this permission")

            def _error(self, status: int, reason: str, code: str, message: str) -> None:
                """An error as Azure Storage answers it (XML body, x-ms-error-code)."""
                body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                        f"<Message>{message} (injected by the test proxy).</Message></Error>").encode()
                self.send_response(status, reason)
                self.send_header("Content-Type", "application/xml")
                self.send_header("x-ms-error-code", code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward

        return Handler


def start_in_subprocess(upstream: str, delay: float = 0.0, fail_fraction: float = 0.0,
                        forbid: str = ""):
    """The proxy in its own process, so its threads do not share the caller's GIL.

    Returns (process, url). Stop it with process.terminate().
    """
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.proxy", upstream, str(delay),
                             str(fail_fraction), forbid], cwd=repo, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError("the proxy did not start")
    return proc, url


if __name__ == "__main__":
    import sys
    server = DelayProxy(sys.argv[1], delay=float(sys.argv[2]), fail_fraction=float(sys.argv[3]),
                        forbid=sys.argv[4] if len(sys.argv) > 4 else "")
    print(server.url, flush=True)
    server.server.serve_forever()

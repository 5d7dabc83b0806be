"""The HTTP side: `FakeBatch`, a Batch account on 127.0.0.1 served from a background thread.

Every request goes through the same steps, in the order the real front end would apply them:
record it; add the configured latency; maybe answer an injected 503/500 (before any work, so
a retry is safe); check the SharedKey signature and the api-version; find the spec operation
for the method and path; read and validate the JSON body against the spec; run the handler.
Errors come back as the spec's BatchError body. Successful JSON answers are checked against
the spec's response schema too, and any mismatch is kept in `response_problems` (a bug in
the fake, not in the client).

stdlib http.server on HTTP/1.1 stalls ~45 ms per request through Nagle + delayed ACK unless
the handler writes through one unbuffered socket (`wbufsize = -1`) with TCP_NODELAY
(`disable_nagle_algorithm`), measured in shared/TESTING.md; both are set below.
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
import ssl
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import errors
from .api import HANDLERS, Request, Response
from .auth import Credentials, authenticate
from .knobs import Knobs
from .runner import Engine
from .spec import API_VERSION, INVALID_BODY, MISSING, Problem, load_spec
from .state import PreparationRun, Store, Task

JSON_TYPE = "application/json;odata=minimalmetadata"


@dataclass
class RecordedRequest:
    """One request as received (the Authorization header is left out)."""

    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON when it parses, else the raw text, else None
    operation: str | None = None  # the spec's operationId, once matched
    status: int = 0
    error_code: str | None = None
    received: float = field(default_factory=time.time)


def _problem_error(problem: Problem) -> errors.BatchServiceError:
    if problem.kind == MISSING:
        return errors.missing_property(problem.path)
    if problem.kind == INVALID_BODY:
        return errors.invalid_body(problem.reason, problem.path or None)
    return errors.invalid_value(problem.path, problem.value, problem.reason)


class FakeBatch:
    """A fake Azure Batch account (API 2025-06-01) that really runs its tasks.

    `FakeBatch(name, key).start()` returns the URL to give `BatchClient`; `stop()` ends the
    server and kills every task process. Tests read `requests`, `request_count`, `tasks`
    and `task(job_id, task_id)`, and steer it through `knobs` (see knobs.Knobs), which may
    also be given as keyword arguments: `FakeBatch("acct", key, busy_fraction=0.2)`.
    """

    def __init__(self, account_name: str = "fakebatch", account_key: str | None = None, *,
                 root: Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 knobs: Knobs | None = None, validate_responses: bool = True,
                 tls: tuple[Path, Path] | None = None, token_audience: str | None = None,
                 **knob_values: Any) -> None:
        self.account_name = account_name
        self.account_key = account_key or base64.b64encode(os.urandom(64)).decode("ascii")
        self.knobs = knobs or Knobs()
        for name, value in knob_values.items():
            if not hasattr(self.knobs, name):
                raise TypeError(f"FakeBatch has no knob {name!r}")
            setattr(self.knobs, name, value)
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="fake-batch-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Nodes' folders live here; a task's unprivileged user must be able to reach them
        # (mkdtemp makes 0700, which only root could enter).
        self.root.chmod(0o755)
        self.host, self.port = host, port
        self.validate_responses = validate_responses
        self.credentials = Credentials(account_name, self.account_key, token_audience)
        self.tls = tls  # (certificate, key): serve HTTPS, as the real endpoint does
        self.spec = load_spec()
        self.store = Store()
        self.engine = Engine(self.store, self.knobs, self.root, account_name, lambda: self.url)
        self.response_problems: list[str] = []  # the fake's own answers that break the spec
        self._handler_errors: list[str] = []  # tracebacks of unexpected exceptions (fake bugs)
        self._requests: list[RecordedRequest] = []
        self._record_lock = threading.Lock()
        self._random = random.Random(self.knobs.seed)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> str:
        handler = type("BoundHandler", (_Handler,), {"fake": self})
        self._server = _Server((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        # a short poll interval: shutdown() waits up to one interval (0.5 s by default)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        name="fake-batch-http", daemon=True)
        self._thread.start()
        self.engine.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.engine.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "FakeBatch":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def client(self, **kwargs: Any):
        """A BatchClient (azure-batch) for this account; kwargs go to the client (retry_total...)."""
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential
        return BatchClient(self.url, AzureNamedKeyCredential(self.account_name, self.account_key),
                           **kwargs)

    # -- what tests read ----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._record_lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._record_lock:
            return len(self._requests)

    def clear_requests(self) -> None:
        with self._record_lock:
            self._requests.clear()

    @property
    def tasks(self) -> list[Task]:
        """Every task ever added (also of deleted jobs), in order. Treat as read-only."""
        with self.store.lock:
            return list(self.store.all_tasks)

    def create_pool_through_arm(self, body: dict[str, Any], identities: list[str]) -> None:
        """A pool made through Azure Resource Manager (the portal, an ARM template): the only
        way Batch gives a pool user-assigned managed identities. `body` is written as for the
        Batch API's pool creation and checked the same way."""
        problems = self.spec.validate_request(body, {"$ref": "#/definitions/BatchPoolCreateOptions"})
        if problems:
            raise ValueError(f"invalid pool body: {problems[0]}")
        from . import rules
        from .api import add_pool
        rules.check_pool(body, self.knobs, identities)
        with self.store.lock:
            add_pool(self, body["id"], body).identities = list(identities)

    @property
    def preparation_runs(self) -> list[PreparationRun]:
        """Every job preparation task that finished on a node, in order (a re-created Spot
        node adds one more). Treat as read-only."""
        with self.store.lock:
            return list(self.store.preparation_runs)

    @property
    def server_errors(self) -> list[str]:
        """Tracebacks of the fake's own bugs (request handlers and task workers): keep empty."""
        return self._handler_errors + self.engine.crashes

    def task(self, job_id: str, task_id: str) -> Task:
        """The most recent task with these ids."""
        for task in reversed(self.tasks):
            if task.job_id.lower() == job_id.lower() and task.id.lower() == task_id.lower():
                return task
        raise KeyError(f"{job_id}/{task_id}")

    # -- request processing -------------------------------------------------------------

    def _record(self, record: RecordedRequest) -> None:
        with self._record_lock:
            self._requests.append(record)

    def _injected_fault(self) -> errors.BatchServiceError | None:
        with self._record_lock:
            draw = self._random.random()
        if draw < self.knobs.busy_fraction:
            error = errors.server_busy()
            if self.knobs.retry_after is not None:
                error.headers["Retry-After"] = str(self.knobs.retry_after)
            return error
        draw -= self.knobs.busy_fraction
        if draw < self.knobs.internal_error_fraction:
            return errors.internal_error()
        draw -= self.knobs.internal_error_fraction
        if draw < self.knobs.throttled_fraction:
            error = errors.BatchServiceError(429, "TooManyRequests",
                                             "The request rate is too high; retry later.")
            if self.knobs.retry_after is not None:
                error.headers["Retry-After"] = str(self.knobs.retry_after)
            return error
        draw -= self.knobs.throttled_fraction
        if draw < self.knobs.timeout_fraction:
            return errors.BatchServiceError(408, "OperationTimedOut",
                                            "The operation could not be completed in time.")
        return None

    def drop_reply(self, operation: str | None) -> bool:
        """Whether to close the connection instead of answering (knob drop_replies)."""
        with self._record_lock:
            left = self.knobs.drop_replies.get(operation or "", 0)
            if left > 0:
                self.knobs.drop_replies[operation or ""] = left - 1
                return True
        return False

    def handle(self, method: str, target: str, headers: list[tuple[str, str]], raw_body: bytes,
               host: str, record: RecordedRequest) -> Response:
        """Everything but the socket: returns the answer (raises nothing)."""
        if self.knobs.latency:
            time.sleep(self.knobs.latency)
        operation = None
        try:
            fault = self._injected_fault()
            if fault is not None:
                raise fault
            authenticate(method, target, headers, self.credentials, self.knobs.clock_skew_seconds)
            parts = urlsplit(target)
            version = record.query.get("api-version")
            if version != API_VERSION:
                raise errors.query_problem("api-version", version,
                                           f"this service speaks {API_VERSION}")
            operation, params, path_known = self.spec.find(method, parts.path)
            if operation is None:
                if path_known:
                    raise errors.BatchServiceError(405, "UnsupportedHttpVerb",
                                                   f"The resource doesn't support {method}.")
                raise errors.BatchServiceError(400, "InvalidUri",
                                               "The requested URI does not represent any "
                                               "resource on the server.")
            record.operation = operation.operation_id
            handler = HANDLERS.get(operation.operation_id)
            if handler is None:
                raise errors.operation_not_supported(f"{operation.operation_id} ({method} "
                                                     f"{operation.template})")
            body = self._read_body(operation, raw_body)
            request = Request(method, parts.path, {k: unquote(v) for k, v in params.items()},
                              record.query, record.headers, body, raw_body,
                              f"{'https' if self.tls else 'http'}://{host}")
            response = handler(self, request)
            if self.validate_responses and "$select" not in record.query:
                self._check_response(operation, response)
            return response
        except errors.BatchServiceError as error:
            request_id = str(uuid.uuid4())
            return Response(error.status, error.body(request_id), dict(error.headers))
        except Exception:  # a bug in the fake: answer 500 and keep the traceback for the test
            self._handler_errors.append(traceback.format_exc())
            error = errors.internal_error()
            return Response(500, error.body(str(uuid.uuid4())))

    def _read_body(self, operation, raw_body: bytes) -> Any:
        if len(raw_body) > self.knobs.max_body_bytes:
            raise errors.body_too_large(f"The request body has {len(raw_body)} bytes; the "
                                        f"maximum is {self.knobs.max_body_bytes}.")
        if operation.body_schema is None:
            return None
        if not raw_body.strip():
            if operation.body_required:
                raise errors.invalid_body("The request body is missing.")
            return None
        try:
            body = json.loads(raw_body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise errors.invalid_body(f"The body is not valid JSON: {exc}") from None
        problems = self.spec.validate_request(body, operation.body_schema)
        if problems:
            raise _problem_error(problems[0])
        return body

    def _check_response(self, operation, response: Response) -> None:
        schema = operation.response_schema(response.status)
        if schema is None or not isinstance(response.body, dict):
            return
        for problem in self.spec.validate_response(response.body, schema):
            self.response_problems.append(
                f"{operation.operation_id} {response.status}: {problem.kind} at "
                f"'{problem.path}': {problem.reason}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (SDK retry, timeout, test teardown) is not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Reads one request, passes it to FakeBatch.handle, writes the answer."""

    fake: FakeBatch  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    wbufsize = -1  # see the module docstring: no Nagle stall
    disable_nagle_algorithm = True
    server_version = "FakeBatch/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request list is the log

    def _read_raw_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        fake = self.fake
        raw_body = self._read_raw_body()
        header_pairs = list(self.headers.items())
        target = self.path
        if target.startswith(("http://", "https://")):  # absolute-form request target
            parts = urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        parts = urlsplit(target)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        try:
            shown: Any = json.loads(raw_body) if raw_body else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            shown = raw_body.decode("utf-8", "replace")
        record = RecordedRequest(
            self.command, unquote(parts.path), query,
            {name.lower(): value for name, value in header_pairs if name.lower() != "authorization"},
            shown)
        fake._record(record)
        host = self.headers.get("Host") or f"{fake.host}:{fake.port}"
        response = fake.handle(self.command, target, header_pairs, raw_body, host, record)
        if response.status < 400 and fake.drop_reply(record.operation):
            record.status = -1  # carried out, never answered
            self.close_connection = True
            self.connection.shutdown(2)
            return
        record.status = response.status
        if response.status >= 400 and isinstance(response.body, dict):
            record.error_code = response.body.get("code")
        self._write(response, record)

    def _write(self, response: Response, record: RecordedRequest) -> None:
        if isinstance(response.body, (dict, list)):
            payload = json.dumps(response.body).encode("utf-8")
        elif isinstance(response.body, bytes):
            payload = response.body
        else:
            payload = b""
        self.send_response(response.status)
        headers = {"request-id": str(uuid.uuid4()), **response.headers}
        if record.headers.get("return-client-request-id", "").lower() == "true":
            headers["client-request-id"] = record.headers.get("client-request-id", "")
        if payload or response.body is not None:
            headers.setdefault("Content-Type", response.content_type)
        headers.setdefault("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

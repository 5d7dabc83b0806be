"""What the user sees of the network: retries as they happen, requests under -v, and a
failure to connect as one line that says where, what was tried and why.

The Azure SDKs retry on their own, silently: a wrong account URL used to mean 17 s of
nothing, then `internal error: ServiceRequestError(...)`. Here the SDKs' retry policies are
subclassed only to say each retry before sleeping, hooks log each request with -v (method,
path, status, time; query strings and secrets left out), and `network_failure` turns the
SDKs' connection errors into a ToolError naming the endpoint and the likely cause.
"""
from __future__ import annotations

import os
import re
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.policies import RetryPolicy
from azure.storage.blob import ExponentialRetry

from common.errors import ToolError
from common.redaction import redact

Say = Callable[[str], None]
_STARTED = "batch_tool_started"


def retry_scale() -> float:
    """How much of each retry's back-off to wait: 1 for real use. The tests' fakes answer
    503s and drop replies on purpose; BATCH_TOOL_RETRY_SCALE (e.g. 0.02) makes them wait
    for the same number of retries without the seconds, as BATCH_TOOL_POLL_SECONDS does
    for the polling interval."""
    try:
        return max(0.0, float(os.environ.get("BATCH_TOOL_RETRY_SCALE", "1")))
    except ValueError:
        return 1.0


def _where(request: Any) -> str:
    parts = urlsplit(getattr(request, "url", "") or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "the service"


def _why(error: BaseException | None) -> str:
    text = str(error or "")
    for pattern, cause in _CAUSES:
        if re.search(pattern, text, re.IGNORECASE):
            return cause
    first = (text.splitlines() or ["no answer"])[0]
    return redact(first)[:160]


_CAUSES = (
    (r"Name or service not known|Failed to resolve|getaddrinfo|nodename nor servname|"
     r"Temporary failure in name resolution", "the host name does not resolve (a typo in the "
     "account name or URL, or no DNS)"),
    (r"Connection refused", "nothing answers on that address and port (wrong URL or port?)"),
    (r"timed out|Timeout", "no answer in time (a firewall, a proxy, or no network)"),
    (r"CERTIFICATE_VERIFY_FAILED|SSLError|certificate", "the TLS certificate is not trusted "
     "(a proxy that inspects TLS? set REQUESTS_CA_BUNDLE to its CA)"),
    (r"Network is unreachable|No route to host", "no route to the host (offline?)"),
    (r"Connection aborted|RemoteDisconnected|Connection reset", "the connection was dropped"),
)


def _last_attempt(settings: dict[str, Any]) -> str:
    """Where the last attempt went and why it failed (a retry policy's history)."""
    history = settings.get("history") or [None]
    last = history[-1]
    status = getattr(getattr(last, "http_response", None), "status_code", None)
    why = f"HTTP {status}" if status else _why(getattr(last, "error", None))
    return f"{_where(getattr(last, 'http_request', None))}: {why}"


class ReportingStorageRetry(ExponentialRetry):
    """azure-storage-blob's exponential retry, saying each retry before it waits."""

    def __init__(self, say: Say | None = None, scale: float = 1.0, **kwargs: Any) -> None:
        # The policy also caps retries per kind at 3 by default, below the total: a fourth
        # 503 (ServerBusy, storage's throttling) in a row then failed a download while the
        # log still said "retry 3 of 6". Busy answers and cut reads get the total; a
        # connection that cannot be made (wrong URL, DNS) keeps 3, so it fails in ~17 s.
        total = kwargs.get("retry_total", 10)
        for kind in ("retry_status", "retry_read"):
            kwargs.setdefault(kind, total)
        super().__init__(**kwargs)
        self.say, self.scale = say, scale

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return super().get_backoff_time(settings) * self.scale

    def sleep(self, settings: dict[str, Any], transport: Any) -> None:
        if self.say is not None:
            self.say(f"storage: {_last_attempt(settings)}; retry {settings['count']} of "
                     f"{self.total_retries}, in {self.get_backoff_time(settings):.0f} s")
        super().sleep(settings, transport)


class ReportingRetry(RetryPolicy):
    """azure-core's retry (the Batch client's), saying each retry before it waits."""

    def __init__(self, say: Say | None = None, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.say, self.scale = say, scale

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return super().get_backoff_time(settings) * self.scale

    def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
        if self.say is not None:
            self.say(f"Batch: {_last_attempt(settings)}; retry {len(settings.get('history') or [])} "
                     f"of {self.total_retries}, in {self.get_backoff_time(settings):.1f} s")
        super().sleep(settings, transport, response=response)


class RequestLog:
    """-v: one line per request (method, host, path, status, milliseconds); no query string,
    so no SAS signature, and secrets redacted."""

    def __init__(self, say: Say, secrets: tuple[str, ...] = ()) -> None:
        self.say, self.secrets = say, secrets

    def request(self, pipeline_request: Any) -> None:
        pipeline_request.context[_STARTED] = time.perf_counter()

    def response(self, pipeline_response: Any) -> None:
        started = pipeline_response.context.get(_STARTED)
        request = pipeline_response.http_request
        parts = urlsplit(request.url)
        took = f" {1000 * (time.perf_counter() - started):.0f} ms" if started else ""
        status = getattr(pipeline_response.http_response, "status_code", "?")
        self.say(redact(f"{request.method} {parts.netloc}{parts.path} -> {status}{took}",
                        self.secrets))

    def hooks(self) -> dict[str, Any]:
        return {"raw_request_hook": self.request, "raw_response_hook": self.response}


def network_failure(error: ServiceRequestError | ServiceResponseError, endpoints: dict[str, str],
                    tried: str = "") -> ToolError:
    """One line: which endpoint (and the configuration key naming it), what was tried, and
    the likely cause — never a traceback for something a user can fix."""
    text = str(error)

    def named(url: str) -> int:
        """How surely the error is about this endpoint: host and port named, or the host."""
        parts = urlsplit(url)
        if not parts.hostname or parts.hostname not in text:
            return 0
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return 2 if f"port={port}" in text or f"{parts.hostname}:{port}" in text else 1
    ranked = sorted(((named(url), name, url) for name, url in endpoints.items() if url), reverse=True)
    if ranked and ranked[0][0]:
        _, key, where = ranked[0]
    else:
        key, where = "", next(iter(endpoints.values()), "the service")
    check = f": check {key} and the network" if key else ": check the network"
    action = f" ({tried})" if tried else ""
    return ToolError(f"cannot reach {redact(where)}{action}: {_why(error)}{check}")

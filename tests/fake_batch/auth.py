"""Batch SharedKey authentication, rebuilt from the raw request as the service receives it.

The string to sign (azure-batch's BatchSharedKeyAuthPolicy, measured in shared/TESTING.md):
the method; the values of eleven standard headers, each followed by a newline (for methods
other than GET/HEAD a missing Content-Length counts as "0"); every header whose name
contains "ocp-", lower-cased and sorted, as "name:value\n"; "/{account}{raw path}"; then for
each query parameter, sorted by name, "\n{name}:{first decoded value}" (empty values are left
out). HMAC-SHA256 keyed with the base64-decoded account key, base64 encoded.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Iterable
from urllib.parse import parse_qs, urlsplit

from . import errors

SIGNED_HEADERS = ("content-encoding", "content-language", "content-length", "content-md5",
                  "content-type", "date", "if-modified-since", "if-match", "if-none-match",
                  "if-unmodified-since", "range")


@dataclass(frozen=True)
class Credentials:
    account: str
    key: str  # base64, as the portal shows it
    # Entra ID: the audience a bearer token must carry (None: tokens are refused, keys only)
    token_audience: str | None = None


def check_token(token: str, audience: str) -> None:
    """A bearer token's claims as the service would check them (its signature is not: the
    test token endpoint has no real key); the wrong audience, an expired token or a foreign
    issuer is refused with the service's 401."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        raise errors.BatchServiceError(401, "InvalidAuthenticationInfo",
                                       "The token is not a JWT.") from None
    if claims.get("aud") != audience:
        raise errors.BatchServiceError(401, "InvalidAuthenticationTokenAudience",
                                       f"The access token has an invalid audience: {claims.get('aud')}")
    if float(claims.get("exp", 0)) < time.time():
        raise errors.BatchServiceError(401, "ExpiredAuthenticationToken", "The access token expired.")
    if not str(claims.get("iss", "")).startswith("https://sts.windows.net/"):
        raise errors.BatchServiceError(401, "InvalidAuthenticationInfo", "Unknown token issuer.")


def string_to_sign(method: str, raw_target: str, headers: Iterable[tuple[str, str]],
                   account: str) -> str:
    """The canonical string for a request; `raw_target` is the path and query as sent."""
    target = urlsplit(raw_target)
    present = {}
    ocp = []
    for name, value in headers:
        lower = name.lower()
        if not value:
            continue  # the client skips empty headers; so must we
        present.setdefault(lower, value)
        if "ocp-" in lower:
            ocp.append((lower, value))
    if method not in ("GET", "HEAD"):
        present.setdefault("content-length", "0")
    text = method + "\n" + "".join(present.get(h, "") + "\n" for h in SIGNED_HEADERS)
    text += "".join(f"{name}:{value}\n" for name, value in sorted(ocp))
    text += f"/{account}{target.path}"
    query = parse_qs(target.query)
    for name in sorted(query):
        if query[name][0]:
            text += f"\n{name}:{query[name][0]}"
    return text


def sign(key: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def authenticate(method: str, raw_target: str, headers: list[tuple[str, str]],
                 credentials: Credentials, clock_skew: float) -> None:
    """Raise the BatchServiceError the service would answer, or return if the request is signed."""
    lookup = {name.lower(): value for name, value in headers}
    authorization = lookup.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme == "Bearer" and credentials.token_audience:
        check_token(token, credentials.token_audience)
        return
    account, _, signature = token.partition(":")
    if scheme != "SharedKey" or not account or not signature:
        raise errors.missing_authentication()
    if account != credentials.account:
        raise errors.authentication_failed(
            f"The account '{account}' in the Authorization header is not this account "
            f"('{credentials.account}').")
    date = lookup.get("ocp-date") or lookup.get("date")
    if not date:
        raise errors.authentication_failed("The request has neither an ocp-date nor a Date header.")
    try:
        when = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise errors.authentication_failed(f"The date '{date}' is not an RFC 1123 date.") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if abs((datetime.now(timezone.utc) - when).total_seconds()) > clock_skew:
        raise errors.authentication_failed(
            f"Request date header too old or too far in the future: '{date}'.")
    text = string_to_sign(method, raw_target, headers, credentials.account)
    expected = sign(credentials.key, text)
    if not hmac.compare_digest(expected, signature):
        shown = text.replace("\n", "\\n")
        raise errors.authentication_failed(
            f"The MAC signature found in the HTTP request '{signature}' is not the same as any "
            f"computed signature. Server used following string to sign: '{shown}'.")

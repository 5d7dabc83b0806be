"""A stand-in for Entra ID: a managed-identity token endpoint on 127.0.0.1.

azure-identity's DefaultAzureCredential asks a managed identity for tokens when the
environment names an endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER, as on App Service); this
server answers there with a JWT for the resource asked (`aud`), with the claims Azurite's
basic OAuth checks (issuer, audience, not-before/expiry) and the fake Batch service checks.
Tokens are not signed with a real key: nothing here trusts them beyond those claims, as
Azurite's "basic" level documents.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ISSUER = f"https://sts.windows.net/{TENANT}/"


def _part(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def mint(resource: str, lifetime: int = 3600, object_id: str | None = None) -> str:
    now = int(time.time())
    claims = {"aud": resource.rstrip("/") if "storage" in resource else resource, "iss": ISSUER,
              "iat": now - 60, "nbf": now - 60, "exp": now + lifetime, "tid": TENANT,
              "oid": object_id or str(uuid.uuid4()), "sub": "batch-campaigns-tests"}
    return f"{_part({'alg': 'HS256', 'typ': 'JWT'})}.{_part(claims)}.c2lnbmF0dXJl"


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class TokenServer:
    """`env` holds what a process needs to sign in here; `resources` what was asked for."""

    def __init__(self) -> None:
        self.secret = uuid.uuid4().hex
        self.object_id = str(uuid.uuid4())
        self.resources: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                query = parse_qs(urlsplit(self.path).query)
                if self.headers.get("X-IDENTITY-HEADER") != server.secret:
                    self.send_response(401)
                    self.end_headers()
                    return
                resource = query.get("resource", [""])[0]
                server.resources.append(resource)
                body = json.dumps({"access_token": mint(resource, object_id=server.object_id),
                                   "expires_on": str(int(time.time()) + 3600),
                                   "resource": resource, "token_type": "Bearer"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{self._server.server_address[1]}/msi/token",
                "IDENTITY_HEADER": self.secret}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""A stand-in for a container registry's HTTP API v2 on 127.0.0.1: enough of the distribution
spec for the dry run's image size — a Bearer challenge on /v2/<name>/manifests/<ref>, a token
endpoint (anonymous, or Basic auth for a private image), an OCI image index naming a
linux/amd64 and a linux/arm64 manifest, and the manifests with their layer sizes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "registry-test-token"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Repository:
    layers: tuple[int, ...]  # compressed sizes, bytes
    config_size: int = 1_234
    credentials: tuple[str, str] | None = None  # private: (user, password) for the token


@dataclass
class RegistryServer:
    repositories: dict[str, Repository]  # "name:tag" -> its image
    requests: list[str] = field(default_factory=list)

    def start(self) -> "RegistryServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                server.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/token":
                    self._token(parse_qs(parts.query))
                elif parts.path.startswith("/v2/") and "/manifests/" in parts.path:
                    self._manifest(*parts.path[len("/v2/"):].split("/manifests/", 1))
                else:
                    self._send(404, {"errors": [{"code": "NOT_FOUND"}]})

            def _token(self, query) -> None:
                scope = query.get("scope", [""])[0]  # repository:<name>:pull
                name = scope.split(":")[1] if scope.count(":") >= 2 else ""
                wanted = next((r.credentials for key, r in server.repositories.items()
                               if key.split(":")[0] == name), None)
                if wanted is not None:
                    given = self.headers.get("Authorization", "")
                    expected = "Basic " + base64.b64encode(":".join(wanted).encode()).decode()
                    if given != expected:
                        self._send(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                        return
                self._send(200, {"token": TOKEN})

            def _manifest(self, name: str, reference: str) -> None:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    host = self.headers.get("Host")
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token",'
                                     f'service="test-registry",scope="repository:{name}:pull"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                repo = server.repositories.get(f"{name}:{reference}")
                if repo is not None:  # the tag names an index of platforms
                    self._send(200, server.index(name, reference),
                               "application/vnd.oci.image.index.v1+json")
                    return
                for key, repo in server.repositories.items():
                    if key.split(":")[0] == name and reference in server.manifests(key):
                        self._send(200, server.manifests(key)[reference],
                                   "application/vnd.oci.image.manifest.v1+json")
                        return
                self._send(404, {"errors": [{"code": "MANIFEST_UNKNOWN"}]})

            def _send(self, status: int, body: dict, kind: str = "application/json") -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def manifests(self, key: str) -> dict[str, dict]:
        """digest -> manifest: the amd64 one as configured, an arm64 one ten times larger."""
        repo = self.repositories[key]
        found = {}
        for arch, scale in (("amd64", 1), ("arm64", 10)):
            body = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "size": repo.config_size, "digest": _digest(f"{key}{arch}c".encode())},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                "size": size * scale, "digest": _digest(f"{key}{arch}{i}".encode())}
                               for i, size in enumerate(repo.layers)]}
            found[_digest(json.dumps(body).encode())] = dict(body, platform=arch)
        return found

    def index(self, name: str, reference: str) -> dict:
        entries = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                    "size": 500, "platform": {"os": "linux", "architecture": body["platform"]}}
                   for digest, body in self.manifests(f"{name}:{reference}").items()]
        return {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": entries[::-1]}  # arm64 first: the choice must be made, not taken

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

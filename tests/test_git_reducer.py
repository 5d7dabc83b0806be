"""The git reducer source: the token reaches git but no credential helper ever stores it, and
credentials written into GIT_BASE_URL never appear in a message.

A real git clones over HTTP from a server on 127.0.0.1 (git http-backend behind Basic auth),
with a HOME whose .gitconfig asks git to store every credential in ~/.git-credentials.
"""
from __future__ import annotations

import base64
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.config import load_settings
from common.errors import ToolError
from common.reducer_source import build_reducer_archive
from conftest import write_json

USER, TOKEN = "someone", "ghp_FAKE_git_Vb73KdQ9xw"


def _git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True)


def _repository(root: Path) -> Path:
    """root/someone/reducers.git: a bare repository holding reduce.sh."""
    work = root / "work"
    work.mkdir(parents=True)
    (work / "reduce.sh").write_text("#!/bin/bash\nmkdir -p \"$1/results\"\n")
    _git("init", "-q", str(work))
    _git("-C", str(work), "add", ".")
    _git("-C", str(work), "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "r")
    bare = root / USER / "reducers.git"
    _git("clone", "-q", "--bare", str(work), str(bare))
    return root


class _GitServer(BaseHTTPRequestHandler):
    """git's smart HTTP protocol through `git http-backend` (CGI), behind Basic auth."""

    project_root = ""

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def log_message(self, *args) -> None:
        pass

    def _serve(self) -> None:
        wanted = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
        if self.headers.get("Authorization") != wanted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": self.project_root,
               "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
               "REQUEST_METHOD": self.command, "REMOTE_USER": USER,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(length),
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
        body = self.rfile.read(length) if length else b""
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def git_server(tmp_path):
    handler = type("Handler", (_GitServer,), {"project_root": str(_repository(tmp_path / "srv"))})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _settings(campaign, base_url: str):
    write_json(campaign.appconfig, {"BACKEND": "local", "LOCAL_STORAGE_PATH": str(campaign.storage),
                                    "GIT_USER": USER, "GIT_REPO": "reducers", "GIT_TOKEN": TOKEN,
                                    "GIT_BASE_URL": base_url})
    campaign.update(REDUCER_SCRIPT="reduce.sh")
    return load_settings(campaign.simconfig, for_reducer=True, env={})


@pytest.mark.parametrize("scope", ["every-url", "this-url"])
def test_no_credential_helper_stores_the_token(campaign, git_server, tmp_path, monkeypatch, scope):
    home = tmp_path / "home"
    home.mkdir()
    section = "[credential]" if scope == "every-url" else f'[credential "{git_server}"]'
    (home / ".gitconfig").write_text(f"{section}\n\thelper = store\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    archive = build_reducer_archive(_settings(campaign, git_server), work)
    assert archive.files == 1  # reduce.sh was cloned with the token
    assert not (home / ".git-credentials").exists()
    for path in home.rglob("*"):
        assert not path.is_file() or TOKEN not in path.read_text(errors="replace"), path


def test_credentials_in_git_base_url_never_appear_in_a_message(campaign, git_server, tmp_path):
    password = "pa55-w0rd-in-url"
    base = git_server.replace("http://", f"http://{USER}:{password}@")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ToolError) as failed:  # the server wants the token, not this password
        build_reducer_archive(_settings(campaign, base), work)
    message = str(failed.value)
    assert "git clone of" in message and "***@127.0.0.1" in message
    assert password not in message and TOKEN not in message

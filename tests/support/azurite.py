"""Start and stop Azurite (Microsoft's Azure Storage emulator, from npm) on a free port."""
from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "devstoreaccount1"
# The emulator's documented, public well-known key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    proc: subprocess.Popen
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{ACCOUNT}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_azurite(memory_mb: int = 2048, tls: tuple[Path, Path] | None = None) -> Azurite:
    """azurite-blob on 127.0.0.1, in memory; the port is read from its first line.

    With `tls` (certificate, key) it speaks HTTPS and accepts Entra ID bearer tokens
    (`--oauth basic`: issuer, audience and lifetime checked), user-delegation SAS included.
    """
    binary = REPO / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise RuntimeError("Azurite is not installed: run ./run_tests.sh (it runs `npm ci`)")
    extra = ["--cert", str(tls[0]), "--key", str(tls[1]), "--oauth", "basic"] if tls else []
    proc = subprocess.Popen(
        ["node", str(binary), "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
         "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry",
         "--extentMemoryLimit", str(memory_mb), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        match = re.search(r"listens on (https?)://127\.0\.0\.1:(\d+)", line)
        if match:
            proc.stdout.close()
            return Azurite(proc, int(match.group(2)), match.group(1))
    proc.kill()
    raise RuntimeError("Azurite did not start")

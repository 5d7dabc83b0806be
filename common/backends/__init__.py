"""Backends behind one contract (base.py): `get_backend` picks one by name."""
from __future__ import annotations

from typing import Callable

from common.backends.base import Backend
from common.config import BACKENDS, Settings
from common.errors import usage_error


def get_backend(settings: Settings, say: Callable[[str], None] | None = None,
                debug: Callable[[str], None] | None = None) -> Backend:
    """The backend named by the settings (BACKEND, or --backend). `say` tells the user of
    retries as they happen; `debug` (only with -v) receives one line per request."""
    name = settings.backend
    if name == "local":
        from common.backends.local.backend import LocalBackend
        return LocalBackend(settings.app.local_storage_path)
    if name == "azure":
        from common.backends.azure.backend import AzureBackend
        from common.backends.azure.network import RequestLog
        log = RequestLog(debug, settings.app.secrets()) if debug else None
        return AzureBackend(settings, say=say, log=log)
    raise usage_error(f"--backend: {name!r} is not a backend: use one of: {', '.join(BACKENDS)}")

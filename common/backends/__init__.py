"""Backends behind one contract (base.py): `get_backend` picks one by name."""
from __future__ import annotations

from common.backends.base import Backend
from common.config import BACKENDS, Settings
from common.errors import usage_error


def get_backend(settings: Settings) -> Backend:
    """The backend named by the settings (BACKEND, or --backend)."""
    name = settings.backend
    if name == "local":
        from common.backends.local import LocalBackend
        return LocalBackend(settings.app.local_storage_path)
    if name == "azure":
        from common.backends.azure import AzureBackend
        return AzureBackend(settings)
    raise usage_error(f"--backend: {name!r} is not a backend: use one of: {', '.join(BACKENDS)}")

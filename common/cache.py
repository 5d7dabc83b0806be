"""Where the tool keeps what it fetched and may fetch again (price lists, the Geant4 data's
content keys): one folder per user, outside any campaign."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping


def default_cache_dir(environ: Mapping[str, str]) -> Path | None:
    """$XDG_CACHE_HOME/batch-campaigns, else ~/.cache/batch-campaigns; None without a home."""
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore a relative path
        return Path(xdg) / "batch-campaigns"
    try:
        return Path.home() / ".cache" / "batch-campaigns"
    except RuntimeError:
        return None

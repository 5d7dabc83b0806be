"""A valid azure-backend configuration in a tmp folder, for unit tests of the Azure backend."""
from __future__ import annotations

import json
from pathlib import Path

from common.config import Settings, load_settings


def write_json(path: Path, data: object) -> Path:
    """As conftest's (not imported from there: benchmarks use this module too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path

# Distinctive fake secrets: tests grep for them to prove they never leak.
FAKE_STORAGE_KEY = "RkFLRS1TVE9SQUdFLUtFWS0xMjM0NTY3ODkwYWJjZGVm"
FAKE_BATCH_KEY = "RkFLRS1CQVRDSC1LRVktMDk4NzY1NDMyMXp5eHd2dXQ="
FAKE_DOCKER_TOKEN = "dckr_pat_FAKE_TOKEN_5f3a9c"
FAKE_GIT_TOKEN = "ghp_FAKEGITTOKEN0123456789abcdef"


def azure_settings(root: Path, batch_url: str = "https://mybatch.westeurope.batch.azure.com",
                   storage_url: str | None = None, **sim: object) -> Settings:
    sim_dir = root / "sim"
    sim_dir.mkdir(parents=True, exist_ok=True)
    (sim_dir / "run.sh").write_text("#!/bin/bash\necho hi > out_$1.txt\n")
    app = {"BACKEND": "azure", "STORAGE_ACCOUNT_NAME": "devstoreaccount1",
           "STORAGE_ACCOUNT_KEY": FAKE_STORAGE_KEY, "BATCH_ACCOUNT_NAME": "mybatch",
           "BATCH_ACCOUNT_KEY": FAKE_BATCH_KEY, "BATCH_ACCOUNT_URL": batch_url,
           "WORKER_DOCKER_IMAGE": "myuser/topas:4.0", "REDUCER_DOCKER_IMAGE": "python:3.12-slim",
           "DOCKER_USER": "myuser", "DOCKER_TOKEN": FAKE_DOCKER_TOKEN,
           "LOCAL_STORAGE_PATH": str(root / "local")}
    if storage_url:
        app["STORAGE_ACCOUNT_URL"] = storage_url
    write_json(root / "appconfig.json", app)
    write_json(root / "simconfig.json", {
        "SIM_ID": "golden-sim", "POOL_NODE_COUNT": 2, "TASK_COUNT": 3, "POOL_VM_SIZE": "STANDARD_D2S_V3",
        "LOCAL_SIM_PATH": "sim", "RUN_SCRIPT": "run.sh", "REDUCER_SCRIPT": "builtin:topas",
        "OUTPUT_FILE_PATTERNS": ["out_*.txt", "Dose.csv"], "TIMEOUT_MINUTES": 30,
        "MAX_TASK_RETRIES": 1, **sim})
    return load_settings(root / "simconfig.json", env={})

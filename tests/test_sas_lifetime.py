"""No SAS URL handed to a node outlives the key that signs it.

Without STORAGE_ACCOUNT_KEY the URLs are user-delegation SAS: the storage service lends the
signing key for at most 7 days, and a SAS signed with an expired delegation key is invalid
(Microsoft, "Create a user delegation SAS"). The URLs live 2 hours past TIMEOUT_MINUTES, so on
that path a timeout that leaves no room for the margin is refused when the configuration is
read — never shortened in silence. The end-to-end check of the URLs sent to Batch is in
tests/test_azure_entra.py.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from common.backends.azure import storage as st
from common.config import load_settings
from common.config.model import MAX_ENTRA_TIMEOUT_MINUTES
from common.errors import EXIT_USAGE, ToolError
from tests.azure_settings import azure_settings


def entra_settings(tmp_path, timeout: float, with_key: bool = False):
    azure_settings(tmp_path, TIMEOUT_MINUTES=timeout)  # writes both files (with keys)
    app_path = tmp_path / "appconfig.json"
    app = json.loads(app_path.read_text())
    if not with_key:
        app.pop("STORAGE_ACCOUNT_KEY")
    app_path.write_text(json.dumps(app))
    return load_settings(tmp_path / "simconfig.json", env={})


def test_seven_days_without_a_storage_key_is_refused_naming_the_limit_and_the_way_out(tmp_path):
    with pytest.raises(ToolError) as caught:
        entra_settings(tmp_path, timeout=7 * 24 * 60)
    assert caught.value.exit_code == EXIT_USAGE
    [line] = caught.value.lines
    assert "simconfig.json: TIMEOUT_MINUTES: 10080 minutes is longer than storage can sign for" in line
    assert line.endswith("use at most 9955 minutes, or set STORAGE_ACCOUNT_KEY")


def test_the_longest_timeout_each_path_allows(tmp_path):
    assert MAX_ENTRA_TIMEOUT_MINUTES == 7 * 24 * 60 - 120 - 5
    settings = entra_settings(tmp_path / "a", timeout=MAX_ENTRA_TIMEOUT_MINUTES)
    assert settings.app.storage_account_key is None
    with pytest.raises(ToolError):
        entra_settings(tmp_path / "b", timeout=MAX_ENTRA_TIMEOUT_MINUTES + 1)
    # an account key signs for as long as asked: 7 days is fine there
    assert entra_settings(tmp_path / "c", timeout=7 * 24 * 60, with_key=True).sim.timeout_minutes == 10080


def test_the_longest_allowed_timeout_fits_inside_the_delegation_key():
    now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    expiry = st.sas_expiry(MAX_ENTRA_TIMEOUT_MINUTES, now)
    key_ends = min(expiry, now - st.CLOCK_SKEW + st.MAX_DELEGATION)  # as signing_key asks
    assert expiry <= key_ends
    assert st.sas_expiry(MAX_ENTRA_TIMEOUT_MINUTES + 1, now) > now - st.CLOCK_SKEW + st.MAX_DELEGATION


def test_a_sas_that_would_outlive_its_delegation_key_is_never_made():
    now = datetime.now(timezone.utc)
    account = st.StorageAccount("devstoreaccount1", "https://devstoreaccount1.blob.core.windows.net",
                                None)
    key = st.UserDelegationKey()
    key.signed_oid, key.signed_tid = "00000000-0000-0000-0000-000000000001", "t"
    key.signed_start, key.signed_expiry = "2026-03-01T00:00:00Z", "2026-03-08T00:00:00Z"
    key.signed_service, key.signed_version = "b", "2025-01-05"
    key.value = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    signing = st.SigningKey(delegation=key, expires=now + timedelta(days=1))
    assert "skoid=" in st.container_write_url(account, "box", now + timedelta(hours=23),
                                              signing=signing)
    with pytest.raises(ToolError) as caught:
        st.container_write_url(account, "box", now + timedelta(days=1, minutes=1), signing=signing)
    assert "after the user delegation key that signs them" in str(caught.value)

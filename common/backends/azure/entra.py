"""Who the tool is to Azure: the account keys when they are given, Entra ID when they are not.

Many institutional accounts disable shared keys by policy. Without BATCH_ACCOUNT_KEY the
Batch client signs in with azure-identity's DefaultAzureCredential (az login, a managed
identity, environment credentials...), and without STORAGE_ACCOUNT_KEY so does storage —
whose SAS URLs for the nodes are then user-delegation SAS, signed with a key the service
lends to that identity. The token scope and the sign-in authority follow the cloud that the
Batch account URL names, so sovereign clouds work as the public one does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import AzureAuthorityHosts

from common.config import AppConfig
from common.errors import ToolError


@dataclass(frozen=True)
class Cloud:
    name: str
    batch_domain: str  # what Batch account hosts end with
    batch_resource: str  # the Batch service's resource ID in this cloud, as documented
    authority: str  # where Entra ID sign-ins go

    @property
    def batch_scope(self) -> str:
        """The resource ID with "/.default" after it — its own trailing slash kept, hence
        "//.default", as azure-batch's default scope is spelt. Batch accepts only tokens whose
        audience is the resource ID exactly, slash included; azure-identity turns a scope back
        into a resource (managed identity, az login) by cutting "/.default" off the end."""
        return self.batch_resource + "/.default"


# Resource IDs: Microsoft's "Authenticate Azure Batch services with Microsoft Entra ID" (the
# global and the Azure China editions), and the Azure CLI's cloud table (batch_resource_id).
CLOUDS = (
    Cloud("Azure", "batch.azure.com", "https://batch.core.windows.net/",
          AzureAuthorityHosts.AZURE_PUBLIC_CLOUD),
    Cloud("Azure China", "batch.chinacloudapi.cn", "https://batch.chinacloudapi.cn/",
          AzureAuthorityHosts.AZURE_CHINA),
    Cloud("Azure Government", "batch.usgovcloudapi.net", "https://batch.core.usgovcloudapi.net/",
          AzureAuthorityHosts.AZURE_GOVERNMENT),
)
STORAGE_SCOPE = "https://storage.azure.com/.default"


def cloud_of(batch_url: str | None) -> Cloud:
    """The cloud a Batch account URL belongs to (the public one for anything else, e.g. a
    local test endpoint)."""
    host = (urlsplit(batch_url or "").hostname or "").lower()
    for cloud in CLOUDS:
        if host == cloud.batch_domain or host.endswith("." + cloud.batch_domain):
            return cloud
    return CLOUDS[0]


@lru_cache(maxsize=None)
def entra_credential(authority: str) -> Any:
    """One DefaultAzureCredential per authority, shared by Batch and storage (one sign-in)."""
    from azure.identity import DefaultAzureCredential
    return SignIn(DefaultAzureCredential(authority=authority))


# DefaultAzureCredential's members, as a user knows them.
_KNOWN = {"EnvironmentCredential": "environment variables (AZURE_CLIENT_ID...)",
          "WorkloadIdentityCredential": "workload identity",
          "ManagedIdentityCredential": "a managed identity",
          "SharedTokenCacheCredential": "the shared token cache",
          "VisualStudioCodeCredential": "VS Code", "AzureCliCredential": "Azure CLI",
          "AzurePowerShellCredential": "Azure PowerShell",
          "AzureDeveloperCliCredential": "Azure Developer CLI", "BrokerCredential": "a broker"}
_SERVICE = {STORAGE_SCOPE: ("storage", "STORAGE_ACCOUNT_KEY")}


class SignIn:
    """A token credential that fails once, in one line, at once. azure-identity's failure is
    a ClientAuthenticationError of ~15 lines, which the storage SDK's retry policy retries
    like a network error (six times, over two minutes, 'no answer'); a ToolError is no
    AzureError, so it leaves the SDK's pipeline at the first attempt. Once failed, every
    later request fails the same way without asking again."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._failed: ToolError | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        if self._failed is not None:
            raise self._failed
        try:
            return self._inner.get_token(*scopes, **kwargs)
        except ClientAuthenticationError as error:
            self._failed = not_signed_in(error, scopes)
            raise self._failed from None

    def close(self) -> None:
        self._inner.close()


def not_signed_in(error: Exception, scopes: tuple[str, ...] = ()) -> ToolError:
    """The sign-in failure as one line: which credentials were tried, how to sign in."""
    tried = [f"{_KNOWN.get(name, name)}" + (" (not installed)" if re.search(
        r"not (?:found|installed)|could not be found", why, re.I) else "")
             for name, why in re.findall(r"^\s*(\w+Credential): (.*)$", str(error), re.M)]
    service, key = _SERVICE.get(scopes[0] if scopes else "", ("Batch", "BATCH_ACCOUNT_KEY"))
    what = f"tried {', '.join(tried)}" if tried else str(error).strip().splitlines()[0][:200]
    return ToolError(f"{service}: not signed in to Entra ID ({what}): sign in with `az login`, "
                     f"run on a machine with a managed identity, or set {key} (and the other "
                     "account key) in appconfig.json or the environment", exit_code=2)


def batch_credential(app: AppConfig) -> tuple[Any, list[str]]:
    """The Batch client's credential and token scopes."""
    cloud = cloud_of(app.batch_account_url)
    if app.batch_account_key is not None:
        return AzureNamedKeyCredential(app.batch_account_name or "", app.batch_account_key.reveal()), \
            [cloud.batch_scope]
    return entra_credential(cloud.authority), [cloud.batch_scope]


def storage_uses_entra(app: AppConfig) -> bool:
    return app.storage_account_key is None

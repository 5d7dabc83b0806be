"""Who the tool is to Azure: the account keys when they are given, Entra ID when they are not.

Many institutional accounts disable shared keys by policy. Without BATCH_ACCOUNT_KEY the
Batch client signs in with azure-identity's DefaultAzureCredential (az login, a managed
identity, environment credentials...), and without STORAGE_ACCOUNT_KEY so does storage —
whose SAS URLs for the nodes are then user-delegation SAS, signed with a key the service
lends to that identity. The token scope and the sign-in authority follow the cloud that the
Batch account URL names, so sovereign clouds work as the public one does.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AzureNamedKeyCredential
from azure.identity import AzureAuthorityHosts

from common.config import AppConfig


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
    return DefaultAzureCredential(authority=authority)


def batch_credential(app: AppConfig) -> tuple[Any, list[str]]:
    """The Batch client's credential and token scopes."""
    cloud = cloud_of(app.batch_account_url)
    if app.batch_account_key is not None:
        return AzureNamedKeyCredential(app.batch_account_name or "", app.batch_account_key.reveal()), \
            [cloud.batch_scope]
    return entra_credential(cloud.authority), [cloud.batch_scope]


def storage_uses_entra(app: AppConfig) -> bool:
    return app.storage_account_key is None

"""Batch error responses: the `BatchError` body of the spec and the codes the service uses.

Codes and messages follow Microsoft's "Batch status and error codes" page and the code list
of the .NET Batch SDK (BatchErrorCodeStrings). Like the real service, the message text ends
with the request id and time, and `values` carries key/value details (`PropertyName`,
`Reason`, `QueryParameterName`, `AuthenticationErrorDetail`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# Task failure codes (failureInfo.code) as the .NET SDK lists them (TaskFailureInformationCodes).
FAILURE_EXIT_CODE = "FailureExitCode"
TASK_ENDED = "TaskEnded"
CONTAINER_INVALID_IMAGE = "ContainerInvalidImage"
CONTAINER_INVALID_SETTINGS = "ContainerInvalidSettings"
BLOB_ACCESS_DENIED = "BlobAccessDenied"
BLOB_NOT_FOUND = "BlobNotFound"
BLOB_DOWNLOAD_MISC_ERROR = "BlobDownloadMiscError"
RESOURCE_CONTAINER_ACCESS_DENIED = "ResourceContainerAccessDenied"
RESOURCE_CONTAINER_NOT_FOUND = "ResourceContainerNotFound"
RESOURCE_CONTAINER_LIST_MISC_ERROR = "ResourceContainerListMiscError"
FILE_UPLOAD_ACCESS_DENIED = "FileUploadAccessDenied"
FILE_UPLOAD_CONTAINER_NOT_FOUND = "FileUploadContainerNotFound"
FILE_UPLOAD_CONFLICT = "FileUploadConflict"
FILE_UPLOAD_MISC_ERROR = "FileUploadMiscError"
COMMAND_PROGRAM_NOT_FOUND = "CommandProgramNotFound"

# The spec's BatchErrorSourceCategory values (2025-06-01 spells them in lower case).
USER_ERROR = "usererror"
SERVER_ERROR = "servererror"


@dataclass
class BatchServiceError(Exception):
    """An error answer: raise it anywhere in request handling; the server renders it."""

    status: int
    code: str
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message} {self.values}"

    def body(self, request_id: str) -> dict[str, Any]:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
        body: dict[str, Any] = {
            "code": self.code,
            "message": {"lang": "en-US",
                        "value": f"{self.message}\nRequestId:{request_id}\nTime:{now}"}}
        if self.values:
            body["values"] = [{"key": key, "value": value} for key, value in self.values]
        return body


def not_found(kind: str) -> BatchServiceError:
    """PoolNotFound / JobNotFound / TaskNotFound / NodeNotFound."""
    return BatchServiceError(404, f"{kind}NotFound", f"The specified {kind.lower()} does not exist.")


def exists(kind: str) -> BatchServiceError:
    """PoolExists / JobExists / TaskExists (409)."""
    return BatchServiceError(409, f"{kind}Exists", f"The specified {kind.lower()} already exists.")


def being_deleted(kind: str) -> BatchServiceError:
    return BatchServiceError(
        409, f"{kind}BeingDeleted",
        f"The specified {kind.lower()} has been marked for deletion and is being deleted.")


def job_completed() -> BatchServiceError:
    return BatchServiceError(409, "JobCompleted", "The specified job is already in a completed state.")


def file_not_found(path: str) -> BatchServiceError:
    return BatchServiceError(404, "FileNotFound", "The specified file does not exist.",
                             [("FilePath", path)])


def server_busy() -> BatchServiceError:
    return BatchServiceError(503, "ServerBusy",
                             "The server is currently unable to receive requests. Please retry "
                             "your request.")


def internal_error() -> BatchServiceError:
    return BatchServiceError(500, "InternalError",
                             "Server encountered an internal error. Please try again after some time.")


def body_too_large(reason: str) -> BatchServiceError:
    return BatchServiceError(413, "RequestBodyTooLarge",
                             "The request body is too large and exceeds the maximum permissible limit.",
                             [("Reason", reason)])


def invalid_body(reason: str, path: str | None = None) -> BatchServiceError:
    """Syntax, type, enum or unknown-property problems: the body cannot be read as the type."""
    values = [("PropertyName", path)] if path else []
    return BatchServiceError(400, "InvalidRequestBody",
                             "The specified Request Body is not syntactically valid.",
                             values + [("Reason", reason)])


def missing_property(path: str) -> BatchServiceError:
    return BatchServiceError(400, "MissingRequiredProperty",
                             "A required property was not specified in the request body.",
                             [("PropertyName", path)])


def invalid_value(path: str, value: Any, reason: str) -> BatchServiceError:
    return BatchServiceError(400, "InvalidPropertyValue",
                             "The value provided for one of the properties in the request body "
                             "is invalid.",
                             [("PropertyName", path), ("PropertyValue", str(value)),
                              ("Reason", reason)])


def operation_not_supported(what: str) -> BatchServiceError:
    """Real operations this fake does not implement: say so plainly (501 is not retried)."""
    return BatchServiceError(501, "NotImplemented", f"The fake Batch service does not implement {what}.")


def authentication_failed(detail: str) -> BatchServiceError:
    return BatchServiceError(403, "AuthenticationFailed",
                             "Server failed to authenticate the request. Make sure the value of "
                             "Authorization header is correctly formed including the signature.",
                             [("AuthenticationErrorDetail", detail)])


def missing_authentication() -> BatchServiceError:
    return BatchServiceError(401, "InvalidAuthenticationInfo",
                             "The authentication credentials were not provided in the correct "
                             "format.", [("AuthenticationErrorDetail",
                                          "The Authorization header is missing or malformed.")])


def query_problem(name: str, value: str | None, reason: str) -> BatchServiceError:
    if value is None:
        return BatchServiceError(400, "MissingRequiredQueryParameter",
                                 "A query parameter that's mandatory for this request is not "
                                 "specified.", [("QueryParameterName", name)])
    return BatchServiceError(400, "InvalidQueryParameterValue",
                             "Value for one of the query parameters specified in the request URI "
                             "is invalid.", [("QueryParameterName", name),
                                             ("QueryParameterValue", value), ("Reason", reason)])

"""Microsoft's Batch REST spec, read at run time: routing by its paths, bodies checked by its schemas.

The spec (tests/data/batch_spec/BatchService.json, Swagger 2.0) uses a small part of JSON
schema: `type`, `format`, `$ref`, `properties`, `required`, `enum`, `items`,
`additionalProperties` and `readOnly` (no allOf, no discriminators). `Validator` checks that
subset. Its answers are `Problem`s that name the offending field by path (`poolInfo.poolId`,
`value[3].outputFiles[0].destination`), so a 400 tells the client exactly what to fix.

Two modes: request bodies reject unknown properties and ignore `readOnly` ones (a client may
send back what it read; the service does not let them change anything); response bodies
(the fake checking itself) may carry `readOnly` properties but nothing outside the spec.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "batch_spec" / "BatchService.json"
API_VERSION = "2025-06-01"

# Problem kinds, named as the Batch error codes they become.
INVALID_BODY = "InvalidRequestBody"  # wrong JSON type, unknown property, value not in enum
MISSING = "MissingRequiredProperty"
INVALID_VALUE = "InvalidPropertyValue"  # right type, unacceptable value (format, range)

_DURATION = re.compile(r"^-?P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?"
                       r"(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")
_INT32 = (-2**31, 2**31 - 1)
_INT64 = (-2**63, 2**63 - 1)


@dataclass(frozen=True)
class Problem:
    kind: str  # INVALID_BODY, MISSING or INVALID_VALUE
    path: str  # dotted path of the field; "" for the body itself
    reason: str
    value: Any = None


@dataclass(frozen=True)
class Operation:
    """One (method, path template) of the spec."""

    operation_id: str
    method: str
    template: str
    pattern: re.Pattern[str]
    body_schema: dict[str, Any] | None
    body_required: bool
    responses: dict[str, dict[str, Any]]

    def response_schema(self, status: int) -> dict[str, Any] | None:
        answer = self.responses.get(str(status)) or {}
        schema = answer.get("schema")
        return None if schema is None or schema.get("type") == "file" else schema


class Spec:
    """The parsed spec: definitions, operations, and a validator bound to them."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        self.document: dict[str, Any] = json.loads(path.read_text())
        self.definitions: dict[str, Any] = self.document["definitions"]
        self.operations: list[Operation] = list(self._operations())
        self.validator = Validator(self.definitions)

    def _operations(self):
        for template, item in self.document["paths"].items():
            # Path parameters are one segment each, except a file path: clients should
            # percent-encode its slashes (the SDK does) but a raw "/" is accepted too.
            regex = re.sub(r"\{(\w+)\}",
                           lambda m: f"(?P<{m.group(1)}>.+)" if m.group(1) == "filePath"
                           else f"(?P<{m.group(1)}>[^/]+)", template)
            pattern = re.compile(f"^{regex}$")
            for method, operation in item.items():
                if method == "parameters":
                    continue
                body = next((p for p in operation.get("parameters", []) if p.get("in") == "body"),
                            None)
                yield Operation(operation["operationId"], method.upper(), template, pattern,
                                body["schema"] if body else None,
                                bool(body and body.get("required")), operation["responses"])

    def find(self, method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """(operation, raw path parameters, whether the path exists for some other method)."""
        path_known = False
        for operation in self.operations:
            match = operation.pattern.match(path)
            if match:
                path_known = True
                if operation.method == method:
                    return operation, match.groupdict(), True
        return None, {}, path_known

    def validate_request(self, body: Any, schema: dict[str, Any]) -> list[Problem]:
        return self.validator.check(body, schema, request=True)

    def validate_response(self, body: Any, schema: dict[str, Any]) -> list[Problem]:
        return self.validator.check(body, schema, request=False)


@lru_cache(maxsize=1)
def load_spec() -> Spec:
    """The spec is ~0.8 MB of JSON: parse it once per process."""
    return Spec()


class Validator:
    """Checks a JSON value against a Swagger 2.0 schema (the subset the Batch spec uses)."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self.definitions = definitions

    def resolve(self, schema: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Follow $ref chains; also return the definition name (for messages)."""
        name = None
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/definitions/"):
                raise ValueError(f"unsupported $ref {ref}")
            name = ref.rsplit("/", 1)[1]
            schema = self.definitions[name]
        return schema, name

    def check(self, value: Any, schema: dict[str, Any], *, request: bool,
              path: str = "") -> list[Problem]:
        problems: list[Problem] = []
        self._check(value, schema, request, path, problems)
        return problems

    def _check(self, value: Any, schema: dict[str, Any], request: bool, path: str,
               problems: list[Problem]) -> None:
        schema, name = self.resolve(schema)
        kind = schema.get("type", "object" if "properties" in schema else None)
        if kind == "object":
            self._check_object(value, schema, name, request, path, problems)
        elif kind == "array":
            if not isinstance(value, list):
                problems.append(Problem(INVALID_BODY, path, "expected a JSON array", value))
                return
            for index, item in enumerate(value):
                self._check(item, schema.get("items", {}), request, f"{path}[{index}]", problems)
        elif kind == "string":
            self._check_string(value, schema, name, path, problems)
        elif kind == "integer":
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(Problem(INVALID_BODY, path, "expected an integer", value))
                return
            low, high = _INT64 if schema.get("format") == "int64" else _INT32
            if not low <= value <= high:
                problems.append(Problem(INVALID_VALUE, path, f"out of range for {schema.get('format')}", value))
        elif kind == "number":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                problems.append(Problem(INVALID_BODY, path, "expected a number", value))
        elif kind == "boolean":
            if not isinstance(value, bool):
                problems.append(Problem(INVALID_BODY, path, "expected true or false", value))

    def _check_object(self, value: Any, schema: dict[str, Any], name: str | None, request: bool,
                      path: str, problems: list[Problem]) -> None:
        if not isinstance(value, dict):
            problems.append(Problem(INVALID_BODY, path, f"expected a JSON object ({name or 'object'})", value))
            return
        properties: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if key in properties:
                prop = properties[key]
                if request and prop.get("readOnly"):
                    continue  # accepted and ignored, as the service ignores read-only fields
                if item is None:
                    continue  # JSON null for an optional field means "not given"
                self._check(item, prop, request, child, problems)
            elif isinstance(extra, dict):
                self._check(item, extra, request, child, problems)
            elif extra is not True:
                problems.append(Problem(
                    INVALID_BODY, child,
                    f"The property '{key}' does not exist on type '{name or 'object'}'. Make sure "
                    "to only use property names that are defined by the type.", item))
        for key in schema.get("required", []):
            if value.get(key) is None:
                if request and properties.get(key, {}).get("readOnly"):
                    continue
                problems.append(Problem(MISSING, f"{path}.{key}" if path else key,
                                        f"'{key}' is required on type '{name or 'object'}'"))

    def _check_string(self, value: Any, schema: dict[str, Any], name: str | None, path: str,
                      problems: list[Problem]) -> None:
        if not isinstance(value, str):
            problems.append(Problem(INVALID_BODY, path, "expected a string", value))
            return
        if "enum" in schema and value not in schema["enum"]:
            problems.append(Problem(
                INVALID_BODY, path,
                f"Requested value '{value}' was not found in {name or 'the enum'}: "
                f"one of {', '.join(schema['enum'])}", value))
            return
        fmt = schema.get("format")
        reason = None
        if fmt == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                reason = "not an ISO 8601 date-time"
        elif fmt == "duration" and not _DURATION.match(value):
            reason = "not an ISO 8601 duration (like PT1H30M)"
        elif fmt == "uri" and (not value or re.search(r"\s", value)):
            # Not stricter: the service takes "myregistry.azurecr.io" for a registryServer
            # (format uri). Fields that must be http(s) URLs are checked in rules.py.
            reason = "not a URI"
        elif fmt == "int64" and not re.fullmatch(r"-?\d+", value):
            reason = "not an integer"
        if reason:
            problems.append(Problem(INVALID_VALUE, path, reason, value))

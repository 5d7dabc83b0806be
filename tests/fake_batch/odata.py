"""The slice of OData the Batch list calls take: $filter, $select, paging with odata.nextLink.

$filter understands `path op literal` (eq, ne, gt, ge, lt, le; paths like
`executionInfo/result`), `startswith(path, 'text')`, `and`, `or`, `not` and parentheses, over
the JSON view of each item. Literals are 'strings' (with '' for a quote), numbers, true,
false and null. Anything else is refused with 400 InvalidQueryParameterValue, so a client
relying on more than this learns it here instead of getting a silently wrong list.
"""
from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import quote, urlencode

from . import errors

Predicate = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)"
                    r"|(?P<punct>[(),])|(?P<word>[A-Za-z_][\w/.]*))")
_COMPARE = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
            "gt": lambda a, b: a is not None and a > b, "ge": lambda a, b: a is not None and a >= b,
            "lt": lambda a, b: a is not None and a < b, "le": lambda a, b: a is not None and a <= b}


def _lookup(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("/"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, Any]] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if not match or match.end() == position:
                if text[position:].strip() == "":
                    break
                raise self.error(f"cannot read the filter at '{text[position:]}'")
            position = match.end()
            kind = match.lastgroup
            value = match.group(kind)
            if kind == "str":
                value = value[1:-1].replace("''", "'")
            elif kind == "num":
                value = float(value) if "." in value else int(value)
            self.tokens.append((kind, value))
        self.index = 0

    def error(self, reason: str) -> errors.BatchServiceError:
        return errors.query_problem("$filter", self.text, reason)

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, Any]:
        token = self.peek()
        if token is None:
            raise self.error("the filter ends too early")
        self.index += 1
        return token

    def expect(self, value: str) -> None:
        if self.take()[1] != value:
            raise self.error(f"expected '{value}'")

    def parse(self) -> Predicate:
        predicate = self.parse_or()
        if self.peek() is not None:
            raise self.error(f"unexpected '{self.peek()[1]}'")
        return predicate

    def parse_or(self) -> Predicate:
        left = self.parse_and()
        while self.peek() == ("word", "or"):
            self.take()
            right = self.parse_and()
            left = (lambda a, b: lambda item: a(item) or b(item))(left, right)
        return left

    def parse_and(self) -> Predicate:
        left = self.parse_term()
        while self.peek() == ("word", "and"):
            self.take()
            right = self.parse_term()
            left = (lambda a, b: lambda item: a(item) and b(item))(left, right)
        return left

    def literal(self) -> Any:
        kind, value = self.take()
        if kind in ("str", "num"):
            return value
        if kind == "word" and value in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[value]
        raise self.error(f"expected a literal, not '{value}'")

    def parse_term(self) -> Predicate:
        kind, value = self.take()
        if (kind, value) == ("punct", "("):
            inner = self.parse_or()
            self.expect(")")
            return inner
        if (kind, value) == ("word", "not"):
            inner = self.parse_term()
            return lambda item: not inner(item)
        if (kind, value) == ("word", "startswith"):
            self.expect("(")
            _, path = self.take()
            self.expect(",")
            prefix = self.literal()
            self.expect(")")
            return lambda item: str(_lookup(item, path) or "").startswith(str(prefix))
        if kind != "word":
            raise self.error(f"expected a property name, not '{value}'")
        _, operator = self.take()
        if operator not in _COMPARE:
            raise self.error(f"unsupported operator '{operator}'")
        literal = self.literal()
        compare = _COMPARE[operator]

        def predicate(item: dict[str, Any]) -> bool:
            try:
                return bool(compare(_lookup(item, value), literal))
            except TypeError:
                return False
        return predicate


def compile_filter(text: str | None) -> Predicate:
    if not text:
        return lambda item: True
    return _Parser(text).parse()


def select(item: dict[str, Any], text: str | None) -> dict[str, Any]:
    if not text:
        return item
    wanted = {name.strip() for name in text.split(",") if name.strip()}
    return {key: value for key, value in item.items() if key in wanted}


def page(items: list[dict[str, Any]], query: dict[str, str], base_url: str, path: str,
         default_size: int) -> dict[str, Any]:
    """One page of a list answer, with odata.nextLink (an absolute URL) while more remain."""
    predicate = compile_filter(query.get("$filter"))
    chosen = [select(item, query.get("$select")) for item in items if predicate(item)]
    size = default_size
    if "maxresults" in query:
        try:
            size = int(query["maxresults"])
        except ValueError:
            raise errors.query_problem("maxresults", query["maxresults"], "not an integer") from None
        if not 1 <= size <= 1000:
            raise errors.query_problem("maxresults", query["maxresults"], "must be 1 to 1000")
    try:
        start = int(query.get("$skiptoken", "0"))
    except ValueError:
        raise errors.query_problem("$skiptoken", query["$skiptoken"], "not a token we issued") from None
    answer: dict[str, Any] = {"value": chosen[start:start + size]}
    if start + size < len(chosen):
        params = {key: value for key, value in query.items() if key != "$skiptoken"}
        params["$skiptoken"] = str(start + size)
        answer["odata.nextLink"] = f"{base_url}{path}?" + urlencode(params, quote_via=quote)
    return answer

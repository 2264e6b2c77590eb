"""Decoding JSON and YAML bodies into plain JSON values, refusing what later layers choke on.

The standard decoders accept input that is legal for them but breaks something downstream
with a 500: JSON's `NaN`/`Infinity` and numbers that overflow to infinity (PostgreSQL's jsonb
refuses them), lone surrogates and NUL (no UTF-8 encoding, or not storable in text/jsonb),
integers beyond Python's int-str limit (ValueError, not a decode error), nesting deep enough
to exhaust the recursion limit, and silently merged duplicate keys. YAML adds tagged types
JSON has not (bytes, sets, timestamps) and non-string keys (`yes:` is a boolean).

The decoders leave markers where the problem is, and `check` walks the result once, so every
error names the path of the offending value (`spec.target.agent: duplicate key`).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from talon.json_values import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    NOT_FINITE,
    TOO_MANY_DIGITS,
    Problem,
    Unrepresentable,
    check,
)


class _Object(dict[Any, Any]):
    """A decoded object that remembers the keys it was given more than once."""

    duplicates: list[Any]

    def __init__(self) -> None:
        super().__init__()
        self.duplicates = []


def _json_object(pairs: list[tuple[str, Any]]) -> _Object:
    result = _Object()
    for key, value in pairs:
        if key in result:
            result.duplicates.append(key)
        result[key] = value
    return result


def _json_int(literal: str) -> int | Unrepresentable:
    if len(literal) - literal.startswith("-") > MAX_INT_DIGITS:
        return Unrepresentable(literal, TOO_MANY_DIGITS)
    return int(literal)


def _json_constant(literal: str) -> Unrepresentable:
    return Unrepresentable(literal, NOT_FINITE)


def load_json(raw: bytes) -> Any:
    """Decode JSON (UTF-8/16/32 as RFC 8259 allows) and check it (see `check`)."""
    try:
        value = json.loads(
            raw,
            object_pairs_hook=_json_object,
            parse_int=_json_int,
            parse_constant=_json_constant,
        )
    except RecursionError as exc:
        # The C decoder recurses per level; far past MAX_DEPTH, so report it the same way.
        raise Problem("(body)", f"nested more than {MAX_DEPTH} levels deep") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem("(body)", f"malformed JSON: {exc}") from exc
    check(value)
    return value


class _Loader(yaml.SafeLoader):
    """Safe YAML with JSON's data model: no aliases (a small body could expand enormously),
    bounded nesting, timestamps kept as the strings they are (the API models parse them,
    the same as from JSON), duplicate keys and oversized integers marked for `check`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases are not accepted", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_json_map(self, node: yaml.MappingNode) -> Any:
        data = _Object()
        yield data
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden; only explicit repeats count
            key = self.construct_object(key_node, deep=False)  # cached: built once
            try:
                if key in seen:
                    data.duplicates.append(key)
                seen.add(key)
            except TypeError:
                pass  # unhashable: construct_mapping below reports it
        data.update(self.construct_mapping(node))

    def construct_json_timestamp(self, node: yaml.ScalarNode) -> Any:
        return self.construct_yaml_str(node)  # a YAML timestamp is the string it is

    def construct_json_int(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.construct_yaml_int(node)
        except ValueError:
            return Unrepresentable(str(node.value), TOO_MANY_DIGITS)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_json_map)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_json_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_json_timestamp)


def load_yaml(raw: bytes) -> list[Any]:
    """Decode a YAML stream into its non-empty documents, each checked (see `check`)."""
    try:
        documents = [d for d in yaml.load_all(raw.decode(), Loader=_Loader) if d is not None]
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        message = str(exc).replace("\n", " ")
        raise Problem("(body)", f"malformed YAML: {message}") from exc
    for index, document in enumerate(documents):
        check(document, f"[{index}]" if len(documents) > 1 else "")
    return documents

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
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

import yaml

MAX_DEPTH = 64  # manifests nest ~8 levels; session metadata is free-form but not a tree bomb
MAX_PROBLEMS = 20  # reported per body; the first one is in the message
# Python refuses to convert longer integer literals (ValueError); the limit is configurable
# per process, so read it (0 means no limit, but then a 1 MiB digit string is still absurd).
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


class Problem(Exception):
    """A document that is not acceptable: `details` say where ('(body)': as a whole) and why,
    the first one also in the message."""

    def __init__(self, path: str, message: str, more: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(f"{path}: {message}")
        self.message = f"{path}: {message}" if path != "(body)" else message
        self.details = [{"path": path, "message": message}]
        self.details += [{"path": p, "message": m} for p, m in more]


class _Object(dict[Any, Any]):
    """A decoded object that remembers the keys it was given more than once."""

    duplicates: list[Any]

    def __init__(self) -> None:
        super().__init__()
        self.duplicates = []


class _Unrepresentable:
    """Stands where a number could not become a JSON value (the literal is kept for errors)."""

    def __init__(self, literal: str, reason: str) -> None:
        self.literal = literal
        self.reason = reason


_TOO_MANY_DIGITS = f"integer has more than {MAX_INT_DIGITS} digits"
_NOT_FINITE = "must be a finite number (NaN and Infinity are not JSON)"


def _json_object(pairs: list[tuple[str, Any]]) -> _Object:
    result = _Object()
    for key, value in pairs:
        if key in result:
            result.duplicates.append(key)
        result[key] = value
    return result


def _json_int(literal: str) -> int | _Unrepresentable:
    if len(literal) - literal.startswith("-") > MAX_INT_DIGITS:
        return _Unrepresentable(literal, _TOO_MANY_DIGITS)
    return int(literal)


def _json_constant(literal: str) -> _Unrepresentable:
    return _Unrepresentable(literal, _NOT_FINITE)


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
            return _Unrepresentable(str(node.value), _TOO_MANY_DIGITS)


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


def check(value: Any, path: str = "") -> None:
    """Raise Problem naming up to MAX_PROBLEMS unacceptable values (see the module doc)."""
    problems: list[tuple[str, str]] = []
    _walk(value, path, 0, problems)
    if problems:
        (first_path, first_message), *more = problems
        raise Problem(first_path, first_message, more)


def _walk(value: Any, path: str, depth: int, problems: list[tuple[str, str]]) -> None:
    if len(problems) >= MAX_PROBLEMS:
        return
    where = path or "(body)"
    if depth > MAX_DEPTH:
        problems.append((where, f"nested more than {MAX_DEPTH} levels deep"))
    elif isinstance(value, str):
        bad = _BAD_CHARS.search(value)
        if bad is not None:
            problems.append((where, _char_problem(bad.group())))
    elif isinstance(value, bool | int | None):
        pass
    elif isinstance(value, float):
        if not math.isfinite(value):
            problems.append((where, _NOT_FINITE))
    elif isinstance(value, _Unrepresentable):
        problems.append((where, value.reason))
    elif isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            problems.append((_child(path, key), "duplicate key"))
        for key, item in value.items():
            child = _child(path, key)
            if not isinstance(key, str):
                problems.append((child, f"keys must be strings, not {_type_name(key)} (quote it)"))
                continue
            bad = _BAD_CHARS.search(key)
            if bad is not None:
                problems.append((child, f"in the key: {_char_problem(bad.group())}"))
            _walk(item, child, depth + 1, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", depth + 1, problems)
    else:
        problems.append((where, f"a YAML {_type_name(value)} is not a JSON value"))


def _child(path: str, key: Any) -> str:
    # A key's own NUL or surrogate is shown escaped: the path goes into the error body.
    name = _BAD_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", str(key))
    return f"{path}.{name}" if path else name


def _char_problem(char: str) -> str:
    if char == "\x00":
        return "NUL characters (U+0000) are not accepted"
    return f"lone surrogate U+{ord(char):04X} is not a character (no UTF-8 encoding)"


def _type_name(value: Any) -> str:
    names = {bytes: "binary", set: "set", tuple: "pair", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)

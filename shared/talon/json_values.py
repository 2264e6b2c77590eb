"""What Talon accepts as a JSON value, whichever way it arrives (an HTTP body decoded by
api/documents.py, a gRPC message): what PostgreSQL's text and jsonb can store and the models
can read. No NUL characters or lone surrogates, only finite numbers, integers Python can
convert, bounded nesting. `check` walks a decoded value once and names the path of every
offending value (`spec.target.agent: ...`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from typing import Any

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


class Unrepresentable:
    """Stands where a number could not become a JSON value (the literal is kept for errors)."""

    def __init__(self, literal: str, reason: str) -> None:
        self.literal = literal
        self.reason = reason


TOO_MANY_DIGITS = f"integer has more than {MAX_INT_DIGITS} digits"
NOT_FINITE = "must be a finite number (NaN and Infinity are not JSON)"


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
            problems.append((where, NOT_FINITE))
    elif isinstance(value, Unrepresentable):
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

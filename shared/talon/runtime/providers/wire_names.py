"""Tool names on the wire: registry names (`stripe-readonly.list_invoices`) mapped to names
every supported provider accepts, and back.

OpenAI refuses a function name outside `^[a-zA-Z0-9_-]{1,64}$`, and registry names carry a
`.` between source and tool, so they cannot be sent as they are. A name that is already legal
is sent unchanged; any other is sanitised (each illegal character becomes `_`), and when that
form is too long or is also another name's form it gets a short form ending in a hash of the
registry name. The mapping depends only on the set of names (not their order), so every
attempt of a turn that offers the same tools sends the same names; it is built per request
from the tools offered and the names the history mentions, so a request is always
self-consistent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_LENGTH = 64
LEGAL = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ILLEGAL_CHAR = re.compile(r"[^a-zA-Z0-9_-]")
_HASH_CHARS = 8


@dataclass(frozen=True)
class WireNames:
    to_wire: dict[str, str]
    to_registry: dict[str, str]

    def wire(self, name: str) -> str:
        return self.to_wire[name]

    def registry(self, wire_name: str) -> str:
        """The registry name of a name the model sent; an unknown name stays as it is (the
        tool source answers it as an unknown tool)."""
        return self.to_registry.get(wire_name, wire_name)


def wire_names(names: Iterable[str]) -> WireNames:
    unique = sorted(set(names))
    to_wire: dict[str, str] = {}
    taken: set[str] = set()
    # Legal names claim themselves first, so adding a dotted name never renames a legal one.
    for name in unique:
        if LEGAL.match(name):
            to_wire[name] = name
            taken.add(name)
    for name in unique:
        if name in to_wire:
            continue
        candidate = _ILLEGAL_CHAR.sub("_", name) or "tool"
        if len(candidate) > MAX_LENGTH or candidate in taken:
            candidate = _short_form(name, candidate, taken)
        to_wire[name] = candidate
        taken.add(candidate)
    return WireNames(to_wire, {wire: name for name, wire in to_wire.items()})


def _short_form(name: str, sanitised: str, taken: set[str]) -> str:
    """`<sanitised prefix>_<hash of the name>`, 64 characters at most; a longer hash in the
    (astronomically unlikely) case that one is taken."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    for length in range(_HASH_CHARS, len(digest) + 1, 4):
        prefix = sanitised[: MAX_LENGTH - length - 1]
        candidate = f"{prefix}_{digest[:length]}"
        if candidate not in taken:
            return candidate
    raise ValueError(f"cannot find a free wire name for {name!r}")  # needs 2^256 names


MAX_CALL_ID_LENGTH = 40  # OpenAI: "Expected a string with maximum length 40"
_LEGAL_CALL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")


def wire_call_id(call_id: str) -> str:
    """A tool call id as every supported provider accepts it. Ids come back from whichever
    provider answered (a failover can hand another provider's ids to the next), so a long or
    unusual one is replaced by a hash of itself: the same on the assistant message and on the
    tool message that answers it."""
    if _LEGAL_CALL_ID.match(call_id):
        return call_id
    return "call_" + hashlib.sha256(call_id.encode()).hexdigest()[: MAX_CALL_ID_LENGTH - 8]

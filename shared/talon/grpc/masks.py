"""Partial updates with a field mask (Google's API design guide, AIP-134), on manifests: the
masked paths of the given resource replace those of the stored one; the rest stays."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from talon.errors import BadRequest

_WHOLE_MAPS = ("metadata.labels", "metadata.annotations")


def check_mask(paths: Sequence[str], body_field: str) -> None:
    """Refuse a path outside what an update may name: the body field or a key path inside
    it, a whole labels or annotations map, or `*` (everything)."""
    for path in paths:
        parts = path.split(".")
        if path != "*" and (not (path in _WHOLE_MAPS or parts[0] == body_field) or "" in parts):
            allowed = ", ".join([body_field, f"{body_field}.<key>", *_WHOLE_MAPS, "*"])
            raise BadRequest(
                f"update_mask cannot name {path!r}",
                [{"path": "update_mask", "message": f"{path!r}: expected one of {allowed}"}],
            )


def apply_mask(
    current: dict[str, Any], given: dict[str, Any], paths: Sequence[str]
) -> dict[str, Any]:
    """`current` with each of `paths` (checked by check_mask) set to its value in `given`; a
    path `given` lacks is removed."""
    if "*" in paths:
        return given
    merged = copy.deepcopy(current)
    for path in paths:
        parts = path.split(".")
        source: Any = given
        for part in parts:
            source = source.get(part) if isinstance(source, dict) else None
        target = merged
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        if source is None:
            target.pop(parts[-1], None)
        else:
            target[parts[-1]] = copy.deepcopy(source)
    return merged

"""Request bodies validated against their model, with errors naming the field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from talon.errors import Invalid, details_from_validation_error

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], body: Any) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = details_from_validation_error(exc)
        raise Invalid(f"invalid request: {details[0]['path']}: {details[0]['message']}",
                      details) from exc  # fmt: skip

"""A bounded, deterministic schema-driven fuzz run of the live gateway (schemathesis).

Every operation of GET /v1/openapi.json gets requests generated from its own description:
valid ones and ones that break it (wrong types, out-of-range values, missing fields), with
an admin token, with none, and with the path naming objects that exist (so handlers run past
their 404s and success answers are checked too). Every answer must be no 5xx, a documented
status with a documented content type, and a body that matches the documented schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

import samples
from conftest import ADMIN_TOKEN, Api

CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
EXAMPLES = {"admin": 10, "anonymous": 2, "existing": 5}
# The `name` of each kind's object in samples.full_set.
NAMES = {"mcp-servers": "tools", "knowledge": "faq", "agent-templates": "support",
         "agents": "bot", "mcp-bindings": "bind", "schedules": "wake"}  # fmt: skip


@pytest.fixture
def seeded(api: Api) -> Callable[[], dict[str, str]]:
    """Objects for every path parameter; called again before each operation, since the
    previous one may have deleted or changed them."""
    token_id = api.ok("POST", "/v1/tokens", 201, json={"name": "fuzz", "role": "read",
                                                        "namespaces": ["shop"]})["id"]  # fmt: skip

    def seed() -> dict[str, str]:
        items = [samples.namespace("shop"), *samples.full_set("shop")]
        api.ok("POST", "/v1/apply", json={"items": items})
        api.post("/v1/ns/shop/agents/bot/sessions", json={"id": "s"})  # 201, or 200: it exists
        turn = api.post("/v1/ns/shop/agents/bot/sessions/s/message", json={"content": "hi"})
        api.ok("POST", "/v1/ns/shop/agents/bot/sessions/s/cancel")  # no open turn: streams end
        return {
            "ns": "shop",
            "agent": "bot",
            "session_id": "s",
            "turn_id": turn.json().get("turnId", ""),
            "token_id": token_id,
        }

    return seed


def _operations(api: Api) -> Iterator[Any]:
    document = api.as_token(None).ok("GET", "/v1/openapi.json")
    schema = schemathesis.openapi.from_dict(document)
    for result in schema.get_all_operations():
        yield result.ok()


def test_schema_driven_fuzz(api: Api, seeded: Callable[[], dict[str, str]]) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    failures: list[str] = []
    started = time.monotonic()
    sent = 0
    for operation in _operations(api):
        existing = seeded()
        runs = [
            ("admin", GenerationMode.POSITIVE, admin, None),
            ("admin", GenerationMode.NEGATIVE, admin, None),
            ("anonymous", GenerationMode.POSITIVE, {}, None),
        ]
        if operation.path_parameters:
            fixed = {p.name: existing.get(p.name) or NAMES[_kind(operation.path)]
                     for p in operation.path_parameters}  # fmt: skip
            runs.append(("existing", GenerationMode.POSITIVE, admin, fixed))
        for label, mode, auth, path_parameters in runs:
            strategy = operation.as_strategy(
                generation_mode=mode,
                path_parameters=path_parameters,
                query=_bounded_stream(operation),
            )
            examples = EXAMPLES[label]
            if operation.path.startswith("/v1/namespaces/{ns}/"):
                # The same handlers as under /v1/ns/{ns}/ (one declaration makes both).
                examples = max(1, examples // 2)
            try:
                answers = _fuzz(strategy, examples, api.base_url, auth)
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing in it to get wrong
                continue
            sent += len(answers)
            failures += [f"{label} {mode.value} {problem}" for problem in answers if problem]
    print(f"fuzz: {sent} requests in {time.monotonic() - started:.1f} s")
    assert not failures, "\n\n".join(failures[:20])


def _fuzz(strategy: Any, examples: int, base_url: str, auth: dict[str, str]) -> list[str]:
    """Send `examples` generated cases; one entry per request, empty when it passed."""
    checks = [getattr(schemathesis.checks, name) for name in CHECK_NAMES]
    outcomes: list[str] = []

    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,  # the same cases on every run: CI is not flaky
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, headers=auth, timeout=15)
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, schemathesis.errors.FailureGroup) as exc:  # all are reported
            outcomes.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                            f"{str(exc)[:800]}")  # fmt: skip
        else:
            outcomes.append("")

    run()
    return outcomes


def _kind(path: str) -> str:
    return path.split("/{name}")[0].rsplit("/", 1)[-1]


def _bounded_stream(operation: Any) -> dict[str, Any] | None:
    # A stream is open-ended by design (up to maxSeconds, 600 by default): the fuzz run
    # asks for one second at most and to stop when no turn is open.
    if operation.path.endswith("/stream"):
        return {"maxSeconds": 1, "untilTurnEnd": "true"}
    return None

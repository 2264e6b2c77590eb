"""The cloud_tasks scheduler backend against the Cloud Tasks emulator: schedule writes enqueue
the next fire as a task, the emulator delivers it to the scheduler function over HTTP at its
time, the callback wakes the session once and enqueues the following fire."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import httpx
import pytest
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from conftest import ROOT, Api, read_stream
from google_certs import GoogleCerts
from talon import entrypoints
from talon.cli.manifest_files import read_documents
from talon.scheduling.cloud_tasks import CloudTasksQueue
from talon.scheduling.tasks import TOKEN_HEADER, FireTask, TaskScheduler

PROJECT, LOCATION = "talon-test", "us-central1"
CALLBACK_TOKEN = "scheduler-secret-456"
SESSIONS = "/v1/ns/acme/agents/customer-support/sessions"
_queues = itertools.count()


@pytest.fixture
def tasks_client(tasks_emulator: str) -> tasks_v2.CloudTasksClient:
    channel = grpc.insecure_channel(tasks_emulator)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


@pytest.fixture
def cloud_tasks(
    tasks_emulator: str,
    tasks_client: tasks_v2.CloudTasksClient,
    scheduler_server: Any,
    gateway_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """A fresh emulator queue; Talon's gateway and scheduler function set to use it."""
    queue = f"talon-scheduler-{next(_queues)}"
    tasks_client.create_queue(
        parent=f"projects/{PROJECT}/locations/{LOCATION}",
        queue=tasks_v2.Queue(name=tasks_client.queue_path(PROJECT, LOCATION, queue)),
    )
    env = {
        "BACKEND": "cloud_tasks",
        "PROJECT": PROJECT,
        "LOCATION": LOCATION,
        "QUEUE": queue,
        "CALLBACK_URL": f"{scheduler_server.url}/fire",
        "CALLBACK_VERIFICATION": "token",
        "CALLBACK_TOKEN": CALLBACK_TOKEN,
        "EMULATOR_HOST": tasks_emulator,
    }
    for key, value in env.items():
        monkeypatch.setenv(f"TALON_CONTROL_PLANE_SCHEDULER_{key}", value)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    entrypoints.reset()  # rebuild the services with the scheduler settings above
    path = tasks_client.queue_path(PROJECT, LOCATION, queue)
    yield {"queue": path, "callback": f"{scheduler_server.url}/fire"}
    # Its tasks must not reach a later test's database at their fire time.
    tasks_client.delete_queue(name=path)


def _apply_seed(api: Api) -> None:
    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    api.ok("POST", "/v1/apply", json={"items": documents})


def _pending(client: tasks_v2.CloudTasksClient, queue: str) -> dict[str, datetime]:
    return {
        task.name.rsplit("/", 1)[1]: task.schedule_time.astimezone(UTC)
        for task in client.list_tasks(parent=queue)
    }


def _state(name: str) -> dict[str, Any]:
    with entrypoints.services().db.transaction() as tx:
        return tx.one("SELECT * FROM schedule_state WHERE name = %s", (name,)) or {}


def _fire_soon(api: Api, name: str, seconds: float = 2.0, **spec: Any) -> datetime:
    at = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    body = {"kind": "once", "cron": None, "at": at.isoformat().replace("+00:00", "Z"), **spec}
    api.ok("PATCH", f"/v1/ns/acme/schedules/{name}", json={"spec": body})
    return at


def _wait_for_fires(api: Api, name: str, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        fires = api.ok("GET", f"/v1/ns/acme/schedules/{name}/fires")["items"]
        if len(fires) >= count or time.monotonic() > deadline:
            return fires
        time.sleep(0.2)


def _callback(url: str, body: Any, token: str | None = CALLBACK_TOKEN) -> httpx.Response:
    headers = {TOKEN_HEADER: token} if token else {}
    return httpx.post(url, json=body, headers=headers, timeout=30)


def test_the_seed_schedule_gets_a_task_at_its_next_fire_time(
    api: Api, cloud_tasks: dict[str, str], tasks_client: tasks_v2.CloudTasksClient
) -> None:
    _apply_seed(api)
    state = _state("renewal-check")
    next_fire = state["next_fire_at"]
    local = next_fire.astimezone(ZoneInfo("America/Los_Angeles"))
    assert (local.hour, local.minute) == (14, 0) and local.weekday() < 5
    assert state["task_fire_at"] == next_fire and state["task_version"] == state["version"]
    pending = _pending(tasks_client, cloud_tasks["queue"])
    assert list(pending.values()) == [next_fire]
    (task_id,) = pending
    assert f"acme-renewal-check-v{state['version']}-{int(next_fire.timestamp())}" in task_id


def test_a_fire_is_delivered_by_the_emulator_and_wakes_the_named_session(
    api: Api, cloud_tasks: dict[str, str], start_worker
) -> None:
    _apply_seed(api)
    start_worker(demo_fallback=True)
    at = _fire_soon(api, "renewal-check")
    fires = _wait_for_fires(api, "renewal-check", 1)
    assert [(f["fireAt"], f["reason"], f["outcome"]) for f in fires] == [
        (at.isoformat().replace("+00:00", "Z"), "once", "queued")
    ]
    assert fires[0]["sessionId"] == "enterprise-renewals"
    events = read_stream(api, f"{SESSIONS}/enterprise-renewals/stream", last_event_id=0,
                         params={"untilTurnEnd": "true"})  # fmt: skip
    queued = next(e for e in events if e["type"] == "turn.queued")
    assert queued["data"]["source"] == "schedule:renewal-check"
    assert events[-1]["type"] == "turn.completed"
    assert _state("renewal-check")["next_fire_at"] is None  # a `once` schedule is finished


def test_a_cron_fire_enqueues_the_next_one(
    api: Api, cloud_tasks: dict[str, str], tasks_client: tasks_v2.CloudTasksClient
) -> None:
    _apply_seed(api)
    state = _state("renewal-check")
    # The task for the next 14:00 arrives (delivered here by hand, at its time).
    task = FireTask("acme", "renewal-check", state["version"], state["next_fire_at"])
    services = entrypoints.services()
    at_fire_time = TaskScheduler(services.db, services.schedules, CloudTasksQueue(
        services.settings.control_plane.scheduler), clock=lambda: task.fire_at)  # fmt: skip
    assert at_fire_time.deliver(task)["outcome"] == "queued"
    following = _state("renewal-check")
    assert following["next_fire_at"] > task.fire_at
    assert following["task_fire_at"] == following["next_fire_at"]
    assert following["next_fire_at"] in _pending(tasks_client, cloud_tasks["queue"]).values()
    # Delivered again (a queue retry): nothing happens twice.
    assert at_fire_time.deliver(task)["outcome"] == "duplicate"
    assert len(api.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"]) == 1


def test_duplicate_deliveries_wake_once(api: Api, cloud_tasks: dict[str, str]) -> None:
    _apply_seed(api)
    at = _fire_soon(api, "renewal-check")
    state = _state("renewal-check")
    task = FireTask("acme", "renewal-check", state["version"], at)
    # The emulator accepts a second task of the same name (Cloud Tasks would refuse it), so
    # the same fire is delivered twice, plus once more by hand.
    CloudTasksQueue(entrypoints.services().settings.control_plane.scheduler).enqueue(task, at)
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()))
    by_hand = _callback(cloud_tasks["callback"], task.to_json())
    assert by_hand.status_code == 200, by_hand.text
    fires = _wait_for_fires(api, "renewal-check", 1)
    time.sleep(1.0)  # let the emulator's deliveries land too
    fires = api.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"]
    assert len(fires) == 1 and fires[0]["outcome"] == "queued"
    messages = api.ok("GET", f"{SESSIONS}/enterprise-renewals/messages")["items"]
    assert len(messages) == 1


def test_tasks_from_before_an_update_or_delete_do_nothing(
    api: Api, cloud_tasks: dict[str, str]
) -> None:
    _apply_seed(api)
    old = _state("renewal-check")
    old_task = FireTask("acme", "renewal-check", old["version"], old["next_fire_at"])
    api.ok("PATCH", "/v1/ns/acme/schedules/renewal-check",
           json={"spec": {"cron": "30 9 * * 1-5"}})  # fmt: skip
    stale = _callback(cloud_tasks["callback"], old_task.to_json())
    assert stale.status_code == 200 and stale.json()["outcome"] == "stale"
    api.ok("DELETE", "/v1/ns/acme/schedules/renewal-check")
    gone = _callback(cloud_tasks["callback"], old_task.to_json())
    assert gone.status_code == 200 and gone.json()["outcome"] == "gone"
    assert _state("renewal-check") == {}


def test_missed_fire_policy_applies_to_a_late_delivery(
    api: Api, cloud_tasks: dict[str, str]
) -> None:
    _apply_seed(api)
    api.ok("PATCH", "/v1/ns/acme/schedules/renewal-check",
           json={"spec": {"missedFirePolicy": "skip"}})  # fmt: skip
    state = _state("renewal-check")
    task = FireTask("acme", "renewal-check", state["version"], state["next_fire_at"])
    services = entrypoints.services()
    hours_late = TaskScheduler(services.db, services.schedules, CloudTasksQueue(
        services.settings.control_plane.scheduler),
        clock=lambda: task.fire_at + timedelta(hours=3))  # fmt: skip
    assert hours_late.deliver(task)["outcome"] == "skipped"
    assert api.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"] == []
    assert _state("renewal-check")["next_fire_at"] > task.fire_at


def test_a_fire_beyond_the_queue_horizon_travels_in_legs(
    api: Api, cloud_tasks: dict[str, str], tasks_client: tasks_v2.CloudTasksClient
) -> None:
    _apply_seed(api)
    seed_task = set(_pending(tasks_client, cloud_tasks["queue"]))
    far = _fire_soon(api, "renewal-check", seconds=40 * 86400)

    def legs() -> list[datetime]:
        pending = _pending(tasks_client, cloud_tasks["queue"])
        return sorted(at for name, at in pending.items() if name not in seed_task)

    (first,) = legs()
    assert timedelta(days=28) < first - datetime.now(UTC) <= timedelta(days=29)
    # Pretend 29 days passed for the enqueuer: its leg is due in 2 seconds. The emulator
    # delivers it; the callback sees it early and enqueues the next leg.
    with entrypoints.services().db.transaction() as tx:
        tx.execute("UPDATE schedule_state SET task_fire_at = NULL WHERE name = 'renewal-check'")
    services = entrypoints.services()
    shifted = datetime.now(UTC) - timedelta(days=29) + timedelta(seconds=2)
    TaskScheduler(services.db, services.schedules, CloudTasksQueue(
        services.settings.control_plane.scheduler), clock=lambda: shifted).sync()  # fmt: skip
    soon = datetime.now(UTC) + timedelta(days=1)
    deadline = time.monotonic() + 20
    # The short leg delivered, the next one enqueued, and then (the queue first, so a crash
    # between leaves the fire for the sweep) marked as tasked.
    while time.monotonic() < deadline:
        pending = legs()
        legs_out = len(pending) == 2 and all(at > soon for at in pending)
        if legs_out and _state("renewal-check")["task_fire_at"] is not None:
            break
        time.sleep(0.2)
    assert len(pending) == 2 and pending[0] == first
    assert pending[1] <= far and pending[1] - first >= timedelta(seconds=1)
    assert _state("renewal-check")["task_fire_at"] == far
    assert api.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"] == []


def test_the_sweep_enqueues_fires_whose_task_was_lost(
    api: Api, cloud_tasks: dict[str, str], tasks_client: tasks_v2.CloudTasksClient
) -> None:
    _apply_seed(api)
    # As if the process died between committing the schedule and creating its task.
    with entrypoints.services().db.transaction() as tx:
        tx.execute("UPDATE schedule_state SET task_fire_at = NULL, task_version = NULL")
    url = cloud_tasks["callback"].replace("/fire", "/sweep")
    swept = _callback(url, {})
    assert swept.status_code == 200 and swept.json() == {"enqueued": 1}
    state = _state("renewal-check")
    assert state["task_fire_at"] == state["next_fire_at"]
    assert state["next_fire_at"] in _pending(tasks_client, cloud_tasks["queue"]).values()
    assert _callback(url, {}).json() == {"enqueued": 0}


def test_the_callback_refuses_unauthenticated_and_malformed_tasks(
    api: Api, cloud_tasks: dict[str, str]
) -> None:
    _apply_seed(api)
    state = _state("renewal-check")
    body = FireTask("acme", "renewal-check", state["version"], state["next_fire_at"]).to_json()
    assert _callback(cloud_tasks["callback"], body, token=None).status_code == 401
    assert _callback(cloud_tasks["callback"], body, token="wrong").status_code == 401
    bad = _callback(cloud_tasks["callback"], {**body, "fireAt": "tomorrow"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"] == [{"path": "fireAt", "message": "not an ISO 8601 time"}]
    missing = _callback(cloud_tasks["callback"], {"namespace": "acme"})
    assert {d["path"] for d in missing.json()["error"]["details"]} == {"name", "version", "fireAt"}
    assert httpx.get(cloud_tasks["callback"].replace("/fire", "/healthz")).status_code == 200
    assert httpx.get(cloud_tasks["callback"]).status_code == 405
    assert api.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"] == []


def test_in_oidc_mode_a_callback_without_a_token_is_refused(
    api: Api, cloud_tasks: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALON_CONTROL_PLANE_SCHEDULER_CALLBACK_VERIFICATION", "oidc")
    monkeypatch.setenv(
        "TALON_CONTROL_PLANE_SCHEDULER_SERVICE_ACCOUNT_EMAIL", "tasks@p.iam.gserviceaccount.com"
    )
    entrypoints.reset()
    _apply_seed(api)
    state = _state("renewal-check")
    body = FireTask("acme", "renewal-check", state["version"], state["next_fire_at"]).to_json()
    refused = _callback(cloud_tasks["callback"], body)  # the shared secret counts for nothing
    assert refused.status_code == 401
    assert "without an OIDC token" in refused.json()["error"]["message"]
    assert api.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"] == []


def test_in_oidc_mode_a_callback_with_a_google_signed_token_for_its_url_is_accepted(
    api: Api, cloud_tasks: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    email = "tasks@p.iam.gserviceaccount.com"
    monkeypatch.setenv("TALON_CONTROL_PLANE_SCHEDULER_CALLBACK_VERIFICATION", "oidc")
    monkeypatch.setenv("TALON_CONTROL_PLANE_SCHEDULER_SERVICE_ACCOUNT_EMAIL", email)
    entrypoints.reset()
    _apply_seed(api)
    google = GoogleCerts()
    try:
        # The one thing pointed elsewhere: Google's certificates come from the local stand-in.
        entrypoints.scheduler().verify_callback.certs_url = google.url
        state = _state("renewal-check")
        # An outdated version: answered `stale` once the caller is verified, nothing fires.
        body = FireTask("acme", "renewal-check", state["version"] + 1000, state["next_fire_at"])

        def call(token: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return httpx.post(cloud_tasks["callback"], json=body.to_json(), headers=headers)

        # The audience is the callback URL (callbackAudience is not set).
        elsewhere = call(google.token(audience="https://elsewhere.a.run.app", email=email))
        assert elsewhere.status_code == 401 and "audience" in elsewhere.text
        accepted = call(google.token(audience=cloud_tasks["callback"], email=email))
        assert accepted.status_code == 200 and accepted.json()["outcome"] == "stale"
        assert call(google.token(audience=cloud_tasks["callback"], email=email)).status_code == 200
        assert google.fetches == 1
    finally:
        google.close()

"""The orphan sweep's look-up against real PostgreSQL and liveness locks: a running turn is an
orphan exactly when its lease owner holds no liveness lock; the sweeper's own turns and the
sessions it is already driving are left out; an idle-handler count bounds the sweep. (The
sweep taking a killed worker's turn over end to end: tests/test_takeover_pull.py.)"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from test_crash import _setup

from conftest import Api
from talon.runtime.orphans import Capacity, OrphanSweep, find_orphans, find_stalled
from talon.store.database import Database
from talon.store.liveness import OwnerLock

BASE = "/v1/ns/acme/agents/bot/sessions"


def _running(db: Database, api: Api, session: str, owner: str) -> uuid.UUID:
    """A turn in `session` left running under `owner`'s unexpired lease."""
    api.ok("POST", f"{BASE}/{session}/message", 202, json={"content": "hi"})
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid FROM sessions WHERE id = %s", (session,))
        tx.execute("UPDATE turns SET state = 'running', lease_owner = %s, attempts = 1, "
                   "lease_expires_at = now() + interval '30 seconds' WHERE session_uid = %s",
                   (owner, uid))  # fmt: skip
    return uuid.UUID(str(uid))


def test_only_the_running_turns_of_owners_without_a_lock_are_orphans(
    api: Api, model_server: Any, db: Database
) -> None:
    _setup(api, model_server, 4)
    live = OwnerLock(db.raw_connect, "live-worker", closed=lambda: db.closed)
    assert live.wait_held(10)
    try:
        dead = _running(db, api, "s0", "dead-worker")
        _running(db, api, "s1", "live-worker")
        _running(db, api, "s2", "me")
        api.ok("POST", f"{BASE}/s3/message", 202, json={"content": "queued, not running"})
        assert find_orphans(db, "me", 10) == [(dead, "dead-worker")]
        assert find_orphans(db, "me", 10, skip={dead}) == []  # already being driven
        # Its own turns are not its orphans ("me" holds no lock either).
        assert [owner for _, owner in find_orphans(db, "dead-worker", 10)] == ["me"]
    finally:
        live.close()
    # Once the live worker's lock is gone (a moment after its connection closes) its turn is
    # an orphan too.
    _wait_for(lambda: len(find_orphans(db, "me", 10)) == 2)
    assert {owner for _, owner in find_orphans(db, "me", 10)} == {"dead-worker", "live-worker"}
    assert len(find_orphans(db, "me", 1)) == 1


def test_the_sweep_takes_only_idle_handlers_and_never_drives_a_session_twice_at_once(
    api: Api, model_server: Any, db: Database
) -> None:
    _setup(api, model_server, 3)
    orphans = {_running(db, api, f"s{i}", f"dead-{i}") for i in range(3)}
    capacity = Capacity(2)
    delivery_done, takeovers_done = threading.Event(), threading.Event()
    driven: list[uuid.UUID] = []

    def take_over(session_uid: uuid.UUID) -> None:  # runs nothing: the turns stay orphaned
        driven.append(session_uid)
        takeovers_done.wait(10)

    sweep = OrphanSweep(db, "me", take_over, capacity, poll=0.05)
    threads: list[threading.Thread] = []

    def submit(fn: Any, *args: Any) -> None:
        threads.append(threading.Thread(target=fn, args=args))
        threads[-1].start()

    def delivery() -> None:  # one in progress
        with capacity.busy():
            delivery_done.wait(10)

    submit(delivery)
    try:
        _wait_for(lambda: capacity.idle() == 1)
        assert sweep.sweep_once(submit) == 1  # one idle handler: one orphan
        _wait_for(lambda: capacity.idle() == 0)
        assert sweep.sweep_once(submit) == 0  # none idle: no look at all
        delivery_done.set()
        _wait_for(lambda: capacity.idle() == 1)
        assert sweep.sweep_once(submit) == 1
        _wait_for(lambda: len(driven) == 2)
        assert driven[0] != driven[1]  # the session being driven is not taken again
    finally:
        delivery_done.set()
        takeovers_done.set()
        for thread in threads:
            thread.join(10)
    assert capacity.idle() == 2 and set(driven) <= orphans


def test_a_session_whose_queued_head_turn_nobody_started_is_stalled(
    api: Api, model_server: Any, db: Database
) -> None:
    """A queued head turn that has waited (its delivery lost with a killed worker) makes its
    session stalled; a recent one, or one queued behind a running turn, does not."""
    _setup(api, model_server, 3)
    for i in range(3):
        api.ok("POST", f"{BASE}/s{i}/message", 202, json={"content": "queued"})
    with db.transaction() as tx:
        uids = {r["id"]: uuid.UUID(str(r["uid"])) for r in tx.all("SELECT id, uid FROM sessions")}
        # s0 and s2: queued a minute ago; s2's head turn, though, runs (a live worker has it).
        tx.execute("UPDATE turns SET created_at = now() - interval '60 seconds' "
                   "WHERE session_uid IN (%s, %s)", (uids["s0"], uids["s2"]))  # fmt: skip
    _running(db, api, "s2", "someone")  # s2's turns all run now, none queued at its head
    assert find_stalled(db, 10, stalled_seconds=30) == [uids["s0"]]
    assert find_stalled(db, 10, skip={uids["s0"]}, stalled_seconds=30) == []
    assert set(find_stalled(db, 10, stalled_seconds=0)) == {uids["s0"], uids["s1"]}


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)

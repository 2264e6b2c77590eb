"""A pull worker process with a test tool, for crash tests: `python tests/tool_worker.py
DATABASE_URL CALLS_FILE [LEASE_SECONDS [TOOL_SECONDS]]`. Each tool call appends its nonce to
CALLS_FILE (fsynced) and then takes a moment (TOOL_SECONDS, default 0.1), so a SIGKILL can
land during or right after the call. LEASE_SECONDS defaults to 1.5 (the visibility timeout
is half a second longer). With the gcp_pubsub driver in the environment it pulls from
Pub/Sub, as `talon worker` does."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from conftest import worker_for_tests
from talon.config import load_settings
from talon.runtime.providers.base import ToolSpec
from talon.runtime.tools.base import AgentContext, ToolResult, Toolset
from talon.store.connect import connector_from_url
from talon.store.database import Database
from talon.telemetry.setup import configure_telemetry, flush_telemetry


class FileRecordingTool:
    def __init__(self, path: str, seconds: float = 0.1) -> None:
        self.path = path
        self.seconds = seconds

    def tools_for(self, context: AgentContext) -> Toolset:
        schema = {"type": "object", "properties": {"days": {"type": "integer"}}}
        return Toolset([ToolSpec("get_renewals", "Renewals due soon.", schema)])

    def call(self, context: AgentContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(arguments) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        time.sleep(self.seconds)
        return ToolResult(json.dumps({"accounts": ["globex"], **arguments}))


def main() -> None:
    database_url, calls_file = sys.argv[1], sys.argv[2]
    lease = float(sys.argv[3]) if len(sys.argv) > 3 else 1.5
    tool_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.1
    db = Database(connector_from_url(database_url, 10), 8)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    poll = float(os.environ.get("TALON_WORKER_TAKEOVER_POLL_SECONDS", "0.5"))
    worker = worker_for_tests(db, tools=FileRecordingTool(calls_file, tool_seconds),
                              lease_seconds=lease, takeover_poll_seconds=poll)  # fmt: skip
    broker = load_settings().control_plane.message_broker
    consumer = None
    if broker.driver == "gcp_pubsub":
        from talon.broker.outbox import OUTBOX_COMMITTED
        from talon.broker.pubsub import PubSubPublisher
        from talon.broker.pubsub_pull import PubSubConsumer
        from talon.broker.relay import OutboxRelay

        consumer = PubSubConsumer(broker)
        # What the worker queues (a dead letter's fresh event) is published as `talon worker`
        # publishes it: right after commit.
        relay = OutboxRelay(db, PubSubPublisher(broker))
        db.on_commit(OUTBOX_COMMITTED, relay.on_commit)
    configure_telemetry()  # exported when the test sets OTEL_* (tests/test_telemetry.py)
    try:
        worker.run_pull(stop, concurrency=3, visibility_seconds=lease + 0.5, consumer=consumer)
    finally:
        flush_telemetry()


if __name__ == "__main__":
    main()

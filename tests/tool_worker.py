"""A pull worker process with a test tool, for crash tests: `python tests/tool_worker.py
DATABASE_URL CALLS_FILE`. Each tool call appends its nonce to CALLS_FILE (fsynced) and then
takes a moment, so a SIGKILL can land during or right after the call. With the gcp_pubsub
driver in the environment it pulls from Pub/Sub, as `talon worker` does."""

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
from talon.store.database import Database, connector_from_url


class FileRecordingTool:
    def __init__(self, path: str) -> None:
        self.path = path

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
        time.sleep(0.1)
        return ToolResult(json.dumps({"accounts": ["globex"], **arguments}))


def main() -> None:
    database_url, calls_file = sys.argv[1], sys.argv[2]
    db = Database(connector_from_url(database_url, 10), 8)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = worker_for_tests(db, tools=FileRecordingTool(calls_file),
                    lease_seconds=1.5)  # fmt: skip
    broker = load_settings().control_plane.message_broker
    consumer = None
    if broker.driver == "gcp_pubsub":
        from talon.broker.pubsub_pull import PubSubConsumer

        consumer = PubSubConsumer(broker)
    worker.run_pull(stop, concurrency=3, visibility_seconds=2.0, consumer=consumer)


if __name__ == "__main__":
    main()

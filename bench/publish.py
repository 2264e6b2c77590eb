"""Benchmark: the CPU one Pub/Sub publish costs the publishing process, against the gcloud
emulator. The client library's `publish` (unbatched: a batch, and a thread to send it, per
message) against the generated API client's `publish` call that `broker/pubsub.py` makes,
one after another and from 16 threads.

    .venv/bin/python bench/publish.py --messages 2000
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import google.cloud.pubsub_v1 as pubsub_v1
from google.pubsub_v1 import PublisherClient as ApiPublisher
from google.pubsub_v1 import PubsubMessage
from pubsub_stack import PROJECT, Emulator

DATA = b'{"sessionUid":"6f1c4c1e-0d7e-4f0e-9a53-3f1d2b7c9e10"}'
ATTRIBUTES = {"eventTopic": "dispatch", "key": "k", "outboxId": "1"}


def measure(publish: Callable[[], None], messages: int, threads: int) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    workers = [
        threading.Thread(target=lambda: [publish() for _ in range(messages // threads)])
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {
        "cpu_ms_per_publish": round((time.process_time() - cpu) * 1000 / messages, 3),
        "wall_ms_per_publish": round((time.perf_counter() - wall) * 1000 / messages, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    emulator = Emulator()
    try:
        emulator.wait()
        unbatched = pubsub_v1.types.BatchSettings(max_messages=1)
        client = pubsub_v1.PublisherClient(batch_settings=unbatched)
        topic = client.topic_path(PROJECT, "bench-publish")
        client.create_topic(name=topic)
        message = PubsubMessage(data=DATA, attributes=ATTRIBUTES)

        def library() -> None:
            client.publish(topic, DATA, **ATTRIBUTES).result()

        def api() -> None:
            ApiPublisher.publish(client, topic=topic, messages=[message], timeout=30)

        for warm in (library, api):
            measure(warm, 64, 1)
        results = {
            f"{name}, {threads} thread(s)": measure(publish, args.messages, threads)
            for threads in (1, 16)
            for name, publish in (("client library", library), ("API call", api))
        }
        print(json.dumps(results, indent=2))
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

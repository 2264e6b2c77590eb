"""Google Pub/Sub adapter: publishes outbox rows. Honours PUBSUB_EMULATOR_HOST. With a
`pushToken` configured, each message carries its signature (`broker/signing.py`) for the
dispatch function's `token` verification mode."""

from __future__ import annotations

import json
from concurrent.futures import Future
from typing import Any

# A module import: the package has no type hints, and `from google.cloud import pubsub_v1`
# would look it up on the namespace package the typed Google clients share.
import google.cloud.pubsub_v1 as pubsub_v1

from talon.broker.outbox import DISPATCH_TOPIC, LIFECYCLE_TOPIC
from talon.broker.signing import SIGNATURE_ATTRIBUTE, sign
from talon.config import MessageBrokerSettings
from talon.errors import ConfigError
from talon.telemetry import tracing

UNBATCHED = pubsub_v1.types.BatchSettings(max_messages=1)


class PubSubPublisher:
    def __init__(self, settings: MessageBrokerSettings) -> None:
        if not settings.project:
            raise ConfigError(
                "control_plane.message_broker.project is required for the gcp_pubsub driver"
            )
        self._push_token = settings.push_token
        # Each publish is awaited (the relay deletes its row only once it stands), so
        # batching would only hold every message back for its 10 ms max_latency.
        self._client = pubsub_v1.PublisherClient(batch_settings=UNBATCHED)
        self._topics = {
            DISPATCH_TOPIC: self._client.topic_path(settings.project, settings.dispatch_topic),
            LIFECYCLE_TOPIC: self._client.topic_path(settings.project, settings.lifecycle_topic),
        }

    def publish(self, topic: str, payload: dict[str, Any], *, key: str, outbox_id: int) -> str:
        """Publish and wait for the server's acknowledgement; return the message id."""
        return self.submit(topic, payload, key=key, outbox_id=outbox_id).result(timeout=30)

    def submit(
        self, topic: str, payload: dict[str, Any], *, key: str, outbox_id: int
    ) -> Future[str]:
        """Hand the message to the client and return its future message id at once. A
        producer span in the change's trace (its `traceparent`, carried by the row) times
        the publish to the server's acknowledgement; the message's `traceparent` attribute
        names that span."""
        traceparent = payload.get("traceparent")
        parent = traceparent if isinstance(traceparent, str) else None
        attributes: tracing.Attributes = {
            "messaging.system": "gcp_pubsub", "messaging.destination.name": topic,
            "messaging.operation.type": "send", "talon.outbox.id": outbox_id,
        }  # fmt: skip
        with tracing.span_ended_later(f"publish {topic}", parent=parent,
                                      kind=tracing.SpanKind.PRODUCER,
                                      attributes=attributes) as span:  # fmt: skip
            future: Future[str] = self._submit(topic, payload, key, outbox_id)

        def acknowledged(done: Future[str]) -> None:
            try:
                tracing.set_attributes(span, {"messaging.message.id": done.result()})
            except Exception as exc:  # the publisher's own error: its caller sees it too
                tracing.fail(span, str(exc))
            span.end()

        future.add_done_callback(acknowledged)
        return future

    def _submit(self, topic: str, payload: dict[str, Any], key: str, outbox_id: int) -> Any:
        data = json.dumps(payload, separators=(",", ":")).encode()
        # `topic` would clash with publish()'s own parameter.
        attributes = {"eventTopic": topic, "key": key, "outboxId": str(outbox_id)}
        traceparent = tracing.current_traceparent() or payload.get("traceparent")
        if isinstance(traceparent, str):  # W3C trace context, for consumers
            attributes["traceparent"] = traceparent
        if self._push_token:
            attributes[SIGNATURE_ATTRIBUTE] = sign(self._push_token, topic, data)
        # A concurrent.futures.Future whose result is the message id.
        return self._client.publish(self._topics[topic], data, **attributes)

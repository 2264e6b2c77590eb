"""A Pub/Sub message as a `Delivery`: one reading for the push envelope (api/push.py) and
for streaming pull (broker/pubsub_pull.py), so both hand the worker the same thing.

A message Pub/Sub dead-lettered keeps its data and attributes and gains
`CloudPubSubDeadLetterSource*` attributes (the emulator adds them too); that is how a
consumer of the dead-letter subscription tells a dead letter from a first delivery.
"""

from __future__ import annotations

import contextlib
import json

from talon.broker.base import Delivery
from talon.broker.outbox import DISPATCH_TOPIC

EVENT_TOPIC_ATTRIBUTE = "eventTopic"
DEAD_LETTER_SOURCE_ATTRIBUTE = "CloudPubSubDeadLetterSourceSubscription"
DEAD_LETTER_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"


def event_topic(attributes: dict[str, str]) -> str:
    return attributes.get(EVENT_TOPIC_ATTRIBUTE, DISPATCH_TOPIC)


def to_delivery(message_id: str, data: bytes, attributes: dict[str, str], attempt: int) -> Delivery:
    """The delivery a message stands for. Raises ValueError when `data` is not JSON."""
    payload = json.loads(data or b"{}")
    dead = DEAD_LETTER_SOURCE_ATTRIBUTE in attributes
    if dead:  # the attempts the source subscription made, not this subscription's
        with contextlib.suppress(ValueError):
            attempt = int(attributes.get(DEAD_LETTER_COUNT_ATTRIBUTE) or attempt)
    return Delivery(
        id=message_id,
        topic=event_topic(attributes),
        payload=payload if isinstance(payload, dict) else {},
        attempt=max(1, attempt),
        dead_lettered=dead,
    )

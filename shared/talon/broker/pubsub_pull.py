"""Google Pub/Sub streaming pull: the consumer `talon worker` runs with the gcp_pubsub driver
and worker.pullMode. Honours PUBSUB_EMULATOR_HOST.

It subscribes to the dispatch, lifecycle and (when named) dead-letter subscriptions and hands
each message to the same handler the push function calls (`Worker.handle`), so there is one
way a turn runs. Flow control keeps at most `concurrency` dispatch messages outstanding; the
client's lease management keeps extending a message's ack deadline (by
`pullAckDeadlineSeconds`, up to `pullMaxLeaseSeconds`) while its turn runs, so a killed worker's
messages come back within one deadline (its turns are taken over sooner than that by the
other workers' orphan sweep, runtime/orphans.py). A message is acknowledged only once the
handler returns, after the turn's final commit. A failed one is nacked: the subscription's retry
policy spaces out its redeliveries, and its dead-letter policy moves it to the dead-letter
topic after `maxDeliveryAttempts`. A session busy on another worker defers its message to
when that worker's lease would expire (released from lease management, deadline set then).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

# Module imports: the package has no type hints (see broker/pubsub.py).
import google.cloud.pubsub_v1 as pubsub_v1

from talon.broker.base import Handler, Outcome, Result
from talon.broker.messages import to_delivery
from talon.config import MessageBrokerSettings, require_settings

log = logging.getLogger(__name__)
MAX_DEADLINE_SECONDS = 600  # Pub/Sub's longest ack deadline


class PubSubConsumer:
    def __init__(self, settings: MessageBrokerSettings) -> None:
        section = "control_plane.message_broker"
        require_settings("pull mode on gcp_pubsub", {
            f"{section}.project": settings.project,
            f"{section}.dispatchSubscription": settings.dispatch_subscription,
            f"{section}.lifecycleSubscription": settings.lifecycle_subscription,
        })  # fmt: skip
        self.settings = settings
        self._client = pubsub_v1.SubscriberClient()

    def subscriptions(self, concurrency: int) -> dict[str, int]:
        """Subscription path -> the messages outstanding at once on it."""
        s = self.settings
        path = self._client.subscription_path
        paths = {path(s.project, s.dispatch_subscription): concurrency,
                 path(s.project, s.lifecycle_subscription): 1}  # fmt: skip
        if s.dead_letter_subscription:
            paths[path(s.project, s.dead_letter_subscription)] = 1
        return paths

    def consume(self, handler: Handler, stop: threading.Event, *, concurrency: int) -> None:
        """Stream from every subscription until `stop` is set, then wait for the handlers in
        progress (messages not yet handed out are nacked, for another worker to take)."""
        s = self.settings
        futures = []
        for path, outstanding in self.subscriptions(concurrency).items():
            flow = pubsub_v1.types.FlowControl(
                max_messages=outstanding,
                max_lease_duration=s.pull_max_lease_seconds,
                min_duration_per_lease_extension=s.pull_ack_deadline_seconds,
                max_duration_per_lease_extension=s.pull_ack_deadline_seconds,
            )
            pool = ThreadPoolExecutor(outstanding, thread_name_prefix="talon-handler")
            futures.append(self._client.subscribe(
                path, _Callback(handler), flow_control=flow,
                scheduler=pubsub_v1.subscriber.scheduler.ThreadScheduler(pool),
                await_callbacks_on_shutdown=True,
            ))  # fmt: skip
        log.info("worker pulling %s", ", ".join(self.subscriptions(concurrency)))
        try:
            while not stop.wait(1.0):
                for future in futures:
                    if future.done():  # a stream that failed for good (e.g. no such subscription)
                        future.result()
        finally:
            for future in futures:
                future.cancel()
            for future in futures:
                try:
                    future.result(timeout=60)
                except Exception as exc:  # cancelled, or it had failed: already reported
                    log.debug("subscription stream ended: %r", exc)
            self._client.close()


class _Callback:
    """One message in, the handler's result out as ack, nack or a deferred redelivery."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def __call__(self, message: Any) -> None:
        attributes = dict(message.attributes)
        try:
            delivery = to_delivery(
                message.message_id, message.data, attributes, message.delivery_attempt or 1
            )
        except ValueError:
            log.error("dropping message %s: its data is not JSON", message.message_id)
            message.ack()
            return
        try:
            result = self.handler(delivery)
        except Exception:
            log.exception("handler failed on %s message %s", delivery.topic, delivery.id)
            result = Result.retry()
        settle(message, result)


def settle(message: Any, result: Result) -> None:
    if result.outcome in (Outcome.ACK, Outcome.SETTLED):
        message.ack()
    elif result.retry_at is None:
        message.nack()  # redelivered after the subscription's retry backoff
    else:
        # Out of lease management first, so the client does not extend the deadline again.
        delay = (result.retry_at - datetime.now(UTC)).total_seconds()
        message.drop()
        message.modify_ack_deadline(int(min(MAX_DEADLINE_SECONDS, max(0.0, delay)) + 1))

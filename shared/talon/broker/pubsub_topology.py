"""The pull-mode topics and subscriptions, created where nothing else creates them: on the
Pub/Sub emulator for `talon dev --broker pubsub` and the tests. In the cloud Terraform owns
them (terraform/modules/messaging), with the same policies: dispatch and lifecycle pull
subscriptions that retry with backoff and dead-letter after `maxDeliveryAttempts`, and a
pull subscription on the dead-letter topic for the worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

# Module import: the package has no type hints (see broker/pubsub.py).
import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions
from google.protobuf import duration_pb2

from talon.config import MessageBrokerSettings


def create_pull_topology(
    settings: MessageBrokerSettings,
    *,
    ack_deadline_seconds: int = 10,
    minimum_backoff_seconds: int = 10,
    maximum_backoff_seconds: int = 600,
) -> dict[str, str]:
    """Create what is missing; return the subscription paths by their settings' names."""
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    project = settings.project
    topic = {name: publisher.topic_path(project, name) for name in (
        settings.dispatch_topic, settings.lifecycle_topic, settings.dead_letter_topic)}  # fmt: skip
    for path in topic.values():
        _ignore_existing(partial(publisher.create_topic, name=path))
    retry = pubsub_v1.types.RetryPolicy(
        minimum_backoff=duration_pb2.Duration(seconds=minimum_backoff_seconds),
        maximum_backoff=duration_pb2.Duration(seconds=maximum_backoff_seconds),
    )
    dead_letter = pubsub_v1.types.DeadLetterPolicy(
        dead_letter_topic=topic[settings.dead_letter_topic],
        max_delivery_attempts=settings.max_delivery_attempts,
    )
    wanted = {
        "dispatchSubscription": (settings.dispatch_subscription, settings.dispatch_topic, True),
        "lifecycleSubscription": (settings.lifecycle_subscription, settings.lifecycle_topic, True),
        "deadLetterSubscription": (
            settings.dead_letter_subscription, settings.dead_letter_topic, False),
    }  # fmt: skip
    paths = {}
    for key, (name, topic_name, dead_letters) in wanted.items():
        if not name:
            continue
        request = {
            "name": subscriber.subscription_path(project, name),
            "topic": topic[topic_name],
            "ack_deadline_seconds": ack_deadline_seconds,
            "retry_policy": retry,
            **({"dead_letter_policy": dead_letter} if dead_letters else {}),
        }
        _ignore_existing(partial(subscriber.create_subscription, request=request))
        paths[key] = str(request["name"])
    subscriber.close()
    return paths


def delete_pull_topology(settings: MessageBrokerSettings) -> None:
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for name in (settings.dispatch_subscription, settings.lifecycle_subscription,
                 settings.dead_letter_subscription):  # fmt: skip
        if name:
            path = subscriber.subscription_path(settings.project, name)
            _ignore_missing(partial(subscriber.delete_subscription, subscription=path))
    for name in (settings.dispatch_topic, settings.lifecycle_topic, settings.dead_letter_topic):
        path = publisher.topic_path(settings.project, name)
        _ignore_missing(partial(publisher.delete_topic, topic=path))
    subscriber.close()


def _ignore_existing(create: Callable[[], object]) -> None:
    with contextlib.suppress(exceptions.AlreadyExists):
        create()


def _ignore_missing(delete: Callable[[], object]) -> None:
    with contextlib.suppress(exceptions.NotFound):
        delete()

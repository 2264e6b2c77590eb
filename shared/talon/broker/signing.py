"""Pub/Sub messages signed with the shared push token, so the secret itself never travels.

Pub/Sub push cannot add headers to its requests, and a secret in the push URL's query ends
up in the subscription's configuration and in request logs. Instead every publisher signs
what it publishes: HMAC-SHA256 keyed with `pushToken` over the event topic and the message
data, sent as the message attribute `talonSignature`; the dispatch function recomputes it
from the push envelope (`token` verification mode). A captured message can be replayed, but
only as itself, and deliveries are at-least-once anyway: handling one twice is harmless.
"""

from __future__ import annotations

import hashlib
import hmac

from talon.auth.shared_secret import same_secret, text_bytes

SIGNATURE_ATTRIBUTE = "talonSignature"
_VERSION = "v1"


def sign(secret: str, topic: str, data: bytes) -> str:
    """`v1=<hex HMAC-SHA256>` of the topic and the data, keyed with `secret`."""
    topic_bytes = text_bytes(topic)
    # The topic's length first, so no (topic, data) pair can pass for another.
    message = b"%s\n%d\n%s%s" % (_VERSION.encode(), len(topic_bytes), topic_bytes, data)
    digest = hmac.new(text_bytes(secret), message, hashlib.sha256).hexdigest()
    return f"{_VERSION}={digest}"


def signed_by(secret: str, topic: str, data: bytes, signature: str) -> bool:
    """True when `signature` is `sign(secret, topic, data)`; compared in constant time."""
    return same_secret(text_bytes(signature), sign(secret, topic, data).encode())

"""The Talon SDK: synchronous and asynchronous clients for the gateway's public API.

from talon.client import Client

with Client.from_env() as talon:          # TALON_URL/TALON_TOKEN, else the current context
    talon.create_session("acme", "customer-support", "enterprise-renewals")
    accepted = talon.send("acme", "customer-support", "enterprise-renewals", "Hi")
    for event in talon.stream("acme", "customer-support", "enterprise-renewals",
                              after=accepted.stream_from, until_turn_end=True):
        print(event.type, event.data)
"""

from talon.client.async_client import AsyncClient
from talon.client.errors import (
    APIError,
    BadRequest,
    Conflict,
    Invalid,
    NotFound,
    PermissionDenied,
    ServerError,
    TalonConnectionError,
    TalonError,
    Unauthenticated,
    UnexpectedAnswer,
)
from talon.client.following import StreamEnded
from talon.client.models import (
    Accepted,
    ApplyResult,
    CreatedToken,
    Event,
    Identity,
    Message,
    Resource,
    Session,
    Token,
    Turn,
)
from talon.client.sync_client import Client

__all__ = [
    "APIError", "Accepted", "ApplyResult", "AsyncClient", "BadRequest", "Client", "Conflict",
    "CreatedToken", "Event", "Identity", "Invalid", "Message", "NotFound", "PermissionDenied",
    "Resource", "ServerError", "Session", "StreamEnded", "TalonConnectionError", "TalonError",
    "Token", "Turn", "Unauthenticated", "UnexpectedAnswer",
]  # fmt: skip

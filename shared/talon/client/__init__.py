"""The Talon SDK: synchronous and asynchronous clients for the gateway's public API.

from talon.client import Client

with Client.from_env() as talon:          # TALON_URL/TALON_TOKEN, else the current context
    talon.create_session("acme", "customer-support", "enterprise-renewals")
    for event in talon.send_and_stream("acme", "customer-support", "enterprise-renewals", "Hi"):
        print(event.type, event.data)  # the turn's events, one request, to its end
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
from talon.client.turn_events import AsyncTurnEvents, TurnEvents

__all__ = [
    "APIError", "Accepted", "ApplyResult", "AsyncClient", "AsyncTurnEvents", "BadRequest",
    "Client", "Conflict", "CreatedToken", "Event", "Identity", "Invalid", "Message", "NotFound",
    "PermissionDenied", "Resource", "ServerError", "Session", "StreamEnded",
    "TalonConnectionError", "TalonError", "Token", "Turn", "TurnEvents", "Unauthenticated",
    "UnexpectedAnswer",
]  # fmt: skip

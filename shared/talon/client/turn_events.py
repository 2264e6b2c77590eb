"""What `send_and_stream` returns: a posted turn's events as they arrive, and the turn's id."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

from talon.client.following import TurnFollower
from talon.client.models import Event


class TurnEvents:
    """The posted turn's events (iterate it), from its `message.created` to its end.
    `turn_id` is known once the gateway has answered, before the first event is handed
    out. `close()` drops the connection when you stop early."""

    def __init__(self, follower: TurnFollower, events: Generator[Event, None, None]) -> None:
        self._follower = follower
        self._events = events

    @property
    def turn_id(self) -> str | None:
        return self._follower.turn

    def __iter__(self) -> TurnEvents:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        self._events.close()


class AsyncTurnEvents:
    """`TurnEvents` for the asynchronous client: `async for`, and `aclose()`."""

    def __init__(self, follower: TurnFollower, events: AsyncGenerator[Event, None]) -> None:
        self._follower = follower
        self._events = events

    @property
    def turn_id(self) -> str | None:
        return self._follower.turn

    def __aiter__(self) -> AsyncTurnEvents:
        return self

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

"""Who a request acts as, and what that identity may see and do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

ROLE_RANK = {"read": 0, "write": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    role: str
    namespaces: tuple[str, ...] | None  # None: every namespace
    # None: a general token. A tuple: a token brokered for talon-ops, limited to these tools
    # (the gateway's REST API refuses it).
    tools: tuple[str, ...] | None = None
    expires_at: datetime | None = None  # an open stream ends when it passes

    def has_role(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def can_see(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def covers(self, namespaces: tuple[str, ...] | None) -> bool:
        """True if every namespace in `namespaces` (None: all) is visible to this principal."""
        if self.namespaces is None:
            return True
        return namespaces is not None and set(namespaces) <= set(self.namespaces)

    @property
    def visible_namespaces(self) -> list[str] | None:
        return None if self.namespaces is None else list(self.namespaces)

"""The session's own error."""

from __future__ import annotations

__all__ = ["SessionError"]


class SessionError(ValueError):
    """A request the session cannot serve in its current state; the message says the fix."""

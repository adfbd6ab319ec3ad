"""AMQP exceptions (channel or connection), with RabbitMQ's reply codes."""

from __future__ import annotations

from typing import Final

from ..errors import (
    AuthenticationFailed,
    BacklogFull,
    GroupSettingsMismatch,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    TideMQError,
    TopicExists,
    UnknownGroup,
    UnknownTopic,
)

__all__ = ["AmqpError", "from_tidemq", "REPLY_TEXT"]

REPLY_TEXT: Final = {
    200: "OK", 311: "CONTENT_TOO_LARGE", 312: "NO_ROUTE", 313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED", 402: "INVALID_PATH", 403: "ACCESS_REFUSED", 404: "NOT_FOUND",
    405: "RESOURCE_LOCKED", 406: "PRECONDITION_FAILED", 501: "FRAME_ERROR",
    502: "SYNTAX_ERROR", 503: "COMMAND_INVALID", 504: "CHANNEL_ERROR", 505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR", 530: "NOT_ALLOWED", 540: "NOT_IMPLEMENTED", 541: "INTERNAL_ERROR",
}
# Codes that are connection exceptions (the rest close only the channel).
_CONNECTION_CODES: Final = frozenset({320, 402, 501, 502, 503, 504, 505, 530, 541})


class AmqpError(Exception):
    """An AMQP exception: ``channel.close`` (or ``connection.close`` when ``connection``) with
    ``code`` and ``text`` (RabbitMQ's style: ``"NOT_FOUND - no queue 'q' in vhost '/'"``)."""

    def __init__(self, code: int, text: str, *, connection: bool | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text[:255]
        self.connection = code in _CONNECTION_CODES if connection is None else connection


def from_tidemq(exc: TideMQError) -> AmqpError:
    """The AMQP exception for a broker error."""
    msg = exc.message if hasattr(exc, "message") else str(exc)
    if isinstance(exc, UnknownTopic | UnknownGroup):
        return AmqpError(404, f"NOT_FOUND - {msg}")
    if isinstance(exc, PermissionDenied | AuthenticationFailed):
        return AmqpError(403, f"ACCESS_REFUSED - {msg}")
    if isinstance(exc, InvalidArgument | GroupSettingsMismatch | TopicExists):
        return AmqpError(406, f"PRECONDITION_FAILED - {msg}")
    if isinstance(exc, BacklogFull | ResourceExhausted):
        return AmqpError(506, f"RESOURCE_ERROR - {msg}")
    return AmqpError(541, f"INTERNAL_ERROR - {msg}")

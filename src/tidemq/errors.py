"""The one error catalogue of TideMQ.

Every error a user can see is a subclass of :class:`TideMQError` with a stable wire ``code``,
whether it is ``retriable`` and the HTTP status the HTTP API answers with. The wire protocol
sends the code; :func:`for_code` turns it back into the same exception type on the client
(aiokafka's ``errors.for_code``). Each type has one meaning, stated in its docstring.

Layers translate foreign exceptions (``OSError``, ``struct.error``, ``KeyError`` ...) into these
at their boundary: none of those leave the public API.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "TideMQError",
    "for_code",
    "CATALOGUE",
]


class TideMQError(Exception):
    """Base of every TideMQ error. ``str(err)`` says what went wrong and what to do."""

    code: ClassVar[int] = 1
    retriable: ClassVar[bool] = False
    http_status: ClassVar[int] = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip().splitlines()[0])
        self.message = str(self.args[0])


# --- input errors (the caller's fault; fix the call) ------------------------------------


class InvalidArgument(TideMQError):
    """An argument is malformed or out of range; the message names it."""

    code = 10
    http_status = 400


class InvalidTopicName(InvalidArgument):
    """A topic name breaks SPEC §1: 1-200 chars of [A-Za-z0-9_.-], dot-separated non-empty words."""

    code = 11


class MessageTooLarge(InvalidArgument):
    """A message (or its key, routing key or headers) exceeds the topic's limits; nothing was stored."""

    code = 12
    http_status = 413


class InvalidFilter(InvalidArgument):
    """A group filter is malformed (bad routing pattern or header condition)."""

    code = 13


class GroupSettingsMismatch(TideMQError):
    """``subscribe`` asked for group settings that differ from the group's; use ``update_group``."""

    code = 20
    http_status = 409


class TopicExists(TideMQError):
    """``create_topic`` named a topic that already exists."""

    code = 21
    http_status = 409


class UnknownTopic(TideMQError):
    """The topic does not exist (and auto-creation is off)."""

    code = 22
    http_status = 404


class UnknownGroup(TideMQError):
    """The consumer group does not exist."""

    code = 23
    http_status = 404


class UnknownMessage(TideMQError):
    """The message id is malformed or names no message this subscription holds."""

    code = 24
    http_status = 404


class StaleLease(TideMQError):
    """The lease on this delivery expired and the message is now leased to another member; nothing changed."""

    code = 25
    http_status = 409


class InvalidPartitionCount(InvalidArgument):
    """Partitions may only grow (SPEC §1)."""

    code = 26


# --- state and capacity errors -------------------------------------------------------------


class BacklogFull(TideMQError):
    """The topic's backlog limit is reached and its policy is ``reject``; retry later or consume."""

    code = 30
    retriable = True
    http_status = 429


class DiskFull(TideMQError):
    """The disk is full (ENOSPC); nothing of this write was confirmed. Free space; writes resume by themselves."""

    code = 31
    retriable = True
    http_status = 507


class StorageFailed(TideMQError):
    """A write or fsync failed; the log is in a failed state and refuses writes until reopened."""

    code = 32
    http_status = 500


class CorruptRecord(TideMQError):
    """A stored batch failed its checksum or format check and was not served."""

    code = 33
    http_status = 500


class DataDirLocked(TideMQError):
    """Another process holds the data folder's lock; stop it or use another folder."""

    code = 34
    http_status = 423


class ResourceExhausted(TideMQError):
    """The process ran out of a system resource (file descriptors, kernel memory) for a
    moment; nothing of this call was stored and the store stays healthy. Retry shortly; if it
    persists, raise the open-files limit (``ulimit -n``)."""

    code = 35
    retriable = True
    http_status = 503


class Closed(TideMQError):
    """The client, subscription or broker was closed by this program; open a new one."""

    code = 40
    http_status = 400


class ConnectionLost(TideMQError):
    """The connection to the server broke (the world's fault); the client reconnects and retries."""

    code = 41
    retriable = True
    http_status = 503


class ProtocolError(TideMQError):
    """A peer sent bytes that are not a valid frame; the connection is closed."""

    code = 42
    http_status = 400


class FrameTooLarge(ProtocolError):
    """A frame exceeds the negotiated maximum frame size."""

    code = 43
    http_status = 413


class UnsupportedVersion(ProtocolError):
    """Client and server share no protocol version."""

    code = 44


class Timeout(TideMQError):
    """An operation did not complete in the time given."""

    code = 45
    retriable = True
    http_status = 504


class Unsupported(TideMQError):
    """The backend behind this URL does not support the feature; the message names it."""

    code = 46
    http_status = 501


# --- security (who may connect, and what they may do) -------------------------------------


class AuthenticationFailed(TideMQError):
    """The server did not accept the credentials (unknown user, wrong password, bad or revoked
    token, no acceptable certificate), or authentication is required and none was offered."""

    code = 50
    http_status = 401


class PermissionDenied(TideMQError):
    """The authenticated user is not allowed this operation on this topic or group."""

    code = 51
    http_status = 403


class InternalError(TideMQError):
    """A bug in TideMQ; please report it with the message."""

    code = 99


def _catalogue() -> dict[int, type[TideMQError]]:
    out: dict[int, type[TideMQError]] = {}
    stack: list[type[TideMQError]] = [TideMQError]
    while stack:
        cls = stack.pop()
        assert cls.code not in out, f"duplicate error code {cls.code}"
        out[cls.code] = cls
        stack.extend(cls.__subclasses__())
    return out


CATALOGUE: dict[int, type[TideMQError]] = _catalogue()


def for_code(code: int, message: str = "") -> TideMQError:
    """The exception for a wire ``code`` (unknown codes become :class:`TideMQError`)."""
    return CATALOGUE.get(code, TideMQError)(message)


__all__ += [name for name, obj in list(globals().items())
            if isinstance(obj, type) and issubclass(obj, TideMQError)]

"""Printing for the CLI: one-line errors, aligned tables, JSON lines, message rendering.

Everything here writes to the ``sys.stdout`` / ``sys.stderr`` of the moment of the call (not of
import), so tests that capture them and pipes that replace them both work.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "error",
    "note",
    "table",
    "json_line",
    "fmt_bytes",
    "message_json",
    "write_body_lines",
    "write_raw",
]


def error(message: str) -> None:
    """Print ``tidemq: error: <message>`` as exactly one line on stderr."""
    one_line = " ".join(str(message).split())
    print(f"tidemq: error: {one_line}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """A human hint on stderr (never mixed into the data a command prints on stdout)."""
    print(f"tidemq: {message}", file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print ``rows`` as left-aligned, space-separated columns under ``headers``.

    Plain text rather than box drawing so ``awk``/``cut`` can read it; numbers are right-aligned.
    """
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(headers))]
    for r in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)]
        print("  ".join(parts).rstrip())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_line(obj: Any) -> None:
    """Print ``obj`` as one compact JSON line."""
    print(json.dumps(obj, separators=(", ", ": "), ensure_ascii=False))


def fmt_bytes(value: bytes | None, limit: int = 60) -> str | None:
    """A short, printable preview of ``value`` (UTF-8 when it decodes, else ``0x…`` hex)."""
    if value is None:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = "0x" + value[: limit // 2].hex()
        return text + ("…" if len(value) > limit // 2 else "")
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text_or_base64(name: str, value: bytes | None, out: dict[str, Any]) -> None:
    # A field is "<name>" when it is valid UTF-8 and "<name>_base64" otherwise, so a reader
    # always knows how to get the exact bytes back.
    if value is None:
        out[name] = None
        return
    try:
        out[name] = value.decode("utf-8")
    except UnicodeDecodeError:
        out[f"{name}_base64"] = base64.b64encode(value).decode("ascii")


def message_json(msg: Any) -> dict[str, Any]:
    """The JSON object ``consume --format json`` prints for one delivered message."""
    out: dict[str, Any] = {
        "id": msg.id,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "timestamp": msg.timestamp,
    }
    _text_or_base64("key", msg.key, out)
    out["routing_key"] = msg.routing_key
    out["headers"] = dict(msg.headers)
    out["priority"] = msg.priority
    out["delivery_count"] = msg.delivery_count
    _text_or_base64("body", msg.body, out)
    return out


def write_body_lines(bodies: Sequence[bytes]) -> None:
    """Write each body's exact bytes followed by a newline to stdout, in one write
    (bodies need not be UTF-8)."""
    if bodies:
        write_raw(b"\n".join(bodies) + b"\n")


def write_raw(data: bytes) -> None:
    """Write ``data`` to stdout's byte stream, after any text written before it."""
    out = sys.stdout
    buf = getattr(out, "buffer", None)
    if buf is None:  # a text-only stream (some test harnesses): best effort
        out.write(data.decode("utf-8", "replace"))
        return
    out.flush()  # keep order with text written before
    buf.write(data)

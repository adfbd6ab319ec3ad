"""Errors as ``application/problem+json`` (RFC 9457), and JSON in and out.

Every error the API answers is a :class:`~tidemq.errors.TideMQError` of the one catalogue:
the body carries its ``code`` and type name, the status is its ``http_status``. aiohttp's own
HTTP errors (no such route, method not allowed, body too large) are translated to the nearest
catalogue error here, so a client sees one error shape.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from ..errors import FrameTooLarge, InvalidArgument, TideMQError
from ._types import Encoding, Problem

__all__ = ["problem", "problem_response", "json_response", "read_json", "decode_bytes",
           "encode_bytes", "PROBLEM_JSON"]

PROBLEM_JSON = "application/problem+json"
_T = TypeVar("_T")
_WORDS = re.compile(r"(?<!^)(?=[A-Z])")
_encoder = msgspec.json.Encoder()
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def problem(exc: TideMQError, instance: str | None = None) -> Problem:
    """The problem body of ``exc``."""
    name = type(exc).__name__
    return Problem(type=f"urn:tidemq:error:{_WORDS.sub('-', name).lower()}", title=name,
                   status=exc.http_status, detail=exc.message, code=exc.code,
                   retriable=exc.retriable, instance=instance)


def problem_response(exc: TideMQError, instance: str | None = None,
                     headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=exc.http_status, body=_encoder.encode(problem(exc, instance)),
                        content_type=PROBLEM_JSON, headers=headers)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encoder.encode(value),
                        content_type="application/json")


async def read_json(request: web.Request, typ: type[_T]) -> _T:
    """The request body decoded as ``typ``; InvalidArgument naming the bad field, or
    FrameTooLarge past ``http_max_body_bytes`` (aiohttp's ``client_max_size``).

    The body must be declared ``Content-Type: application/json``: a web page of another site
    can make a browser send a "simple" cross-site POST (text/plain, form data) with the
    browser's stored credentials, but not one declared JSON without a CORS preflight, which
    this server never grants. So no other site can publish, settle or redrive through a
    visitor's browser."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise InvalidArgument(f"send the body as JSON with 'Content-Type: application/json' "
                              f"(got {ctype[:60]!r}; with curl: --json)")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise FrameTooLarge(f"the request body is larger than the server accepts "
                            f"({exc.text or 'http_max_body_bytes'}); send less per request") \
            from None
    if not raw:
        raise InvalidArgument("this request needs a JSON body")
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"bad request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None


def decode_bytes(text: str, encoding: Encoding, what: str) -> bytes:
    """``text`` as bytes: UTF-8 or (strict) base64."""
    if encoding == "utf8":
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"{what} is not encodable as UTF-8 (lone surrogates?)") \
                from None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{what} is not valid base64 (encoding 'base64')") from None


def encode_bytes(data: bytes) -> tuple[str, Encoding]:
    """Bytes for JSON: the text when they are UTF-8 without control characters (but tab and
    line breaks), else base64."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not _CONTROL.search(text):
        return text, "utf8"
    return base64.b64encode(data).decode("ascii"), "base64"

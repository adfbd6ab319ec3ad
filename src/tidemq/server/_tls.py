"""The server's TLS context (docs/security.md, "TLS")."""

from __future__ import annotations

import ssl

from ..errors import InvalidArgument

__all__ = ["server_context"]


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """TLS 1.2 or later with ``cert``/``key``; with ``client_ca`` every client must present a
    certificate that CA signed (mTLS: ``EXTERNAL`` authentication names the user from it).
    Raises ``InvalidArgument`` naming the file that cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"cannot use TLS certificate {cert} with key {key}: {exc}") from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"cannot use client CA file {client_ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx

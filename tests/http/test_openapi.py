"""The OpenAPI document is generated from the routes and their msgspec types; this test fails
when it drifts from the committed snapshot (``openapi.snapshot.json``). After an intended API
change, regenerate it: ``TIDEMQ_UPDATE_SNAPSHOT=1 .venv/bin/pytest tests/http/test_openapi.py``
and review the diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tidemq.http._openapi import openapi_document
from tidemq.http._routes import ROUTES

SNAPSHOT = Path(__file__).with_name("openapi.snapshot.json")


def test_openapi_matches_the_snapshot() -> None:
    doc = json.loads(json.dumps(openapi_document()))
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if os.environ.get("TIDEMQ_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.exists(), "no snapshot: run with TIDEMQ_UPDATE_SNAPSHOT=1 once"
    assert text == SNAPSHOT.read_text(), (
        "the OpenAPI document changed; if intended, regenerate the snapshot "
        "(TIDEMQ_UPDATE_SNAPSHOT=1) and review the diff")


def test_every_route_is_documented_with_its_permission() -> None:
    doc = openapi_document()
    for r in ROUTES:
        op = doc["paths"][r.path][r.method.lower()]
        assert op["x-tidemq-permission"] and op["summary"]
        if r.body is not None:
            assert "requestBody" in op
    schemas = doc["components"]["schemas"]
    assert {"Problem", "MessageIn", "ReceiveIn", "SettleOut", "GroupOut"} <= set(schemas)
    assert schemas["MessageIn"]["additionalProperties"] is False

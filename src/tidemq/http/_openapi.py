"""The OpenAPI 3.1 document, generated from the routes (:data:`~._routes.ROUTES`), their
permission rules (:mod:`._authz`) and the msgspec types of their bodies (msgspec emits the JSON
Schemas), so it describes what the code does. ``tests/http/test_openapi.py`` compares it with a
committed snapshot: a change of the API shows up as a diff to review."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from .. import __version__
from ..errors import CATALOGUE
from ._authz import rule_for
from ._routes import ROUTES
from ._types import Problem

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"{(\w+)}")


def openapi_document() -> dict[str, Any]:
    types: list[Any] = [Problem]
    for r in ROUTES:
        for t in (r.body, r.answer):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip([_key(t) for t in types], schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary,
            "tags": [r.tag],
            "operationId": f"{r.method.lower()}_{_slug(r.path)}",
        }
        rule = rule_for(r.method, r.path)
        op["x-tidemq-permission"] = rule.needs if rule is not None else "no rule: refused"
        if rule is not None and not rule.public:
            op["security"] = [{"basic": []}, {"bearer": []}]
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "integer" if name == "partition" else "string"}}
            for name in _PARAM.findall(r.path)
        ]
        params += [{"name": q.name, "in": "query", "required": False,
                    "description": q.text, "schema": {"type": q.kind}} for q in r.query]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema_of[_key(r.body)]}}}
        ok: dict[str, Any] = {"description": "OK" if r.status != 204 else "No content"}
        if r.answer is not None:
            ok["content"] = {r.media: {"schema": schema_of[_key(r.answer)]}}
        elif r.status != 204:
            ok["content"] = {r.media: {}}
        responses: dict[str, Any] = {str(r.status): ok}
        if r.method == "PUT":
            responses["201"] = {"description": "Created", "content": ok.get("content", {})}
        responses["default"] = {
            "description": "An error of the catalogue (code, title = its type, status).",
            "content": {"application/problem+json": {"schema": schema_of[_key(Problem)]}}}
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "TideMQ HTTP API",
            "version": __version__,
            "description": "docs/http.md. Errors are application/problem+json with the error "
                           "catalogue's code: " + ", ".join(
                               f"{c} {cls.__name__} ({cls.http_status})"
                               for c, cls in sorted(CATALOGUE.items())),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic",
                          "description": "user:password of the users file"},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a token of 'tidemq token create' (TLS or "
                                          "loopback only)"},
            },
        },
    }


def _key(t: Any) -> str:
    return repr(t)


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "root"

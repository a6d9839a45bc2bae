"""Protocol v1 as machine-readable files: the JSON Schemas in `schema/v1/` and `schema/asyncapi.yaml`.

The files ship inside the package (`sendreturn_mood.schema`), so a pip-installed user, code generators and the
JS client's type check all read the same contract the tests validate the real server with. Loading needs nothing
but the standard library; validation needs `jsonschema` (a dev dependency: the runtime never validates its own
output, the tests do).

`strict=True` validators also refuse properties a schema does not list. The published schemas are open (clients
must ignore unknown fields, and the server may add fields), but the tests use strict ones, so a field the server
starts sending without a schema change fails the tests instead of drifting away from the contract.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .shipped import SCHEMAS, shipped_dir

VERSION_DIR = "v1"
SERVER_MESSAGE = "server-message"
CLIENT_MESSAGE = "client-message"


def schema_dir() -> Path:
    """The folder holding `asyncapi.yaml` and `v1/*.json`."""
    return shipped_dir(SCHEMAS)


def schema_names() -> list[str]:
    """Every schema of protocol v1, by file stem (e.g. 'mood', 'server-message')."""
    return sorted(p.stem for p in (schema_dir() / VERSION_DIR).glob("*.json"))


@lru_cache(maxsize=None)
def _load(name: str) -> dict[str, Any]:
    return json.loads((schema_dir() / VERSION_DIR / f"{name}.json").read_text(encoding="utf-8"))


def load(name: str) -> dict[str, Any]:
    """One schema as a dict (a copy: callers may change it)."""
    return copy.deepcopy(_load(name))


def _closed(node: Any) -> Any:
    """A copy of a schema in which every object schema with `properties` and no `additionalProperties` refuses
    unlisted properties (unevaluatedProperties, so `if`/`then` and `$ref` siblings still count as listed).
    Conditions (`if`, `not`) are left open: closing them would change what they test."""
    if isinstance(node, list):
        return [_closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: v if k in ("if", "not") else _closed(v) for k, v in node.items()}  # conditions stay open
    if "properties" in out and "additionalProperties" not in out and "unevaluatedProperties" not in out:
        out["unevaluatedProperties"] = False
    return out


@lru_cache(maxsize=None)
def validator(name: str, strict: bool = False) -> Any:
    """A jsonschema Draft 2020-12 validator for one schema; cross-file `$ref`s resolve within schema/v1/."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    def prepare(schema: dict[str, Any]) -> dict[str, Any]:
        return _closed(schema) if strict else schema

    registry = Registry().with_resources(
        (f"{n}.json", Resource.from_contents(prepare(_load(n)), default_specification=DRAFT202012)) for n in schema_names()
    )
    schema = prepare(_load(name))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(name: str, instance: Any, strict: bool = False) -> None:
    """Raise jsonschema.ValidationError (with the failing path) when `instance` breaks schema `name`."""
    error = next(iter(sorted(validator(name, strict).iter_errors(instance), key=lambda e: e.path)), None)
    if error is not None:
        raise error


def message_types(union: str) -> list[str]:
    """The message types of a union schema ('server-message' or 'client-message'), read from its oneOf."""
    return [ref["$ref"].removesuffix(".json") for ref in _load(union)["oneOf"]]


def validate_message(union: str, msg: Any, strict: bool = False) -> None:
    """Validate a message against the schema of its own `type` (clearer errors than the oneOf union gives);
    a type the union does not list is an error too."""
    from jsonschema import ValidationError

    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind not in message_types(union):
        raise ValidationError(f"{union}: unknown message type {kind!r} in {str(msg)[:200]}")
    validate(kind, msg, strict)

"""The machine-readable contract (schema/): the JSON Schemas are valid and strict where they should be, the AsyncAPI
document is valid against the official AsyncAPI 3.0.0 schema and every $ref in it resolves, and the two describe
the same messages. That every message the real server sends passes is checked by every server test
(tests/server_support.py validates each one it reads).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag

import jsonschema
import pytest
import yaml

from sendreturn_mood import contract, protocol
from sendreturn_mood.protocol import ConnectParams
from tests.server_support import checked

ASYNCAPI_SCHEMA = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json.gz"


def asyncapi() -> dict[str, Any]:
    return yaml.safe_load((contract.schema_dir() / "asyncapi.yaml").read_text())


def pointer(doc: Any, fragment: str) -> Any:
    """Resolve a JSON pointer fragment ('/a/b~1c') in doc; KeyError/IndexError when it does not exist."""
    node = doc
    for part in filter(None, fragment.split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if isinstance(node.get("$ref"), str) else []) + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_every_schema_is_valid_draft_2020_12():
    names = contract.schema_names()
    assert {"welcome", "mood", "source", "error", "track", "preset", "end", "keepalive", "handshake-query",
            "http-error", "room-info", "healthz", "server-message", "client-message", "common"} <= set(names)
    for name in names:
        schema = contract.load(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        jsonschema.Draft202012Validator.check_schema(schema)
        contract.validator(name, strict=True)  # every cross-file $ref resolves


def test_asyncapi_document_is_valid_and_every_ref_resolves():
    doc = asyncapi()
    official = json.loads(gzip.decompress(ASYNCAPI_SCHEMA.read_bytes()))
    errors = sorted(jsonschema.Draft7Validator(official).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]]
    assert doc["asyncapi"] == "3.0.0"
    for name, channel in doc["channels"].items():  # every {parameter} of an address is described
        assert set(re.findall(r"\{(\w+)\}", channel["address"])) == set(channel.get("parameters", {})), name

    # every $ref, followed into the schema files and through theirs, points at something that exists
    seen: set[tuple[Path, str]] = set()
    todo = [(contract.schema_dir() / "asyncapi.yaml", r) for r in refs(doc)]
    for name in contract.schema_names():  # and every schema file's own refs, reached from the document or not
        todo += [(contract.schema_dir() / "v1" / f"{name}.json", r) for r in refs(contract.load(name))]
    while todo:
        base, ref = todo.pop()
        target, fragment = urldefrag(ref)
        file = (base.parent / target).resolve() if target else base
        if (file, fragment) in seen:
            continue
        seen.add((file, fragment))
        assert file.is_file(), f"{ref} from {base.name}: no file {file}"
        content = yaml.safe_load(file.read_text()) if file.suffix == ".yaml" else json.loads(file.read_text())
        try:
            pointer(content, fragment)
        except (KeyError, IndexError, ValueError):
            pytest.fail(f"{ref} from {base.name}: nothing at #{fragment} in {file.name}")
        if target:
            todo += [(file, r) for r in refs(content)]


def test_asyncapi_and_schemas_list_the_same_messages():
    doc = asyncapi()
    channel = doc["channels"]["room"]
    payload_files = {name: m["payload"].get("$ref") for name, m in doc["components"]["messages"].items()}
    for union in (contract.SERVER_MESSAGE, contract.CLIENT_MESSAGE):
        for kind in contract.message_types(union):
            assert payload_files[kind] == f"./v1/{kind}.json", kind
            assert kind in channel["messages"], kind
    sent = [r["$ref"].rsplit("/", 1)[1] for r in doc["operations"]["sendToClients"]["messages"]]
    assert sent == contract.message_types(contract.SERVER_MESSAGE)
    received = [r["$ref"].rsplit("/", 1)[1] for r in doc["operations"]["receiveFromSource"]["messages"]]
    assert received == ["audio", *contract.message_types(contract.CLIENT_MESSAGE)]
    assert list(contract.load("handshake-query")["properties"]) == list(protocol.QUERY_KEYS)
    assert contract.load("common")["$defs"]["errorCode"]["enum"] == list(protocol.ERROR_CODES)


def test_protocol_builders_match_the_schema():
    p = ConnectParams("r", "source", "pcm_f32le", 44100, 2)
    model = {"name": "m", "version": "1", "moods": ["a", "b"], "genres": [], "coordinates": {"a": {"valence": 0.5, "arousal": -0.5}}}
    checked(protocol.welcome(p, model, 2.992, 1.504, "default"))
    checked(protocol.welcome(ConnectParams("r"), model, 3, 1.5, "default"))
    for code in protocol.ERROR_CODES:
        checked(protocol.error(code, "why", fatal=code == "too_big"))
    checked(protocol.source_state(True))
    for text in ('{"type": "track", "id": "x", "title": "T", "artist": "A"}', '{"type": "preset", "name": "subtle"}',
                 '{"type": "end"}', '{"type": "keepalive"}'):
        protocol.parse_client_message(text)  # the server accepts what the schema describes
        checked(json.loads(text), contract.CLIENT_MESSAGE)
    assert json.loads(protocol.refusal_body("bad_request", "x")) == checked_refusal()


def checked_refusal() -> dict:
    body = {"error": {"code": "bad_request", "message": "x"}}
    contract.validate("http-error", body, strict=True)
    return body


MOOD = {"type": "mood", "room": "r", "seq": 1, "stream_time": 3.0, "mood": "happy", "confidence": 0.7,
        "probabilities": {"happy": 0.7, "sad": 0.3}, "valence": 0.2, "arousal": -0.1,
        "instant": {"probabilities": {"happy": 0.6, "sad": 0.4}, "valence": 0.1, "arousal": 0.0},
        "effects": {"reverb_mix": 0.2, "tint": "#ffd166"}, "preset": "default", "latency_ms": 3.1}


@pytest.mark.parametrize("change", [
    {"seq": "1"}, {"probabilities": {"happy": 1.5}}, {"valence": 2}, {"effects": {"tint": "red"}},
    {"type": "moood"}, {"room": "no spaces"}, {"latency_ms": -1}, {"track": {"title": "no id"}},
    {"surprise": True},  # strict: a field the schema does not list
    {"instant": {"probabilities": {"a": 1}, "valence": 0, "arousal": 0, "extra": 1}},
])
def test_a_message_the_schema_rejects_fails_the_tests(change):
    checked(MOOD)
    with pytest.raises(jsonschema.ValidationError):
        checked({**MOOD, **change})


def test_published_schemas_are_open_to_additive_fields():
    """Clients must ignore unknown fields: the published (non-strict) schemas accept them."""
    contract.validate_message(contract.SERVER_MESSAGE, {**MOOD, "surprise": True})
    with pytest.raises(jsonschema.ValidationError):
        contract.validate_message(contract.SERVER_MESSAGE, {**MOOD, "seq": "1"})
    with pytest.raises(jsonschema.ValidationError, match="unknown message type"):
        checked({"type": "news"})
    with pytest.raises(jsonschema.ValidationError):  # a source's welcome must say its audio format
        checked({"type": "welcome", "protocol": 1, "room": "r", "role": "source", "preset": "p",
                 "model": {"name": "m", "version": "1", "moods": ["a"], "genres": []},
                 "analysis": {"window_seconds": 3, "hop_seconds": 1.5}})


def test_openapi_document_is_valid_and_describes_routes_the_server_answers(tiny_model_path):
    """schema/openapi.yaml (OpenAPI 3.1, the plain HTTP endpoints) passes openapi-spec-validator with every $ref
    into v1/ resolved, and each path and method it describes is one the server's routing table answers."""
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    from sendreturn_mood.model.contract import MoodModel
    from sendreturn_mood.server.app import MoodServer
    from tests.server_support import server_config

    spec, base = read_from_filename(str(contract.schema_dir() / "openapi.yaml"))
    validate(spec, base_uri=base)
    assert spec["openapi"].startswith("3.1")
    assert {"/healthz", "/metrics", "/v1/rooms/{room}", "/v1/analyze"} <= set(spec["paths"])
    router = MoodServer(server_config(), MoodModel(tiny_model_path)).http
    for path, item in spec["paths"].items():
        concrete = re.sub(r"\{\w+\}", "lobby", path)
        methods = {m.upper() for m in item if m in ("get", "put", "post", "delete", "patch")}
        answered = {m for r in router.routes if r.pattern.fullmatch(concrete) and r.pattern.pattern != "/.*" for m in r.methods}
        assert methods <= answered, (path, methods, answered)

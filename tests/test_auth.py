"""Access tokens (sendreturn_mood/server/auth.py): signed room-scoped grants, the static list; reserved source slots
(server/reservations.py), redaction (server/redaction.py), and the `token` command."""

from __future__ import annotations

import json
import subprocess
import sys

import jwt
import pytest

from sendreturn_mood.server.auth import (
    OPEN,
    AuthError,
    Authenticator,
    AuthSettings,
    Grant,
)
from sendreturn_mood.cli.token import parse_ttl
from sendreturn_mood.server.redaction import redact
from sendreturn_mood.server.reservations import SourceReservations
from sendreturn_mood.config import load_config
from sendreturn_mood.protocol import Refusal

SECRET = "test-secret-" + "x" * 32
NOW = 1_800_000_000.0


def auth(secret: str | None = SECRET, tokens: list[str] | None = None, **auth_keys: object) -> Authenticator:
    overrides = {"server.auth.secret": secret, "server.auth_tokens": tokens or []}
    overrides.update({f"server.auth.{k}": v for k, v in auth_keys.items()})
    config = load_config(None, {k: v for k, v in overrides.items() if v is not None})
    return Authenticator.from_config(config, environ={})


def refused(fn, *args, **kwargs) -> Refusal:
    with pytest.raises(Refusal) as e:
        fn(*args, **kwargs)
    assert e.value.status == 401 and e.value.code == "unauthorized"
    return e.value


def test_off_by_default_and_open():
    a = Authenticator.from_config(load_config(), environ={})
    assert not a.enabled and a.verify(None) is OPEN and a.authorize(None, "any", "source") is OPEN


def test_a_source_token_for_room_a_cannot_listen_to_or_take_room_b():
    a = auth()
    token = a.mint("a", ["source"], 3600, now=NOW)
    grant = a.authorize(token, "a", "source", now=NOW + 10)
    assert grant.room == "a" and grant.roles == {"source"} and grant.expires_at == NOW + 3600 and grant.token_id
    assert "room 'b'" in refused(a.authorize, token, "b", "source", now=NOW).message
    assert "room 'b'" in refused(a.authorize, token, "b", "listener", now=NOW).message
    assert "listener role" in refused(a.authorize, token, "a", "listener", now=NOW).message


def test_room_patterns_and_both_roles():
    a = auth()
    token = a.mint("team-*", ["source", "listener"], 60, now=NOW)
    for room in ("team-1", "team-red"):
        for role in ("source", "listener"):
            a.authorize(token, room, role, now=NOW)
    refused(a.authorize, token, "teams", "listener", now=NOW)


def test_expiry_nbf_signature_audience_issuer_and_revocation():
    a = auth(leeway_seconds=0)
    token = a.mint("r", ["listener"], 60, now=NOW)
    assert refused(a.verify, token, now=NOW + 61).message == "access token expired"
    assert "not valid yet" in refused(a.verify, token, now=NOW - 1).message
    assert refused(auth(secret="another-secret-" + "y" * 32).verify, a.mint("r", ["listener"], 60)).message == "invalid access token"
    assert "another service" in refused(auth(audience="other").verify, a.mint("r", ["listener"], 60)).message
    assert "issuer" in refused(auth(issuer="other").verify, a.mint("r", ["listener"], 60)).message
    revoked = a.mint("r", ["listener"], 60, token_id="leaked-1")
    assert refused(auth(revoked=["leaked-1"]).verify, revoked).message == "access token revoked"


@pytest.mark.parametrize(
    "claims",
    [
        {"room": "r"},  # no roles
        {"room": "r", "roles": ["admin"]},
        {"room": "r", "roles": []},
        {"room": "a b", "roles": ["source"]},
        {"room": "r", "roles": ["source"], "reserve": True},  # reserve needs sub
        {"room": "r", "roles": ["source"], "reserve": "yes", "sub": "x"},
        {"room": "r", "roles": ["source"], "sub": "\n"},
        {"room": "r", "roles": ["source"], "exp": 2 ** 40},  # lifetime beyond max_ttl
    ],
)
def test_malformed_claims_are_refused(claims):
    a = auth()
    import time

    now = int(time.time())
    full = {"iss": "sendreturn-mood", "aud": "sendreturn-mood", "iat": now, "exp": now + 60, **claims}
    refused(a.verify, jwt.encode(full, SECRET, algorithm="HS256"))


def test_algorithm_confusion_and_garbage():
    a = auth()
    import time

    claims = {"iss": "sendreturn-mood", "aud": "sendreturn-mood", "exp": int(time.time()) + 60, "room": "*", "roles": ["source"]}
    unsigned = jwt.encode(claims, None, algorithm="none")
    for token in (unsigned, jwt.encode(claims, SECRET * 2, algorithm="HS512"), "a.b.c", "x" * 4000, "..", "eyJ.eyJ.x"):
        assert refused(a.verify, token).message == "invalid access token"
    refused(a.verify, None)


def test_static_tokens_are_the_simple_mode_and_mix_with_signed_ones():
    a = auth(secret=None, tokens=["s3cret"])
    assert a.enabled and not a.can_mint
    assert a.authorize("s3cret", "any", "source").static
    refused(a.verify, "wrong")
    both = auth(tokens=["s3cret"])
    both.authorize("s3cret", "r", "listener")
    both.authorize(both.mint("r", ["listener"], 60), "r", "listener")


def test_secret_from_the_environment_and_its_minimum_length():
    config = load_config()
    a = Authenticator.from_config(config, environ={"SENDRETURN_MOOD_SECRET": SECRET})
    assert a.can_mint
    with pytest.raises(AuthError, match="SENDRETURN_MOOD_SECRET: an HS256 secret needs at least 32 bytes"):
        Authenticator.from_config(config, environ={"SENDRETURN_MOOD_SECRET": "short"})
    with pytest.raises(AuthError, match="server.auth.secret: an HS256 secret"):
        auth(secret="short")
    with pytest.raises(AuthError, match=r"auth_tokens\[0\]"):
        AuthSettings.from_config(load_config(None, {"server.auth_tokens": ["has space"]}), environ={})


def test_mint_refuses_what_the_server_would_refuse():
    a = auth(max_ttl_seconds=3600)
    for args, match in [
        (("r", ["source"], 7200), "ttl must be"),
        (("r", ["boss"], 60), "roles"),
        (("a b", ["source"], 60), "room must be"),
    ]:
        with pytest.raises(AuthError, match=match):
            a.mint(*args)
    with pytest.raises(AuthError, match="needs a subject"):
        a.mint("r", ["source"], 60, reserve=True)
    with pytest.raises(AuthError, match="no signing secret"):
        auth(secret=None, tokens=["t"]).mint("r", ["source"], 60)


def test_reserved_source_slot():
    a = auth()
    dj = a.verify(a.mint("lobby", ["source"], 600, subject="dj-1", reserve=True))
    other = a.verify(a.mint("*", ["source"], 600, subject="someone"))
    res = SourceReservations(hold_seconds=15)
    assert res.check("lobby", other, NOW) is False  # nothing held: anyone may take it
    res.connected("lobby", dj)
    with pytest.raises(Refusal) as e:
        res.check("lobby", other, NOW)
    assert e.value.status == 409 and e.value.code == "source_taken"
    assert res.check("lobby", dj, NOW) is True  # the holder itself: may replace its old connection
    res.disconnected("lobby", dj, NOW)
    with pytest.raises(Refusal, match="for 10 more seconds"):
        res.check("lobby", other, NOW + 5)
    assert res.check("lobby", dj, NOW + 5) is True
    assert res.check("lobby", other, NOW + 15.01) is False and len(res) == 0  # expired
    res.disconnected("lobby", other, NOW)  # a non-holder leaving changes nothing
    plain = Grant("lobby", frozenset({"source"}), "dj-1")
    res.connected("lobby", plain)  # no reserve claim: nothing held
    assert len(res) == 0


def test_reservations_are_bounded():
    res = SourceReservations(15, max_entries=3)
    g = Grant("*", frozenset({"source"}), "s", reserve=True)
    for i in range(10):
        res.connected(f"r{i}", g)
    assert len(res) == 3 and res.holder("r9", NOW) == "s" and res.holder("r0", NOW) is None


def test_redact_removes_tokens_and_bounds_the_text():
    token = auth().mint("r", ["source"], 60)
    for target in (f"/v1/rooms/r?role=source&token={token}", f"/v1/rooms/r?token={token}&x=1", f"/v1/rooms/r?TOKEN={token}",
                   f"/v1/rooms/r?to%6Ben={token}", f"/v1/rooms/r?access_token={token}"):
        out = redact(target)
        assert token not in out and token[:20] not in out and "REDACTED" in out
    assert redact("/v1/rooms/a\tb\n") == "/v1/rooms/a%09b%0A"
    assert len(redact("/v1/rooms/" + "a" * 10000)) == 160


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("1.5h", 5400)])
def test_ttl(text, seconds):
    assert parse_ttl(text) == seconds


def test_token_command(tmp_path):
    env = {"SENDRETURN_MOOD_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "sendreturn_mood", "token", *a], capture_output=True, text=True, env=env, timeout=60)
    r = run("--room", "lobby", "--role", "source", "--ttl", "1h")
    assert r.returncode == 0, r.stderr
    grant = auth().authorize(r.stdout.strip(), "lobby", "source")
    assert grant.expires_at is not None
    r = run("--room", "lobby", "--role", "source", "--role", "listener", "--sub", "dj", "--reserve", "--json")
    claims = json.loads(r.stdout)["claims"]
    assert claims["roles"] == ["listener", "source"] and claims["reserve"] is True and claims["sub"] == "dj"
    r = run("--room", "lobby", "--role", "source", "--ttl", "30d")
    assert r.returncode == 2 and "ttl must be" in r.stderr
    env.pop("SENDRETURN_MOOD_SECRET")
    r = run("--room", "lobby", "--role", "source")
    assert r.returncode == 2 and "no signing secret" in r.stderr

"""Per-client bookkeeping (sendreturn_mood/server/limits.py): the Origin allow-list, per-address connections and rooms,
keyed rate limits."""

from __future__ import annotations

import pytest

from sendreturn_mood.server.limits import ClientLimits, KeyedRateLimiter, OriginPolicy, is_loopback, origin_policy_from_config
from sendreturn_mood.config import load_config
from sendreturn_mood.protocol import Refusal


@pytest.mark.parametrize(
    ("origin", "host", "ok"),
    [
        (None, "127.0.0.1:8765", True),  # not a browser
        ("http://127.0.0.1:8765", "127.0.0.1:8765", True),  # the page the server itself serves
        ("http://localhost:3000", "127.0.0.1:8765", True),  # a dev server on localhost
        ("https://[::1]:4443", "127.0.0.1:8765", True),
        ("https://evil.example", "127.0.0.1:8765", False),
        ("http://evil.example:8765", "evil.example:8765", False),  # DNS rebinding onto a loopback server
        ("null", "127.0.0.1:8765", False),  # sandboxed frame, file://
        ("http://127.0.0.1:8765/x", "127.0.0.1:8765", False),
        ("ftp://localhost", "127.0.0.1:8765", False),
        ("http://localhost.evil.example", "127.0.0.1:8765", False),
    ],
)
def test_origin_default_policy_on_loopback(origin, host, ok):
    assert OriginPolicy().allows(origin, host) is ok


def test_origin_policy_on_a_public_server_and_allow_list():
    public = OriginPolicy(("https://game.example.com", "https://*.cdn.example"), True, server_is_loopback=False)
    assert public.allows("https://mood.example.org", "mood.example.org")  # same origin (default port)
    assert public.allows("https://mood.example.org:443", "mood.example.org")
    assert not public.allows("https://mood.example.org", "other.example.org")
    assert public.allows("https://game.example.com", "mood.example.org")
    assert public.allows("https://a.b.cdn.example", "mood.example.org")
    assert not public.allows("http://a.cdn.example", "mood.example.org")  # scheme matters
    assert not public.allows("https://cdn.example.evil", "mood.example.org")
    assert OriginPolicy(("*",)).allows("https://anything.example", "x")
    assert not OriginPolicy((), allow_localhost=False).allows("http://localhost:3000", "127.0.0.1:8765")
    with pytest.raises(Refusal) as e:
        OriginPolicy().check("https://evil.example/" + "x" * 1000, "127.0.0.1")
    assert e.value.status == 403 and e.value.code == "forbidden_origin" and len(e.value.message) < 200


def test_policy_from_config():
    config = load_config(None, {"server.allowed_origins": ["https://game.example.com"]})
    p = origin_policy_from_config(config.server, ["0.0.0.0"])
    assert not p.server_is_loopback and p.allows("https://game.example.com", "x") and p.allow_localhost
    assert origin_policy_from_config(config.server, ["127.0.0.1", "::1"]).server_is_loopback


def test_loopback_names():
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.2", "::1", "[::1]", "app.localhost"))
    assert not any(is_loopback(h) for h in ("", None, "10.0.0.1", "example.com", "localhost.example"))


def test_client_limits_bound_connections_and_rooms_per_address():
    limits = ClientLimits(max_connections=3, max_rooms=2)
    limits.add("1.1.1.1", "a")
    limits.add("1.1.1.1", "b")
    with pytest.raises(Refusal) as e:
        limits.add("1.1.1.1", "c")  # a third room
    assert e.value.status == 429 and e.value.code == "rate_limited" and "2 rooms" in e.value.message
    limits.add("1.1.1.1", "a")  # a second connection to a room it is in
    with pytest.raises(Refusal, match="3 connections"):
        limits.check("1.1.1.1", "a")
    limits.check("2.2.2.2", "z")  # another address is not affected
    assert limits.usage("1.1.1.1") == (3, 2)
    for room in ("a", "b", "a"):
        limits.remove("1.1.1.1", room)
    assert limits.usage("1.1.1.1") == (0, 0) and len(limits) == 0


def test_keyed_rate_limiter():
    r = KeyedRateLimiter(rate=1.0, burst=2.0, max_keys=2)
    assert r.allow("a", now=0) and r.allow("a", now=0) and not r.allow("a", now=0)
    assert r.allow("a", now=1.0) and not r.allow("a", now=1.0)
    assert r.allow("b", now=1.0)
    r.allow("c", now=1.0)
    assert len(r) == 2  # bounded: the least recently used key went


async def test_outbox_is_bounded_in_bytes():
    from sendreturn_mood.room.rooms import CONTROL, MOOD, Outbox

    box = Outbox(4, max_bytes=1000)
    box.deliver("w" * 300, CONTROL)
    box.deliver("e" * 600, CONTROL)
    box.deliver("x" * 200, CONTROL)  # does not fit: dropped
    assert box.queued_bytes == 900 and box.dropped == 1
    await box.next()  # the welcome leaves: room again
    for i in range(3):
        box.deliver(str(i) * 150, MOOD)
    # 600 + 3 x 150 > 1000: the oldest mood updates make room for the newest
    assert box.queued_bytes <= 1000 and [t[0] for _, t in box._items][-1] == "2"
    queued = list(box._items)
    box.deliver("z" * 2000, MOOD)  # larger than the whole budget: dropped, nothing else evicted for it
    assert list(box._items) == queued
    while len(box):
        await box.next()
    assert box.queued_bytes == 0

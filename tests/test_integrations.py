"""The integration guides (docs/integrations/*.md) against a real run: every OSC address they name, with the type
tags they give it, is one a real server sends to a real python-osc UDP server while a real song streams (the
shipped model, test_osc's song: a clip from ../shared/data, or audio made here when it is absent). A guide cannot
promise an address or a type the server does not send."""

from __future__ import annotations

import fnmatch
import re

from tests.conftest import REPO
from tests.test_osc import config, osc_server, play, serving, song

GUIDES = sorted((REPO / "docs" / "integrations").glob("*.md"))
ADDRESS = r"/sendreturn/[A-Za-z0-9_.*/-]+"
TYPED = re.compile(rf"`({ADDRESS})`,? `([fisrT]+)`")  # `address` `types`, or `address`, `types`
TABLE_ROW = re.compile(rf"^\|\s*`({ADDRESS})`\s*\|\s*`([fisrT]+)`\s*\|", re.M)
BARE = re.compile(rf"`({ADDRESS})`")


def promises(text: str) -> tuple[set[tuple[str, str]], set[str]]:
    """(address, type tags) pairs a guide states, and every address it names."""
    typed = set(TABLE_ROW.findall(text)) | set(TYPED.findall(text))
    return typed, set(BARE.findall(text))


def test_every_guide_is_checked():
    assert {g.name for g in GUIDES} == {"unreal.md", "touchdesigner.md", "resolume.md"}
    for guide in GUIDES:
        typed, named = promises(guide.read_text())
        assert len(typed) >= 8 and named, guide.name  # the parsing found the guide's tables
        assert "not compiled" in guide.read_text().lower() or "```cpp" not in guide.read_text(), guide.name


async def test_every_address_in_the_guides_arrives_with_its_types():
    audio, real = song()
    async with osc_server() as (port, recorder):
        targets = [{"host": "127.0.0.1", "port": port}, {"host": "127.0.0.1", "port": port, "rate_hz": 30}]
        async with serving(config(targets)) as server:
            await play(server, audio)
    received = {(address, tags) for _, msgs in recorder.packets for address, tags, _ in msgs}
    addresses = {a for a, _ in received}
    for guide in GUIDES:
        typed, named = promises(guide.read_text())
        for address, tags in sorted(typed):
            if address.endswith("/track_change") and not real:
                continue  # made-up audio promises no track change (test_osc.py checks it with real songs)
            assert any(fnmatch.fnmatchcase(a, address) and t == tags for a, t in received), (guide.name, address, tags)
        for address in sorted(named):
            if address.endswith("/track_change") and not real:
                continue
            assert any(fnmatch.fnmatchcase(a, address) for a in addresses), (guide.name, address)

"""The outputs a server configures for its rooms, as sinks of the room's one broadcast point.

`RoomRegistry.publish` (room/rooms.py) encodes each broadcast once and hands it to the room's sinks in order: the
room's local websocket members first (`rooms.LocalMembers`, every room), then what is built here per server and per
room: the broker (`BrokerSink`, every room: it carries the text to the room's members on other processes) and the
OSC targets whose room patterns match the room's name (`osc.OscTarget`). The interface is `rooms.Sink`:
`send(room, outgoing)` for every broadcast, `room_closed(room)` when the room's last local member leaves. A sink never
blocks the room and never raises into it.

Only the process that produces a room's updates (the one its source is connected to) sends them to OSC targets:
messages that arrive from the broker go to local members only, so a cluster with the same OSC config on every
process sends each update once.
"""

from __future__ import annotations

from typing import Any

from ..broker.base import Broker
from ..config import Settings
from ..room.effects import Presets
from ..room.rooms import Outgoing, Room, Sink
from .osc import OscOutputs


class BrokerSink:
    """The broker as a sink: a broadcast's text to the room's members on other processes (queued, never awaited)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def send(self, room: Room, out: Outgoing) -> None:
        self.broker.publish(room, out.text, out.kind, out.seq)

    def room_closed(self, room: Room) -> None:
        pass  # the registry tells the broker about membership itself (subscriptions outlive no room)


class Outputs:
    """A server's outputs: `sinks_for(room)` is the registry's factory of a new room's sinks (the broker, then the
    OSC targets matching the room). ConfigError for OSC targets the config refuses."""

    def __init__(
        self, config: Settings, broker: Broker, presets: Presets, hop_seconds: float, metrics: Any = None,
    ) -> None:
        self.broker_sink = BrokerSink(broker)
        self.osc = OscOutputs.from_settings(config.outputs.osc.targets, presets, hop_seconds, metrics)

    def sinks_for(self, room: str) -> list[Sink]:
        return [self.broker_sink, *self.osc.sinks_for(room)]

    async def start(self) -> None:
        """Resolve the OSC targets' names (bounded wait; what fails is retried, counted and logged)."""
        await self.osc.start()

    def close(self) -> None:
        self.osc.close()
